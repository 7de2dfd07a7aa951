"""What a finished run left behind, read back by the parent: `run.json` and `arrays.npz` from the
run's out/ directory, checked and turned into a typed `RunResult` (or a `RunError` saying why the
run produced no usable result).

Everything in out/ was written by the child — user code, in a sandbox for the docker backend — so
nothing read here is trusted: files are opened without following links, and no value becomes a
host path (the platform key comes from a known list, or from the user).
"""
from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

import repro
from repro.backends.base import ChildOutcome
from repro.child.state import LeafKind
from repro.env.fingerprint import Fingerprint, packages_digest
from repro.errors import RunError
from repro.ioutil import open_regular, read_npz
from repro.pins.code import CodePin
from repro.record import (
    CodeInfo,
    DataInfo,
    FingerprintField,
    ImagePackages,
    InvarianceInfo,
    MetricSeries,
    NoiseInfo,
    RecordMeta,
    SpecInfo,
    TraceInfo,
    UnpinnedInputs,
)
from repro.spec import Spec

PLATFORM_KEYS = {"cpu": "cpu", "gpu": "gpu", "cuda": "gpu", "rocm": "gpu", "tpu": "tpu"}

# What the runner's error kinds mean to a user (run.json "error.kind").
_ERROR_PREFIX = {"user": "the training function raised",
                 "entrypoint": "the entrypoint could not be loaded",
                 "script": "the script (code.command) failed",
                 "outputs": "the script's outputs (code.outputs) cannot be read",
                 "packages": "the environment does not match the spec",
                 "environment": "the environment cannot honour the spec",
                 "harness": "repro's runner failed (a bug in repro: please report it)"}


@dataclass
class RunResult:
    """One finished run: its platform key, fingerprint, metrics and arrays."""

    platform_key: str
    fingerprint: Fingerprint
    metrics: dict[str, MetricSeries]
    arrays: dict[str, Any]
    timings: dict[str, float]
    grad_steps: list[int]
    outcome: ChildOutcome
    notes: list[str] = field(default_factory=list)
    packages: list[str] | None = None    # docker: the image's package list, taken inside it
    inputs: UnpinnedInputs | None = None  # what the training read that no pin covers
    traced: TraceInfo | None = None       # ctx.traced: fingerprints and op traces
    stopped: StoppedAt | None = None      # fail-fast stopped the run here (repro/child/expect.py)
    # ctx.checkpoint: the kept states' leaf kinds by step (their arrays are in `arrays` as
    # checkpoints/<step>/<leaf path>), where a replay started and where it ended
    checkpoints: dict[int, list[LeafKind]] = field(default_factory=dict)
    restored_at: int | None = None
    ended_at: int | None = None
    # sharded weights and kept gradients: record key -> PartitionSpec (child/sharding.py)
    shardings: dict[str, list[Any] | str] = field(default_factory=dict)


def platform_key(reported: object) -> str:
    """The record platform key for the jax backend a run reports. The value comes from the
    child (untrusted): only a known backend name maps to a key, anything else is an error — it
    names a record directory and must never become a host path."""
    if isinstance(reported, str) and reported in PLATFORM_KEYS:
        return PLATFORM_KEYS[reported]
    shown = reported if isinstance(reported, str) and len(reported) <= 80 else type(reported).__name__
    raise RunError(f"the run reported jax backend {shown!r}, which is none of "
                   f"{', '.join(sorted(PLATFORM_KEYS))}; not taken as a platform key. Pass "
                   "--platform KEY (--repro-platform) to name the record's platform")


def collect(out: Path, outcome: ChildOutcome, *, timeout: float, platform: str | None
            ) -> RunResult:
    """Read the run's result from `out`; RunError when there is no usable one."""
    tail = "\n".join(outcome.log_tail[-20:])
    if outcome.timed_out:
        raise RunError(f"the run {outcome.killed_reason} (spec timeout: {timeout:g} s; raise "
                       "`timeout:` in the spec or pass --timeout)", detail=tail,
                       killed_by=outcome.killed_by)
    try:
        with open_regular(out / "run.json") as f:
            result = json.loads(f.read())
        if not isinstance(result, dict):
            raise ValueError("run.json is not a JSON object")
    except (OSError, ValueError):
        how = outcome.killed_reason or f"exited with code {outcome.returncode}"
        shown = ("the last lines of its output are below" if tail.strip()
                 else "it printed nothing")
        raise RunError(f"the run {how} before writing its result; {shown}", detail=tail,
                       killed_by=outcome.killed_by) from None
    if result.get("status") not in ("ok", "stopped"):
        err: dict[str, Any] = result["error"] if isinstance(result.get("error"), dict) else {}
        prefix = _ERROR_PREFIX.get(str(err.get("kind")), "the run failed")
        raise RunError(f"{prefix}: {err.get('message', '')}",
                       detail=str(err.get("traceback") or tail))
    nonfinite = result.get("nonfinite") or []
    if nonfinite:
        first = nonfinite[0]
        raise RunError(f"metric {first['metric']!r} is not finite at step {first['step']} "
                       f"({first['value']}); {len(nonfinite)} non-finite value(s) "
                       "logged in all. A diverged run is not a result to reproduce: fix the "
                       "training (learning rate, initialisation) before recording")
    try:
        shape = _RunFile.model_validate(result)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise RunError(f"the run's run.json is malformed at {key}: {first['msg']} (written by "
                       "the training process: did the training code write into its output "
                       "directory?)") from None
    try:
        traced = None if shape.traced is None else TraceInfo.model_validate(shape.traced, strict=False)
    except ValidationError as exc:
        raise RunError(f"the run's run.json is malformed at traced: {exc.errors()[0]['msg']}") from None
    try:
        arrays = read_npz(out / "arrays.npz")
    except (ValueError, FileNotFoundError) as exc:
        raise RunError(f"the run's arrays.npz cannot be read: {exc}") from None
    if result.get("status") == "stopped" and shape.stopped is None:
        raise RunError("the run's run.json says it stopped (fail-fast) but not where")
    checkpoints = _read_checkpoints(out, shape.checkpoints, arrays)
    key = platform or platform_key(shape.fingerprint.backend)
    notes = []
    if outcome.dropped_env:
        notes.append("dropped from the run's environment (set by the caller): "
                     + ", ".join(outcome.dropped_env))
    notes += outcome.notes + shape.notes
    if shape.leftover_processes:
        notes.append(f"the training left {shape.leftover_processes} process(es) running; "
                     "repro killed them when the run ended")
    return RunResult(key, shape.fingerprint, shape.metrics, arrays, shape.timings,
                     shape.grad_steps, outcome, notes, packages=shape.packages,
                     inputs=shape.inputs, traced=traced,
                     stopped=shape.stopped if result.get("status") == "stopped" else None,
                     checkpoints=checkpoints, restored_at=shape.restored_at, ended_at=shape.ended_at,
                     shardings=dict(shape.shardings))


def _read_checkpoints(out: Path, layout: dict[str, list[list[Any]]],
                      arrays: dict[str, Any]) -> dict[int, list[LeafKind]]:
    """The states the run kept (out/checkpoints/<step>.npz, one array per leaf), added to
    `arrays` as checkpoints/<step>/<path>; RunError when one is missing or does not match the
    leaves run.json lists (the directory is the sandbox's: a link is damage)."""
    kinds: dict[int, list[LeafKind]] = {}
    if not layout:
        return kinds
    directory = out / "checkpoints"
    if directory.is_symlink() or not directory.is_dir():
        raise RunError("the run's run.json lists checkpoints, but out/checkpoints is not a "
                       "directory it wrote")
    for key, leaves in layout.items():
        try:
            step = int(key)
            listed = [LeafKind.from_list(x) for x in leaves]
            state = read_npz(directory / f"{step}.npz")
        except (ValueError, FileNotFoundError) as exc:
            raise RunError(f"the run's checkpoint at step {key} cannot be read: {exc}") from None
        if sorted(state) != sorted(k.path for k in listed):
            raise RunError(f"the run's checkpoint at step {step} holds other leaves than its "
                           "run.json lists")
        kinds[step] = listed
        for k in listed:
            arrays[f"checkpoints/{step}/{k.path}"] = state[k.path]
    return kinds


class StoppedAt(BaseModel):
    """Where fail-fast stopped a run: the first value out of tolerance (run.json "stopped")."""

    model_config = ConfigDict(extra="ignore")

    quantity: str = Field(max_length=300)
    step: int
    why: str = Field(default="", max_length=300)
    recorded: float | None = None
    current: float | str | None = None


class _RunFile(BaseModel):
    """The shape of a successful run.json (repro.child.runner writes it)."""

    model_config = ConfigDict(extra="ignore")

    fingerprint: FingerprintField
    metrics: dict[str, MetricSeries] = Field(default_factory=dict)
    timings: dict[str, float] = Field(default_factory=dict)
    grad_steps: list[int] = Field(default_factory=list)
    packages: list[str] | None = None
    leftover_processes: int = 0
    notes: list[Annotated[str, Field(max_length=500)]] = Field(default_factory=list, max_length=10)
    inputs: UnpinnedInputs | None = None
    traced: dict[str, Any] | None = None   # TraceInfo (its entries are JSON lists: not strict)
    stopped: StoppedAt | None = None
    checkpoints: dict[str, list[list[Any]]] = Field(default_factory=dict)
    restored_at: int | None = None
    ended_at: int | None = None
    shardings: dict[str, list[Any] | str] = Field(default_factory=dict)


def check_recordable(spec: Spec, result: RunResult) -> None:
    """RunError unless the run holds everything the spec records and something to compare."""
    missing = [m for m in (spec.record.metrics or []) if m not in result.metrics]
    if missing:
        raise RunError(f"record.metrics lists {missing}, which the training function never "
                       f"logged (it logged: {sorted(result.metrics) or 'nothing'}); "
                       "call ctx.log(step, name=value) or fix the list")
    compared = spec.record.metrics if spec.record.metrics is not None else list(result.metrics)
    if not compared and not result.arrays:
        raise RunError("nothing to compare: the run logged no metric that record.metrics "
                       "keeps, no kept gradient and no weights, so every later verify would "
                       "pass vacuously. Log metrics with ctx.log, return the final params "
                       "(record.weights: final), or keep gradients (record.grads)")


def record_meta(spec: Spec, repo_root: Path, code: CodePin, result: RunResult,
                image_ref: str | None, backend: str, noise: NoiseInfo | None = None,
                invariance: InvarianceInfo | None = None) -> RecordMeta:
    """What record.json says about a run (its `arrays` index is added when written)."""
    packages = None
    if result.packages is not None:  # docker: what a rebuild from recipe must match
        packages = ImagePackages(sha256=packages_digest(result.packages),
                                 count=len(result.packages), list=result.packages)
    return RecordMeta(
        repro_version=repro.__version__,
        created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        spec=SpecInfo(name=spec.name or "", hash=spec.hash, canonical=spec.canonical,
                      file=_relative(spec.path, repo_root)),
        code=CodeInfo(mode=code.mode, commit=code.commit, dirty=code.dirty),
        data={n: DataInfo(path=e.path, sha256=e.sha256, dvc=e.dvc, dvc_md5=e.dvc_md5)
              for n, e in spec.data.items()},
        image=image_ref, image_packages=packages, backend=backend,
        platform=result.platform_key, fingerprint=result.fingerprint, metrics=result.metrics,
        grad_steps=result.grad_steps, timings=result.timings, inputs=result.inputs, noise=noise,
        traced=result.traced, shardings=result.shardings or None, invariance=invariance)


def _relative(path: Path | None, root: Path) -> str:
    try:
        return str(Path(path or "").resolve().relative_to(root))
    except ValueError:
        return str(path)
