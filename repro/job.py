"""The `Job`: the whole parent→child contract of one run, as one frozen value.

The pipeline builds it from a prepared spec (`pipeline.make_job`); a backend may only re-point
its paths to where the child sees them (`Job.replace`), then writes it as `job.json` for the
runner. Standard library only: the runner reads it inside any image.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

JOB_FORMAT = 1


@dataclass(frozen=True)
class Job:
    """What the child runner needs, and nothing else.

    Paths (`tree`, `data`, `compile_cache`) are as the child sees them: a container's mounts,
    or the host's own for a local process.
    """

    spec: str                                # the spec's name (labels, messages)
    entrypoint: str                          # module:function inside `tree` ("": a command)
    tree: str                                # the code tree the entrypoint is imported from
    data: Mapping[str, str]                  # data name -> verified path
    seeds: Mapping[str, int]
    config: Mapping[str, Any]
    settings: Mapping[str, str]              # determinism settings (already in the child's env)
    cpus: int                                # how many cores the run is pinned to
    cpu_slot: int | None = None              # which cores, for parallel runs
    grads_every: int | None = None           # record.grads: keep every N steps ...
    grads_steps: tuple[int, ...] = ()        # ... and these
    trace_steps: tuple[int, ...] | None = None   # record.trace.steps (None: the kept-grad steps)
    weights: Literal["final", "none"] = "final"
    packages: Mapping[str, str] = field(default_factory=dict)  # asserted in the child
    list_packages: bool = False              # also report every installed distribution
    compile_cache: str | None = None         # JAX persistent compilation cache directory
    compile_cache_seed: str | None = None    # sandbox: a read-only cache copied in first ...
    compile_cache_new: str | None = None     # ... and where the entries it adds are left
    parent_pid: int | None = None            # local: die with this process (PR_SET_PDEATHSIG)
    watch_stdin: bool = False                # container: die when stdin closes
    hash_seed: str = "0"                     # PYTHONHASHSEED (calibrate varies it)
    listing_order: str = "native"            # "reversed": directory listings reversed (calibrate)
    expect: Mapping[str, Any] | None = None  # fail-fast: metric -> the record's {steps, values}
    expect_tolerance: Mapping[str, Any] = field(default_factory=dict)  # metric -> [rtol, atol]
    expect_arrays: Mapping[str, Any] | None = None  # fail-fast: {file (npz in out/), grads: [steps],
    #                                                 states: [steps], tolerance: {grad, state}}
    checkpoints_every: int | None = None     # record.checkpoints: keep the state every N steps ...
    checkpoints_steps: tuple[int, ...] = ()  # ... and at these steps
    restore: Mapping[str, Any] | None = None  # replay: {step, file (npz), layout} for ctx.restore
    stop_at: int | None = None               # replay: end once the state of this step is kept
    command: tuple[str, ...] | None = None   # code.command: an unmodified script, run in a copy of `tree`
    outputs: Mapping[str, Any] | None = None  # code.outputs: {metrics|weights: {path, format}}
    isa: str = "native"                      # environment.isa, applied by the child (env/portable.py)
    xla_flags: tuple[str, ...] = ()          # the spec's own environment.xla_flags (in settings too)
    emulate_cpu: str | None = None           # run under qemu-x86_64 -cpu MODEL (variation.py)

    def replace(self, **changes: Any) -> Job:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        doc = dataclasses.asdict(self)
        doc["format"] = JOB_FORMAT
        return json.dumps(doc, indent=1, sort_keys=True)

    def write(self, path: Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def read(cls, path: Path) -> Job:
        doc = json.loads(Path(path).read_text())
        if doc.pop("format", None) != JOB_FORMAT:
            raise ValueError(f"{path}: not a job of format {JOB_FORMAT} (harness and runner of "
                             "different repro versions?)")
        doc["grads_steps"] = tuple(doc.get("grads_steps") or ())
        doc["checkpoints_steps"] = tuple(doc.get("checkpoints_steps") or ())
        if doc.get("command") is not None:
            doc["command"] = tuple(doc["command"])
        doc["xla_flags"] = tuple(doc.get("xla_flags") or ())
        if doc.get("trace_steps") is not None:
            doc["trace_steps"] = tuple(doc["trace_steps"])
        return cls(**doc)
