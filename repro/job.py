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

JOB_FORMAT = 2   # 2: expect, expect_arrays, restore and outputs are typed parts (below)


@dataclass(frozen=True)
class Limit:
    """|run - record| <= atol + rtol * |record| (exact mode: both 0, any difference fails)."""

    rtol: float
    atol: float

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> Limit:
        return cls(float(doc["rtol"]), float(doc["atol"]))


@dataclass(frozen=True)
class ExpectedSeries:
    """Fail-fast, one metric: the record's trajectory (steps before `start` are not checked: a
    replayed segment ignores what the training logs before it) and the limit a value must meet.
    Values are floats, or strings for the non-finite ones ('nan', 'inf'), as the record has them."""

    steps: tuple[int, ...]
    values: tuple[float | str, ...]
    limit: Limit
    start: int = 0

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> ExpectedSeries:
        return cls(tuple(doc["steps"]), tuple(doc["values"]), Limit.from_doc(doc["limit"]),
                   int(doc.get("start", 0)))


@dataclass(frozen=True)
class ExpectedArrays:
    """Fail-fast, arrays: the record's kept gradients and states the parent copied into the
    run's out/ (`file`, an npz), the steps it holds of each, and their limits."""

    file: str
    grad_steps: tuple[int, ...]
    state_steps: tuple[int, ...]
    grad_limit: Limit
    state_limit: Limit

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> ExpectedArrays:
        return cls(str(doc["file"]), tuple(doc["grad_steps"]), tuple(doc["state_steps"]),
                   Limit.from_doc(doc["grad_limit"]), Limit.from_doc(doc["state_limit"]))


@dataclass(frozen=True)
class RestorePoint:
    """Replay: the state `ctx.restore` returns, kept at `step`, in `file` (a name in the run's
    out/), its leaves described by `layout` ([path, kind, weak] each: child/state.py LeafKind)."""

    step: int
    file: str
    layout: tuple[tuple[Any, ...], ...]

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> RestorePoint:
        return cls(int(doc["step"]), str(doc["file"]), tuple(tuple(x) for x in doc["layout"]))


@dataclass(frozen=True)
class OutputFile:
    """One file an unmodified script writes (code.outputs.metrics or .weights)."""

    path: str      # relative to the script's working directory (the code tree)
    format: str    # metrics: jsonl, csv, tensorboard; weights: orbax, npz, safetensors


@dataclass(frozen=True)
class Outputs:
    """code.outputs: what the script writes, read after it ends (child/outputs.py)."""

    metrics: OutputFile | None = None
    weights: OutputFile | None = None

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> Outputs:
        def one(d: Mapping[str, Any] | None) -> OutputFile | None:
            return None if d is None else OutputFile(str(d["path"]), str(d["format"]))
        return cls(one(doc.get("metrics")), one(doc.get("weights")))


@dataclass(frozen=True)
class Placement:
    """One process of a multi-process run whose processes are started elsewhere (`--engine ray`,
    one per node): which one this is, and the coordinator all of them join. A backend given it
    starts that process only; without it, a local backend starts all of them."""

    process_id: int
    coordinator: str   # host:port, on process 0's node


@dataclass(frozen=True)
class EarlyStart:
    """What a runner does before it imports jax, known from the spec alone: a local run's child
    can start on it while the repro command still loads, checks pins and reads the record
    (repro/backends/prestart.py), and take its Job when that is ready. A Job is handed to such a
    runner only when `of(job)` equals the one it started with."""

    parent_pid: int
    cpus: int
    cpu_slot: int | None
    isa: str
    settings: tuple[tuple[str, str], ...]
    xla_flags: tuple[str, ...]

    @classmethod
    def of(cls, job: Job) -> EarlyStart:
        return cls(job.parent_pid or 0, job.cpus, job.cpu_slot, job.isa,
                   tuple(sorted(job.settings.items())), tuple(job.xla_flags))

    def write(self, path: Path) -> None:
        Path(path).write_text(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def read(cls, path: Path) -> EarlyStart:
        doc = json.loads(Path(path).read_text())
        return cls(int(doc["parent_pid"]), int(doc["cpus"]), doc["cpu_slot"], str(doc["isa"]),
                   tuple((str(k), str(v)) for k, v in doc["settings"]),
                   tuple(str(f) for f in doc["xla_flags"]))


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
    expect: Mapping[str, ExpectedSeries] | None = None  # fail-fast: metric -> the record's series
    expect_arrays: ExpectedArrays | None = None  # fail-fast: the record's kept grads and states
    checkpoints_every: int | None = None     # record.checkpoints: keep the state every N steps ...
    checkpoints_steps: tuple[int, ...] = ()  # ... and at these steps
    restore: RestorePoint | None = None      # replay: the state ctx.restore returns
    stop_at: int | None = None               # replay: end once the state of this step is kept
    command: tuple[str, ...] | None = None   # code.command: an unmodified script, run in a copy of `tree`
    outputs: Outputs | None = None           # code.outputs: the files the script writes
    isa: str = "native"                      # environment.isa, applied by the child (env/portable.py)
    xla_flags: tuple[str, ...] = ()          # the spec's own environment.xla_flags (in settings too)
    emulate_cpu: str | None = None           # run under qemu-x86_64 -cpu MODEL (variation.py)
    devices: int = 1                         # environment.devices (per process)
    mesh: tuple[tuple[str, int], ...] = ()   # environment.mesh: (axis, size) in order; () none
    processes: int = 1                       # environment.processes: joined by jax.distributed
    process_id: int = 0                      # which of them this job is (0 writes the output)
    coordinator: str | None = None           # host:port of jax.distributed's coordinator (processes > 1);
                                             # set by the parent: the backend starts `process_id` only

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
        doc["mesh"] = tuple((str(a), int(n)) for a, n in doc.get("mesh") or ())
        if doc.get("trace_steps") is not None:
            doc["trace_steps"] = tuple(doc["trace_steps"])
        # the typed parts come back from the dicts dataclasses.asdict made of them
        if doc.get("expect") is not None:
            doc["expect"] = {n: ExpectedSeries.from_doc(e) for n, e in doc["expect"].items()}
        for name, part in (("expect_arrays", ExpectedArrays), ("restore", RestorePoint),
                           ("outputs", Outputs)):
            if doc.get(name) is not None:
                doc[name] = part.from_doc(doc[name])
        return cls(**doc)
