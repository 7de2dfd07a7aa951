"""Segment replay (docs/segments.md): verify a long run piece by piece from its recorded states.

A record with checkpoints at k1 < k2 < … cuts the run into segments [0, k1), [k1, k2), …; each
replayed segment starts from the recorded state at its start (`ctx.restore`), ends once it
keeps the state at its end (`ctx.checkpoint`), and is compared with the record on its own
steps: metrics logged in [start, end), kept gradients there, the states it keeps up to its end,
and (last segment) the final weights. Segments run side by side on an `Executor` (`-j N`), so a
verdict costs the longest segment, not the run; `sample:K` replays K segments chosen with a
reported seed (the spot check for pull-request CI); `A-B` those that overlap steps [A, B).

With more segments than slots, consecutive segments share one run (`plan_units`): it starts from
the recorded state at the first one's start and goes on through the others. A segment after the
first counts from that run only where the run's state at its start is bitwise the record's —
the same computation a restore from the record would start — and is replayed again on its own
otherwise. Each extra process would cost a start, a compile and a restore.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.metadata as metadata
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from repro import pipeline
from repro.changes import changes_since_record
from repro.child.state import LeafKind
from repro.commands.progress import Progress
from repro.commands.segmentplan import NoCheckpoints, Segment, choose, parse_selection, plan_units, segments_of
from repro.engines.executor import Executor, LocalExecutor, SpecJob, run_spec_job
from repro.env.fingerprint import Fingerprint
from repro.errors import ReproError, SpecError
from repro.failfast import RecordView, compare_to_record
from repro.noise import annotate_spread, first_difference
from repro.record import Record, RecordMeta, read_record, read_state, record_dir
from repro.replay import Replay
from repro.result import RunResult
from repro.store.recordblobs import CHECKPOINTS
from repro.verdict import SegmentOutcome, Segments, Status, Verdict, error_verdict

if TYPE_CHECKING:
    from repro.backends.base import ChildOutcome
    from repro.spec import Spec


@dataclass
class Loaded:
    """A spec ready to replay: its pins checked, its record (states not loaded) and where."""

    prep: pipeline.Prepared
    directory: Path
    meta: RecordMeta
    record: Record


def load(spec_ref: pipeline.SpecRef, options: pipeline.Options) -> Loaded:
    """Check pins and record before anything trains (ReproError saying what is wrong)."""
    spec = pipeline.as_spec(spec_ref)
    prep = pipeline.prepare(spec, options)
    key = options.platform or options.backend_impl().expected_platform(spec)
    if not key:
        raise SpecError(f"{spec.name}: the record's platform is not known before the run "
                        "(environment.platform: any); pass --platform KEY")
    directory, meta = pipeline.open_record(record_dir(prep.repo_root, spec.name or "", key,
                                                      options.records_root))
    return Loaded(prep, directory, meta, read_record(directory, states=False))


def replay_of(loaded: Loaded, start: int, stop_at: int | None, keep: Sequence[int] = ()) -> Replay:
    """A run from the recorded state at `start` (0: a fresh run) to the state at `stop_at`."""
    if start == 0:
        return Replay(stop_at=stop_at, keep=tuple(keep))
    assert loaded.meta.checkpoints is not None
    layout = tuple(LeafKind.from_list([x.path, x.kind, x.weak, *([x.sharding] if x.sharding is not None else [])])
                   for x in loaded.meta.checkpoints.leaves(start))
    return Replay(start=start, state=read_state(loaded.directory, loaded.meta, start), layout=layout,
                  stop_at=stop_at, keep=tuple(keep))


def run_replays(loaded: Loaded, options: pipeline.Options, replays: Sequence[Replay],
                executor: Executor, progress: Progress | None = None,
                labels: Sequence[str] | None = None) -> list[RunResult | ReproError | None]:
    """Each replay as one job on `executor` (None: not finished, the batch was interrupted);
    `progress` sees each queued, started and finished, under `labels` (default: its steps). On
    an executor that ships jobs (a cluster) each is a SpecJob of `run_unit`: its start, stop
    and kept steps travel, and the worker reads the start state from its own copy of the record."""
    quiet = dataclasses.replace(options, echo=options.echo if executor.slots == 1 else False)

    def work(replay: Replay, slot: int) -> RunResult | ReproError:
        try:
            # one at a time (an audit's spec): the slot the caller was given
            cpu = slot if executor.slots > 1 else options.cpu_slot
            return pipeline.execute(loaded.prep, dataclasses.replace(quiet, cpu_slot=cpu, replay=replay),
                                    loaded.meta, loaded.directory).result
        except ReproError as exc:
            return exc
    names = labels or [f"segment [{r.start}, {'end]' if r.stop_at is None else f'{r.stop_at})'}"
                       for r in replays]
    first = progress.add(list(names)) if progress else 0
    on_start = (lambda i: progress.start(first + i)) if progress else None
    on_done = (lambda i, r: progress.done(first + i, r)) if progress else None
    if executor.ships_jobs:   # a cluster: each unit its own task, only its steps travel
        shipped = dataclasses.replace(options, echo=False, segments=None, jobs=1, replay=None)
        jobs: list[SpecJob[RunResult | ReproError]] = [
            SpecJob(loaded.prep.spec, shipped, functools.partial(run_unit, r.start, r.stop_at, r.keep),
                    ReproError, peer=functools.partial(run_unit_peer, r.start, r.stop_at, r.keep))
            for r in replays]
        batch = executor.map(run_spec_job, jobs, on_start=on_start, on_done=on_done)
    else:
        batch = executor.map(work, list(replays), on_start=on_start, on_done=on_done)
    return [batch.results.get(i) for i in range(len(replays))]


def run_unit(start: int, stop_at: int | None, keep: tuple[int, ...], spec: Spec,
             options: pipeline.Options) -> RunResult | ReproError:
    """One replay unit (a `Replay`'s start, stop and kept steps) where the spec's project is,
    e.g. a cluster worker's copy: the Replay is rebuilt from the record there (its start state
    read there, so only these ints travel) and run as `run_replays` runs it here."""
    try:
        loaded = load(spec, options)
        replay = replay_of(loaded, start, stop_at, keep)
        return pipeline.execute(loaded.prep, dataclasses.replace(options, replay=replay),
                                loaded.meta, loaded.directory).result
    except ReproError as exc:
        return exc


def run_unit_peer(start: int, stop_at: int | None, keep: tuple[int, ...], spec: Spec,
                  options: pipeline.Options) -> ChildOutcome:
    """Process k > 0 of a multi-process spec's replay unit, on its node: the same Replay, rebuilt
    from its own copy of the record, so every process restores the state at `start` and stops
    where process 0 does (ReproError when a pin or the record does not hold)."""
    replay = replay_of(load(spec, options), start, stop_at, keep)
    return pipeline.run_peer(spec, dataclasses.replace(options, replay=replay))


def window(metrics: Mapping[str, Any], arrays: Mapping[str, Any], seg: Segment
           ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The metrics and arrays of one segment: steps in [start, end), states it reaches, and
    the final weights of the last one."""
    out_m = {}
    for name, s in metrics.items():
        keep = [i for i, st in enumerate(s["steps"]) if seg.has_step(st)]
        out_m[name] = {**s, "steps": [s["steps"][i] for i in keep],
                       "values": [s["values"][i] for i in keep]}
    out_a = {}
    for key, value in arrays.items():
        head, _, rest = key.partition("/")
        if head == "grads" and seg.has_step(int(rest.split("/")[0])):
            out_a[key] = value
        elif key.startswith(CHECKPOINTS) and seg.keeps_state(int(rest.split("/")[0])):
            out_a[key] = value
        elif head == "weights" and seg.final:
            out_a[key] = value
    return out_m, out_a


def same_numbers_likely(fingerprint: Fingerprint | None, spec: Any, backend: str) -> bool:
    """Whether a run here will likely compute the record's bits, so that one run may go on from
    segment to segment: the record's machine and effective ISA, and for the local backend its
    python, jax, jaxlib and numpy (a docker image pins those). A wrong guess costs time, never
    a verdict: a continued segment counts only from a start state bitwise the record's."""
    from repro.env.cpu import cpu_isa
    from repro.env.isa import ceiling, effective

    if fingerprint is None:   # an imported record: its environment is unknown
        return False
    cap = ceiling(spec.environment.isa, cpu_isa())
    # (recorded, here) pairs; a fact the record does not hold (None) does not count against it
    facts = [(fingerprint.machine, platform.machine()),
             (fingerprint.effective_isa,
              effective(f"--xla_cpu_max_isa={cap}" if cap else "", cpu_isa()))]
    if backend == "local":
        facts.append((fingerprint.python, platform.python_version()))
        for recorded, package in ((fingerprint.jax, "jax"), (fingerprint.jaxlib, "jaxlib"),
                                  (fingerprint.numpy, "numpy")):
            try:
                facts.append((recorded, metadata.version(package)))
            except metadata.PackageNotFoundError:
                return False
    return all(recorded is None or recorded == here for recorded, here in facts)


def starts_as_recorded(result: RunResult, recorded: Mapping[str, Any], step: int) -> bool:
    """Whether the run kept the state at `step` and it is bitwise the record's (every leaf, its
    dtype and shape too)."""
    def state(arrays: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in arrays.items() if k == f"{CHECKPOINTS}{step}"
                or k.startswith(f"{CHECKPOINTS}{step}/")}
    rec, run = state(recorded), state(result.arrays)
    if not rec or rec.keys() != run.keys():
        return False
    for key, value in rec.items():
        a, b = np.asarray(value), np.asarray(run[key])
        if a.dtype != b.dtype or a.shape != b.shape or a.tobytes() != b.tobytes():
            return False
    return True


def replay_units(loaded: Loaded, options: pipeline.Options, chosen: Sequence[Segment],
                 recorded: Mapping[str, Any], executor: Executor, progress: Progress | None = None
                 ) -> tuple[list[RunResult | ReproError | None], set[int]]:
    """Each chosen segment's run (None: interrupted) and which of them went on from the run
    of the segment before them. Runs that share segments go first; a later segment whose start
    state did not come out bitwise the record's (or was never reached: a stop, a crash) is
    replayed again from the recorded state."""
    spec = loaded.prep.spec
    if same_numbers_likely(loaded.meta.fingerprint, spec, options.backend):
        logged = [st for series in loaded.meta.metrics.values() for st in series["steps"]]
        units = plan_units(chosen, executor.slots, max(logged + list(loaded.meta.grad_steps), default=0))
    else:
        units = [[i] for i in range(len(chosen))]
    def replay(start: int, stop_at: int | None, keep: Sequence[int] = ()) -> Replay:
        if executor.ships_jobs:   # only the steps travel: the worker reads the start state
            return Replay(start=start, stop_at=stop_at, keep=tuple(keep))
        return replay_of(loaded, start, stop_at, keep)
    replays = [replay(chosen[u[0]].start, chosen[u[-1]].stop_at, [chosen[i].start for i in u[1:]])
               for u in units]
    labels = [("segments " if len(u) > 1 else "segment ") + " ".join(chosen[i].label for i in u) for u in units]
    runs = run_replays(loaded, options, replays, executor, progress, labels)
    results: list[RunResult | ReproError | None] = [None] * len(chosen)
    continued: set[int] = set()
    again: list[int] = []
    for unit, run in zip(units, runs):
        results[unit[0]] = run
        for i in unit[1:]:
            if isinstance(run, RunResult) and starts_as_recorded(run, recorded, chosen[i].start):
                results[i] = run
                continued.add(i)
            else:
                again.append(i)
    if again and all(r is not None for r in runs):   # not after an interrupt
        reruns = run_replays(loaded, options, [replay(chosen[i].start, chosen[i].stop_at) for i in again],
                             executor, progress)
        for i, run in zip(again, reruns):
            results[i] = run
    return results, continued


@pipeline.timed
def replay_segments(spec_ref: pipeline.SpecRef, options: pipeline.Options | None = None, *,
                    executor: Executor | None = None, progress: Progress | None = None) -> Verdict:
    """Verify a spec by replaying the segments `options.segments` names (default all),
    `options.jobs` at a time; one Verdict for them all. A record without checkpoints is verified
    in full, and the verdict says so (an audit or `pytest specs/` may hold both kinds)."""
    options, spec = options or pipeline.Options(), None
    try:
        sel = parse_selection(options.segments or "all")
        spec = pipeline.as_spec(spec_ref)
        loaded = load(spec, options)
        try:
            all_segments = segments_of(loaded.meta, spec.name or "", spec.code.command is not None)
        except NoCheckpoints as exc:
            v = _whole(spec_ref, spec, dataclasses.replace(options, segments=None), executor)
            v.notes.append(f"verified in full, not by segments: {exc}")
            return v
        chosen, seed = choose(all_segments, sel)
        states = {s for seg in chosen for s in (loaded.meta.checkpoints.steps if loaded.meta.checkpoints
                                                else []) if seg.keeps_state(s)}
        recorded = dict(loaded.record.arrays)
        for step in sorted(states):
            recorded.update({f"{CHECKPOINTS}{step}/{p}": a
                             for p, a in read_state(loaded.directory, loaded.meta, step).items()})
    except (ReproError, ValueError) as exc:
        return error_verdict(spec_ref, exc, spec=spec, backend=(options or pipeline.Options()).backend)
    executor = executor or LocalExecutor(options.jobs)
    t0 = time.perf_counter()
    try:   # a start state the record cannot give (a missing or damaged blob) is an error verdict
        results, continued = replay_units(loaded, options, chosen, recorded, executor, progress)
    except ReproError as exc:
        return error_verdict(spec_ref, exc, spec=spec, backend=options.backend)
    report = Segments(selection=sel.text, total=len(all_segments), seed=seed)
    return _judge(loaded, options, chosen, results, recorded, report, time.perf_counter() - t0, continued)


def _whole(spec_ref: pipeline.SpecRef, spec: Spec, options: pipeline.Options,
           executor: Executor | None) -> Verdict:
    """A spec verified in full: here, or as one task on a cluster executor."""
    if executor is None or not executor.ships_jobs:
        return pipeline.verify(spec, options)
    lost = functools.partial(error_verdict, spec_ref, spec=spec, backend=options.backend)
    batch = executor.map(run_spec_job, [SpecJob(spec, options, pipeline.verify, lost)])
    if 0 not in batch.results:
        raise KeyboardInterrupt
    return batch.results[0]


def _judge(loaded: Loaded, options: pipeline.Options, chosen: list[Segment],
           results: list[RunResult | ReproError | None], recorded: dict[str, Any],
           report: Segments, elapsed: float, continued: set[int] | None = None) -> Verdict:
    spec, rec = loaded.prep.spec, loaded.record
    rows, errors, bitwise, reason = [], [], True, ""
    ran = [r for r in results if isinstance(r, RunResult)]
    for index, (seg, result) in enumerate(zip(chosen, results)):
        if not isinstance(result, RunResult):
            why = "interrupted before it finished" if result is None else str(result).splitlines()[0]
            errors.append(f"segment {seg.label}: {why}")
            report.outcomes.append(SegmentOutcome(seg.start, seg.end, Status.ERROR, first=why))
            continue
        rec_m, rec_a = window(rec.metrics, recorded, seg)
        run_m, run_a = window(result.metrics, result.arrays, seg)
        run = dataclasses.replace(result, metrics=run_m, arrays=run_a,
                                  grad_steps=[s for s in result.grad_steps if seg.has_step(s)])
        cmp = compare_to_record(RecordView(rec.fingerprint, rec_m, rec_a), run, spec)
        annotate_spread(cmp.rows, rec.meta.noise)
        for row in cmp.rows:
            row.segment = seg.label
        rows += cmp.rows
        bitwise, reason = bitwise and cmp.bitwise, reason or cmp.reason
        first = first_difference(cmp)
        text = "" if first is None else first.label.replace(f" in {seg.label}", "") + (
            f" at step {first.first_step}" if first.first_step is not None else "")
        stop = result.stopped.step if result.stopped and not cmp.ok else None   # its own stop
        report.outcomes.append(SegmentOutcome(
            seg.start, seg.end, Status.PASS if cmp.ok else Status.FAIL,
            duration_s=result.timings.get("total_s", 0.0), first=text,
            stopped_at=stop if stop is not None and (seg.has_step(stop) or seg.keeps_state(stop)) else None,
            continued=index in (continued or set())))
    if not ran:
        v = error_verdict(spec, "; ".join(errors) or "no segment ran", spec=spec, backend=options.backend)
        v.segments = report
        return v
    failed = any(o.status == Status.FAIL for o in report.outcomes)
    status = Status.FAIL if failed else Status.ERROR if errors else Status.PASS
    v = pipeline.run_verdict(loaded.prep, ran[-1], status, options)
    v.rows, v.bitwise, v.mode_reason, v.record_path = rows, bitwise, reason, str(loaded.directory)
    v.segments, v.error = report, "; ".join(errors)
    v.changes = changes_since_record(rec.meta, spec, loaded.prep.code, ran[0].fingerprint, options.backend)
    v.timings["segments_wall_s"] = elapsed
    for name in (spec.record.metrics or sorted(rec.metrics)):
        if name in rec.metrics:
            steps, values = _joined(name, chosen, results)
            v.curves[name] = {"steps": rec.metrics[name]["steps"], "recorded": rec.metrics[name]["values"],
                              "run_steps": steps, "run": values}
    return v


def _joined(name: str, chosen: list[Segment],
            results: list[RunResult | ReproError | None]) -> tuple[list[int], list[Any]]:
    """A metric's values over the replayed segments, in step order (for the report's curves)."""
    pairs = []
    for seg, result in zip(chosen, results):
        if isinstance(result, RunResult) and name in result.metrics:
            s = result.metrics[name]
            pairs += [(st, val) for st, val in zip(s["steps"], s["values"]) if seg.has_step(st)]
    pairs.sort(key=lambda p: p[0])
    return [p[0] for p in pairs], [p[1] for p in pairs]
