"""The one pipeline behind every front end: load → pin → run → (record | compare) → Verdict.

`run`, `record` and `verify` return a `Verdict` for every outcome a user can cause (bad spec,
broken pin, crash in their code, mismatch); only bugs in repro itself raise. The pytest plugin,
the CLI and the audit call these functions and render what they return.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import repro
from repro.backends import ChildOutcome, get_backend
from repro.backends.base import RunDir
from repro.errors import ReproError, RunError
from repro.ioutil import open_regular, read_npz
from repro.paths import cache_dir
from repro.pins.code import CodePin, repo_root, resolve_code
from repro.pins.data import verify_data
from repro.changes import changes_since_record
from repro.record import Record, check_record, read_record, record_dir, write_record
from repro.spec import Spec, load_spec
from repro.verdict import ERROR, FAIL, PASS, RAN, RECORDED, Verdict

PLATFORM_KEYS = {"cpu": "cpu", "gpu": "gpu", "cuda": "gpu", "rocm": "gpu", "tpu": "tpu"}


@dataclass
class Options:
    """How to run a spec; every front end maps its flags onto this."""

    backend: str = "local"
    code: str = "pinned"                 # pinned | worktree
    platform: str | None = None          # record platform key; default: the run's platform
    records_root: Path | None = None     # default: <repo root>/fixtures/records
    timeout: float | None = None         # default: the spec's timeout
    echo: object = False                 # stream the child's output (True, or a callable per line)
    keep_run_dir: bool = False
    compile_cache: bool = True           # JAX persistent compilation cache shared by runs
    cpu_slot: int | None = None          # which cores a parallel run takes (audit/xdist worker)
    docker_memory: str | None = None     # docker backend: memory limit when the spec sets none
    docker_pids: int | None = None       # docker backend: pids limit when the spec sets none


@dataclass
class Prepared:
    spec: Spec
    repo_root: Path
    code: CodePin
    data: dict[str, Path]


@dataclass
class RunResult:
    platform_key: str
    fingerprint: dict
    metrics: dict
    arrays: dict
    timings: dict
    grad_steps: list[int]
    outcome: ChildOutcome
    notes: list[str] = field(default_factory=list)
    image: object = None                 # docker: the repro.pins.image.ImagePin that ran
    packages: list[str] | None = None    # docker: the image's package list, taken inside it


def as_spec(spec: Spec | str | Path) -> Spec:
    return spec if isinstance(spec, Spec) else load_spec(spec)


def prepare(spec: Spec | str | Path, options: Options) -> Prepared:
    """Check every pin before anything runs: spec, code commit, data hashes."""
    spec = as_spec(spec)
    root = repo_root(spec.path)
    code = resolve_code(spec, root, options.code)
    data = verify_data({n: (e.path, e.sha256) for n, e in spec.data.items()}, root)
    return Prepared(spec, root, code, data)


def execute(prep: Prepared, options: Options, recorded: dict | None = None) -> RunResult:
    """Run the training function in a fresh child and collect what it wrote. `recorded` (the
    record's metadata, verify only) lets the docker backend accept an image rebuilt from the
    spec's recipe when its package list equals the record's."""
    spec = prep.spec
    backend = get_backend(options.backend)
    env_spec, image = spec.environment, None
    if options.backend == "docker":
        from repro.pins.image import resolve_image
        image = resolve_image(spec, prep.repo_root, recorded, _say(options.echo))
        env_spec = env_spec.model_copy(update={
            "image": image.id, "memory": env_spec.memory or options.docker_memory,
            "pids": env_spec.pids or options.docker_pids})
    run_dir = RunDir.create(prefix=f"repro-{spec.name}-")
    try:
        from repro.pins.env import determinism_settings
        settings = determinism_settings(spec.environment)
        job = {"entrypoint": spec.code.entrypoint, "tree": str(prep.code.tree),
               "seeds": spec.seeds, "data": {k: str(v) for k, v in prep.data.items()},
               "config": spec.config, "cpus": spec.environment.cpus,
               "grads": spec.record.grads.model_dump() if spec.record.grads else None,
               "weights": spec.record.weights, "packages": spec.environment.packages,
               "settings": settings, "cpu_slot": _cpu_slot(options),
               "compile_cache": str(cache_dir() / "jax-compile") if options.compile_cache else None}
        job["spec"] = spec.name  # the backend writes job.json (with its own paths) for the runner
        timeout = options.timeout or spec.timeout
        outcome = backend.run(job, run_dir, prep.code.tree, env_spec, timeout, options.echo)
        result = _collect(run_dir.out, outcome, spec, options)
        if image is not None:
            result.image, result.notes = image, image.notes + result.notes
        return result
    finally:
        if not options.keep_run_dir:
            shutil.rmtree(run_dir.root, ignore_errors=True)


def _say(echo):
    """Where progress lines (an image rebuild) go: like the child's output."""
    if echo is True:
        import sys
        return lambda line: print(line, file=sys.stderr, flush=True)
    return echo if callable(echo) else None


def _cpu_slot(options: Options) -> int | None:
    if options.cpu_slot is not None:
        return options.cpu_slot
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # gw0, gw1, ...
    return int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else None


def _collect(run_dir: Path, outcome: ChildOutcome, spec: Spec, options: Options) -> RunResult:
    tail = "\n".join(outcome.log_tail[-20:])
    if outcome.timed_out:
        raise RunError(f"the run {outcome.killed_reason} (spec timeout: {spec.timeout:g} s; raise "
                       "`timeout:` in the spec or pass --timeout)", detail=tail)
    try:
        with open_regular(run_dir / "run.json") as f:
            result = json.loads(f.read())
        if not isinstance(result, dict):
            raise ValueError("run.json is not a JSON object")
    except (OSError, ValueError):
        how = outcome.killed_reason or f"exited with code {outcome.returncode}"
        raise RunError(f"the run {how} before writing its result; the last lines of its output "
                       "are below", detail=tail) from None
    if result.get("status") != "ok":
        err = result.get("error") or {}
        kind = err.get("kind")
        prefix = {"user": "the training function raised",
                  "entrypoint": "the entrypoint could not be loaded",
                  "packages": "the environment does not match the spec",
                  "environment": "the environment cannot honour the spec",
                  "harness": "repro's runner failed (a bug in repro: please report it)"}.get(kind, "the run failed")
        detail = err.get("traceback") or tail
        raise RunError(f"{prefix}: {err.get('message', '')}", detail=detail)
    if result.get("nonfinite"):
        first = result["nonfinite"][0]
        raise RunError(f"metric {first['metric']!r} is not finite at step {first['step']} "
                       f"({first['value']}); {len(result['nonfinite'])} non-finite value(s) "
                       "logged in all. A diverged run is not a result to reproduce: fix the "
                       "training (learning rate, initialisation) before recording")
    try:
        arrays = read_npz(run_dir / "arrays.npz")
    except (ValueError, FileNotFoundError) as exc:
        raise RunError(f"the run's arrays.npz cannot be read: {exc}") from None
    fp = result.get("fingerprint", {})
    key = options.platform or platform_key(fp.get("backend") if isinstance(fp, dict) else None)
    notes = []
    if outcome.dropped_env:
        notes.append("dropped from the run's environment (set by the caller): "
                     + ", ".join(outcome.dropped_env))
    notes += outcome.notes
    return RunResult(key, fp, result.get("metrics", {}), arrays, result.get("timings", {}),
                     result.get("grad_steps", []), outcome, notes,
                     packages=result.get("packages"))


def platform_key(reported: object) -> str:
    """The record platform key for the jax backend a run reports. The value comes from the
    child (sandboxed, untrusted): only a known backend name maps to a key, anything else is an
    error — it names a record directory and must never become a host path."""
    if isinstance(reported, str) and reported in PLATFORM_KEYS:
        return PLATFORM_KEYS[reported]
    shown = reported if isinstance(reported, str) and len(reported) <= 80 else type(reported).__name__
    raise RunError(f"the run reported jax backend {shown!r}, which is none of "
                   f"{', '.join(sorted(PLATFORM_KEYS))}; not taken as a platform key. Pass "
                   "--platform KEY (--repro-platform) to name the record's platform")


def _backend_notes(spec: Spec, options: Options) -> list[str]:
    notes = []
    if options.backend == "local" and spec.environment.image:
        pinned = ("its packages were checked against this interpreter"
                  if spec.environment.packages else "nothing but the fingerprint pins the environment")
        notes.append(f"the local backend does not use environment.image "
                     f"({spec.environment.image[:40]}…): the image was not pinned; {pinned}")
    return notes


def _base_verdict(spec: Spec | None, status: str, options: Options) -> Verdict:
    v = Verdict(name=spec.name if spec else "?", status=status,
                spec_path=str(spec.path) if spec else "", backend=options.backend,
                spec_hash=spec.hash if spec else "", commit=spec.code.commit or "" if spec else "")
    if spec is not None:
        v.pins = {"commit": spec.code.commit, "spec_hash": spec.hash,
                  "data": {n: e.sha256 for n, e in spec.data.items()},
                  "image": spec.environment.image}
    return v


def _error_verdict(spec_ref, exc: ReproError, options: Options, spec: Spec | None) -> Verdict:
    v = _base_verdict(spec, ERROR, options)
    if spec is None:
        v.name = Path(str(spec_ref)).stem if not isinstance(spec_ref, Spec) else "?"
        v.spec_path = str(spec_ref)
    v.error = str(exc)
    v.error_detail = getattr(exc, "detail", "") or ""
    return v


def _timed(func):
    """Stamp the verdict with the wall time of the whole call."""
    import functools

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        verdict = func(*args, **kwargs)
        verdict.duration_s = time.perf_counter() - t0
        return verdict
    return wrapper


@_timed
def run(spec_ref, options: Options | None = None) -> Verdict:
    """Execute a spec and summarise the run; compare nothing (`repro run`)."""
    options = options or Options()
    spec = None
    try:
        spec = as_spec(spec_ref)
        prep = prepare(spec, options)
        result = execute(prep, options)
    except ReproError as exc:
        return _error_verdict(spec_ref, exc, options, spec)
    v = _verdict_for_run(spec, prep, result, RAN, options)
    return v


def _verdict_for_run(spec, prep, result: RunResult, status, options) -> Verdict:
    v = _base_verdict(spec, status, options)
    v.platform, v.code, v.fingerprint = result.platform_key, prep.code.describe(), result.fingerprint
    v.timings = result.timings
    v.commit = prep.code.commit
    v.metrics_final = {k: s["values"][-1] for k, s in result.metrics.items() if s["values"]}
    v.notes = _backend_notes(spec, options) + result.notes
    if prep.code.dirty:
        v.notes.append("the working tree has uncommitted changes: " + ", ".join(prep.code.dirty[:8]))
    return v


@_timed
def record(spec_ref, options: Options | None = None) -> Verdict:
    """Execute a spec and write its recorded version (atomically)."""
    options = options or Options()
    spec = None
    try:
        spec = as_spec(spec_ref)
        prep = prepare(spec, options)
        result = execute(prep, options)
        missing = [m for m in (spec.record.metrics or []) if m not in result.metrics]
        if missing:
            raise RunError(f"record.metrics lists {missing}, which the training function never "
                           f"logged (it logged: {sorted(result.metrics) or 'nothing'}); "
                           "call ctx.log(step, name=value) or fix the list")
        directory = record_dir(prep.repo_root, spec.name, result.platform_key, options.records_root)
        meta = _record_meta(prep, result, options)
        write_record(directory, meta, result.arrays)
    except ReproError as exc:
        return _error_verdict(spec_ref, exc, options, spec)
    v = _verdict_for_run(spec, prep, result, RECORDED, options)
    v.record_path = str(directory)
    return v


def _record_meta(prep: Prepared, result: RunResult, options: Options) -> dict:
    spec = prep.spec
    return {
        "repro_version": repro.__version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "spec": {"name": spec.name, "hash": spec.hash, "canonical": spec.canonical,
                 "file": _relative(spec.path, prep.repo_root)},
        "code": {"mode": prep.code.mode, "commit": prep.code.commit, "dirty": prep.code.dirty},
        "data": {n: {"path": e.path, "sha256": e.sha256} for n, e in spec.data.items()},
        "image": (result.image.ref if result.image is not None else spec.environment.image)
                 if options.backend != "local" else None,
        "image_packages": _image_packages(result),
        "backend": options.backend,
        "platform": result.platform_key,
        "fingerprint": result.fingerprint,
        "metrics": result.metrics,
        "grad_steps": result.grad_steps,
        "timings": result.timings,
    }


def _image_packages(result: RunResult) -> dict | None:
    """The image's package fingerprint (docker runs): what a rebuild from recipe must match."""
    if result.packages is None:
        return None
    from repro.pins.image import describe_packages
    return describe_packages(result.packages)


def _relative(path: Path | None, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(root))
    except (ValueError, TypeError):
        return str(path)


@_timed
def verify(spec_ref, options: Options | None = None) -> Verdict:
    """Retrain from the pins and compare with the recorded version."""
    options = options or Options()
    spec = None
    try:
        spec = as_spec(spec_ref)
        prep = prepare(spec, options)
        loader = None
        early_key = options.platform or (spec.environment.platform
                                         if spec.environment.platform != "any" else None)
        if early_key:
            # A missing or corrupted record is reported before any training time is spent; the
            # arrays (and numpy, and the comparison code) load while the child trains.
            directory, recorded = check_record(record_dir(prep.repo_root, spec.name, early_key,
                                                          options.records_root))
            loader = _Background(read_record, directory)
        else:
            recorded = {}  # found after the run: an image rebuild cannot be checked against it
        result = execute(prep, options, recorded)
        if loader is not None:
            rec = loader.result()
        else:
            rec = read_record(record_dir(prep.repo_root, spec.name, result.platform_key,
                                         options.records_root))
    except ReproError as exc:
        return _error_verdict(spec_ref, exc, options, spec)
    return judge(prep, rec, result, options)


class _Background:
    """Run a function in a thread; `result()` returns its value or raises its exception."""

    def __init__(self, func, *args):
        self._value, self._error = None, None

        def work():
            try:
                import repro.compare  # noqa: F401  (warm the import while the child runs)
                self._value = func(*args)
            except BaseException as exc:  # handed to the caller in result()
                self._error = exc
        self._thread = threading.Thread(target=work, daemon=True, name="repro-record-loader")
        self._thread.start()

    def result(self):
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value


def judge(prep: Prepared, rec: Record, result: RunResult, options: Options) -> Verdict:
    """Compare a finished run with its record and say what changed since recording."""
    from repro.compare import compare_run

    spec = prep.spec
    cmp = compare_run(rec.meta, rec.arrays, result.metrics, result.arrays,
                      tolerance=spec.canonical["tolerance"], platform_key=result.platform_key,
                      run_fingerprint=result.fingerprint, metric_names=spec.record.metrics)
    v = _verdict_for_run(spec, prep, result, PASS if cmp.ok else FAIL, options)
    v.rows, v.bitwise, v.mode_reason = cmp.rows, cmp.bitwise, cmp.reason
    v.record_path = str(rec.path)
    v.changes = changes_since_record(rec.meta, spec, prep.code, result.fingerprint, options.backend)
    for name in (spec.record.metrics or sorted(set(rec.metrics) & set(result.metrics))):
        a, b = rec.metrics.get(name), result.metrics.get(name)
        if a and b:
            v.curves[name] = {"steps": a["steps"], "recorded": a["values"],
                              "run_steps": b["steps"], "run": b["values"]}
    return v
