"""The one pipeline behind every front end: load → pin → run → (record | compare) → Verdict.

`run`, `record`, `verify` (and `check`: record or verify) return a `Verdict` for every outcome a
user can cause (bad spec, broken pin, crash in their code, mismatch); only bugs in repro itself
raise. The pytest plugin, the CLI and the audit call these and render the result."""
from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from repro.backends import Backend, RunDir, get_backend
from repro.backends.base import ChildOutcome, progress_lines
from repro.changes import changes_since_record
from repro.confirm import classify
from repro.env.settings import child_isa, determinism_settings
from repro.errors import ReproError
from repro.failfast import compare_to_record, expecting, stopped_at
from repro.invariance import check_invariance
from repro.job import Job, Placement
from repro.localise import attach_traces
from repro.noise import annotate_spread, describe, noise_floor
from repro.paths import cache_dir
from repro.pins.code import CodePin, repo_root, resolve_code
from repro.pins.fetch import resolve_data
from repro.record import (
    BlobsAbsent,
    Record,
    RecordLoader,
    RecordMeta,
    check_record,
    read_record,
    record_dir,
    write_record,
)
from repro.replay import Replay, checkpoint_job, write_restore
from repro.result import RunResult, check_recordable, collect, record_meta
from repro.spec import Spec, load_spec
from repro.store.sync import fetch_missing
from repro.variation import BASELINE, Variation
from repro.verdict import Status, Verdict, error_verdict, spec_verdict

SpecRef = Spec | str | Path


@dataclass(frozen=True)
class Options:
    """How to run a spec; every front end maps its flags onto this."""

    backend: Literal["local", "docker"] = "local"
    code: Literal["pinned", "worktree"] = "pinned"
    platform: str | None = None          # record platform key; default: the run's platform
    records_root: Path | None = None     # default: <repo root>/fixtures/records
    timeout: float | None = None         # default: the spec's timeout
    echo: bool | Callable[[str], None] = False   # stream the child's output (True: stderr)
    compile_cache: bool = True           # JAX persistent compilation cache shared by runs
    cpu_slot: int | None = None          # which cores a parallel run takes (audit/xdist worker)
    docker_memory: str | None = None     # docker backend: memory limit when the spec sets none
    docker_pids: int | None = None       # docker backend: pids limit when the spec sets none
    runs: int | None = None              # record: trainings that must agree (default record.runs)
    variation: Variation = BASELINE      # calibrate: run differently without changing a pin
    confirm: int = 1                     # verify: reruns that classify a failure (0: none)
    varied: tuple[str, ...] = ()         # spec keys varied on purpose (bisect: code.commit): not evidence
    fail_fast: bool = False              # verify: stop at the first sure failure (repro/failfast.py)
    replay: Replay | None = None         # start from a checkpoint / end at one (repro/replay.py)
    segments: str | None = None          # verify by replaying these segments (repro/commands/segments.py)
    jobs: int = 1                        # segments replayed at a time
    placement: Placement | None = None   # one process of a run spread over nodes (--engine ray)

    def backend_impl(self) -> Backend[Any]:
        return get_backend(self.backend, docker_memory=self.docker_memory, docker_pids=self.docker_pids)


@dataclass(frozen=True)
class Prepared:
    """A spec whose pins all hold: its repository, exported code tree and verified data."""
    spec: Spec
    repo_root: Path
    code: CodePin
    data: dict[str, Path]
    notes: tuple[str, ...] = ()   # e.g. a DVC entry's working-tree copy passed over


def as_spec(spec: SpecRef) -> Spec:
    return spec if isinstance(spec, Spec) else load_spec(spec)


def prepare(spec: SpecRef, options: Options) -> Prepared:
    """Check every pin before anything runs: spec, code commit, data hashes (or data by URL)."""
    spec = as_spec(spec)
    options.backend_impl().check_host(spec)   # a GPU spec on a host without one: SKIPPED
    options.variation.check(options.backend)   # an emulated CPU: qemu-user here, the model known
    root = repo_root(spec.path or Path.cwd())
    code = resolve_code(spec, root, options.code)
    notes: list[str] = []   # by URL, DVC or the store: pins/fetch.py
    data = resolve_data(spec.data, root, options.timeout or spec.timeout, spec.code.commit, notes)
    return Prepared(spec, root, code, data, tuple(notes))


def make_job(prep: Prepared, options: Options) -> Job:
    """The parent→child contract for one run (paths as the host sees them; a backend re-points them)."""
    spec, var = prep.spec, options.variation
    grads, environment = spec.record.grads, var.environment(spec.environment)
    cache = options.compile_cache if var.compile_cache is None else var.compile_cache
    return checkpoint_job(Job(spec=spec.name or "spec", **spec.code.job_fields(), tree=str(prep.code.tree),
               data={k: str(v) for k, v in prep.data.items()}, seeds=dict(spec.seeds),
               config=dict(spec.config), settings=var.settings(determinism_settings(environment)),
               cpus=environment.cpus, cpu_slot=options.cpu_slot, grads_every=grads.every if grads else None,
               grads_steps=tuple(grads.steps) if grads else (), weights=spec.record.weights,
               trace_steps=tuple(spec.record.trace.steps) if spec.record.trace else None,
               packages=dict(spec.environment.packages), hash_seed=var.hash_seed, listing_order=var.listing_order,
               compile_cache=str(cache_dir() / "jax-compile") if cache else None, emulate_cpu=var.emulate_cpu,
               isa=child_isa(environment), xla_flags=tuple(environment.xla_flags),
               devices=environment.devices, mesh=environment.mesh_axes(),
               processes=environment.processes), spec, options.replay)


def placed(job: Job, options: Options) -> Job:
    """The job of the one process `options.placement` names (the others run on other nodes)."""
    p = options.placement
    return job if p is None else job.replace(process_id=p.process_id, coordinator=p.coordinator)


@dataclass
class Execution:
    """A finished run and the image it ran in (what the record keeps of its environment)."""
    result: RunResult
    image_ref: str | None


def execute(prep: Prepared, options: Options, recorded: RecordMeta | None = None, record_path: Path | None = None
            ) -> Execution:
    """Run the training function in a fresh child on the chosen backend and collect what it wrote. `recorded`
    (verify) lets docker accept an image rebuilt from recipe; with `record_path`, fail-fast checks the run."""
    backend = options.backend_impl()
    env = backend.prepare(prep.spec, prep.repo_root, recorded, progress_lines(options.echo))
    run_dir = RunDir.create(prep.spec.name or "spec")
    try:
        write_restore(run_dir.out, options.replay)
        timeout, job = options.timeout or prep.spec.timeout, placed(make_job(prep, options), options)
        job = expecting(job, prep.spec, recorded, options.fail_fast, options.replay, record_path, run_dir.out)
        with prep.code.in_use():   # no other process replaces the exported tree during the run
            outcome = backend.run(job, run_dir, env, timeout=timeout, echo=options.echo)
        result = collect(run_dir.out, outcome, timeout=timeout, platform=options.platform)
        result.notes[:0] = env.notes
        return Execution(result, env.image_ref)
    finally:
        run_dir.remove()


def timed(func: Callable[..., Verdict]) -> Callable[..., Verdict]:
    """Stamp the call's wall time; a bug in repro becomes an error verdict (exit 2), never a mismatch."""
    @functools.wraps(func)
    def wrapper(spec_ref: SpecRef, options: Options | None = None, **kw: Any) -> Verdict:
        t0 = time.perf_counter()
        try:
            verdict = func(spec_ref, options, **kw)
        except Exception as exc:
            import traceback
            verdict = error_verdict(spec_ref, f"internal error in repro (a bug: please report it): "
                                    f"{type(exc).__name__}: {exc}", backend=(options or Options()).backend)
            verdict.error_detail = traceback.format_exc()
        verdict.duration_s = time.perf_counter() - t0
        return verdict
    return wrapper


def run_verdict(prep: Prepared, result: RunResult, status: Status, options: Options) -> Verdict:
    v = spec_verdict(prep.spec, status, options.backend)
    v.platform, v.code, v.fingerprint = result.platform_key, prep.code.describe(), result.fingerprint
    v.timings, v.commit = result.timings, prep.code.commit
    v.metrics_final = {k: s["values"][-1] for k, s in result.metrics.items() if s["values"]}
    v.notes = prep.code.notes + list(prep.notes) + list(result.notes) + (["the working tree has uncommitted changes: "
                                                        + ", ".join(prep.code.dirty[:8])] if prep.code.dirty else [])
    return v


@timed
def run(spec_ref: SpecRef, options: Options | None = None) -> Verdict:
    """Execute a spec and summarise the run; compare nothing (`repro run`)."""
    options, spec = options or Options(), None
    try:
        spec = as_spec(spec_ref)
        prep = prepare(spec, options)
        done = execute(prep, options)
    except ReproError as exc:
        return error_verdict(spec_ref, exc, spec=spec, backend=options.backend)
    return run_verdict(prep, done.result, Status.RAN, options)


@timed
def record(spec_ref: SpecRef, options: Options | None = None) -> Verdict:
    """Execute a spec and write its recorded version (atomically)."""
    options, spec = options or Options(), None
    try:
        spec = as_spec(spec_ref)
        prep = prepare(spec, options)
        done = execute(prep, options)
        result = done.result
        check_recordable(spec, result)
        runs = options.runs or spec.record.runs
        # each run checks its pins again: a run may not change what the next one executes
        floor = noise_floor(result, lambda: execute(prepare(spec, options), options).result,
                            spec, runs)
        if floor.disagreement is not None:  # runs disagree: no record (repro/noise.py)
            v = run_verdict(prep, result, Status.FAIL, options)
            v.rows, v.bitwise, v.fail_class = floor.disagreement.failures, True, "nondeterministic"
            v.mode_reason = describe(floor.disagreement, runs)
            return v
        # record.invariance: the same training on each listed mesh, within tolerance.mesh
        inv = check_invariance(spec, result, lambda var: execute(
            prepare(spec, replace(options, variation=var)), replace(options, variation=var)).result)
        if inv is not None and inv.violation is not None:   # nothing is written
            v = run_verdict(prep, result, Status.FAIL, options)
            v.rows, v.bitwise, v.fail_class = inv.violation.failures, False, "mesh-dependent"
            v.mode_reason = inv.message
            return v
        directory = record_dir(prep.repo_root, spec.name or "", result.platform_key, options.records_root)
        write_record(directory, record_meta(prep.spec, prep.repo_root, prep.code, done.result,
                                            done.image_ref, options.backend, floor.info(),
                                            inv.info if inv is not None else None),
                     result.arrays, result.checkpoints)
    except ReproError as exc:
        return error_verdict(spec_ref, exc, spec=spec, backend=options.backend)
    v = run_verdict(prep, result, Status.RECORDED, options)
    v.record_path = str(directory)
    return v


@timed
def verify(spec_ref: SpecRef, options: Options | None = None) -> Verdict:
    """Retrain from the pins and compare with the recorded version."""
    options, spec = options or Options(), None
    try:
        spec = as_spec(spec_ref)
        prep = prepare(spec, options)
        key = options.platform or options.backend_impl().expected_platform(spec)
        recorded, loader, directory = None, None, None
        if key:
            # a bad record is reported before training; arrays load while the child trains
            directory, recorded = open_record(record_dir(prep.repo_root, spec.name or "", key,
                                                         options.records_root))
            loader = RecordLoader(directory, warm=_warm_comparison)
        done = execute(prep, options, recorded, directory)
        if loader is not None:
            rec = loader.result()
        else:
            rec = read_record(open_record(record_dir(prep.repo_root, spec.name or "",
                                                     done.result.platform_key, options.records_root))[0])
    except ReproError as exc:
        return error_verdict(spec_ref, exc, spec=spec, backend=options.backend)
    v = judge(prep, rec, done.result, options)
    if v.status == Status.FAIL:  # nondeterministic or changed? run again (repro/confirm.py)
        again: Callable[[], RunResult] = lambda: execute(prepare(spec, options), options, recorded, directory).result
        classify(v, spec, done.result, again, options.confirm, rec.meta.inputs, options.varied)
    return v


def run_peer(spec_ref: SpecRef, options: Options) -> ChildOutcome:
    """Process k > 0 of a multi-process verify whose processes run on several nodes
    (`options.placement`): the same pins, record and job as process 0's `verify` (fail-fast
    expectations included, so every process stops where process 0 does), but only the run:
    process 0 collects and judges. ReproError when a pin or the record does not hold."""
    assert options.placement is not None and options.placement.process_id > 0
    spec = as_spec(spec_ref)
    prep = prepare(spec, options)
    key = options.platform or options.backend_impl().expected_platform(spec)
    recorded, directory = None, None
    if key:
        directory, recorded = open_record(record_dir(prep.repo_root, spec.name or "", key,
                                                     options.records_root))
    backend = options.backend_impl()
    env = backend.prepare(spec, prep.repo_root, recorded, progress_lines(options.echo))
    run_dir = RunDir.create(spec.name or "spec")
    try:
        write_restore(run_dir.out, options.replay)
        timeout, job = options.timeout or spec.timeout, placed(make_job(prep, options), options)
        job = expecting(job, spec, recorded, options.fail_fast, options.replay, directory, run_dir.out)
        with prep.code.in_use():
            return backend.run(job, run_dir, env, timeout=timeout, echo=options.echo)
    finally:
        run_dir.remove()


def open_record(directory: Path) -> tuple[Path, RecordMeta]:
    """`check_record`, first fetching the store blobs it points to that this machine lacks
    from the repository's remote (re-hashed; repro/store/sync.py): before any training."""
    try:
        return check_record(directory)
    except BlobsAbsent as absent:
        fetch_missing(absent.directory, absent.refs)
        return check_record(directory)


def _warm_comparison() -> None:
    import repro.compare  # noqa: F401  (numpy and the comparison load while the child trains)


def judge(prep: Prepared, rec: Record, result: RunResult, options: Options) -> Verdict:
    """Compare a finished run with its record and say what changed since recording."""
    spec, cmp = prep.spec, compare_to_record(rec, result, prep.spec)   # a fail-fast stop: the part reached
    v = run_verdict(prep, result, Status.PASS if cmp.ok else Status.FAIL, options)
    v.stopped = stopped_at(rec, result)
    v.rows, v.bitwise, v.mode_reason, v.record_path = cmp.rows, cmp.bitwise, cmp.reason, str(rec.path)
    annotate_spread(v.rows, rec.meta.noise)
    if rec.meta.source is not None:   # imported (repro import): say so wherever the verdict goes
        origin = rec.meta.source.describe()
        v.mode_reason = f"the record came from {origin}; it has no environment fingerprint"
        v.notes.append(f"the record came from {origin}, imported {rec.meta.created}: it has no "
                       "environment fingerprint, so it was compared within tolerance, never "
                       "bitwise, and the environment was not compared (a difference there "
                       "cannot be named as a cause)")
    v.changes = changes_since_record(rec.meta, spec, prep.code, result.fingerprint, options.backend,
                                     _compared_shardings(result))
    attach_traces(v, rec, result)  # program fingerprints and the first diverging op (localise.py)
    for name in (spec.record.metrics or sorted(set(rec.metrics) & set(result.metrics))):
        a, b = rec.metrics.get(name), result.metrics.get(name)
        if a and b:
            v.curves[name] = {"steps": a["steps"], "recorded": a["values"],
                              "run_steps": b["steps"], "run": b["values"]}
    return v


def _compared_shardings(result: RunResult) -> dict[str, Any] | None:
    """The run's PartitionSpecs of the arrays it kept, to compare with the record's; None when
    the run stopped early or ended at a segment (its weights are not the final ones)."""
    if result.stopped is not None or result.ended_at is not None:
        return None
    return {k: result.shardings.get(k) for k in result.arrays if k.startswith(("weights", "grads/"))}
