"""The restart check, `repro verify --resume-check [STEP]` (docs/checkpoints.md): a run
restored from a recorded checkpoint must reach the record's next checkpoint bitwise.

Two runs side by side on the `Executor`: the *restored* run starts from the recorded state at
k (default: the first checkpoint that has a next one) and ends at the next checkpoint; the
*uninterrupted* run trains from step 0 to the first state offered after k. When the restored
run misses the record, the check names the leaves that differ between the two at that first
state after the restore, and finds the part the restore misses exactly: for each top-level part
of the state (params, opt_state, the data RNG…) one more run restores the state with that part
nudged and takes one step; a part whose nudge changes nothing is one the training function does
not take from ctx.restore (it re-creates it).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from repro import pipeline
from repro.commands.segmentplan import Segment
from repro.commands.segments import Loaded, load, replay_of, run_replays, window
from repro.compare import compare_run
from repro.engines.executor import Executor, LocalExecutor
from repro.errors import ReproError, SpecError
from repro.failfast import RecordView
from repro.noise import EXACT_TOLERANCE
from repro.record import read_state
from repro.result import RunResult
from repro.store.recordblobs import CHECKPOINTS
from repro.verdict import Restart, Status, Verdict, error_verdict


def pick(steps: list[int], at: int | None) -> tuple[int, int]:
    """(k, the next checkpoint): `at`, or the first checkpoint that has a next one."""
    steps = sorted(s for s in steps if s > 0)
    if at is None:
        if len(steps) < 2:
            raise SpecError("the restart check needs two checkpoints after step 0 (one to restore "
                            "from, the next to reach): keep more (record.checkpoints.every) and "
                            "record again")
        return steps[0], steps[1]
    if at not in steps or at == steps[-1]:
        raise SpecError(f"--resume-check {at}: not a recorded checkpoint with a next one "
                        f"(recorded: {', '.join(map(str, steps))})")
    return at, steps[steps.index(at) + 1]


@pipeline.timed
def check_restart(spec_ref: pipeline.SpecRef, options: pipeline.Options | None = None, *,
                  at: int | None = None, jobs: int = 2, executor: Executor | None = None) -> Verdict:
    """Restore at a recorded checkpoint and require the next one bitwise."""
    options, spec = options or pipeline.Options(), None
    try:
        spec = pipeline.as_spec(spec_ref)
        loaded = load(spec, options)
        if loaded.meta.checkpoints is None:
            raise SpecError(f"the record of {spec.name} keeps no checkpoint: add "
                            "`record.checkpoints: {every: K}` and record again (docs/checkpoints.md)")
        k, nxt = pick(loaded.meta.checkpoints.steps, at)
        restored = replay_of(loaded, k, nxt, keep=(k + 1,))
        fresh = replay_of(loaded, 0, k + 1)
        state_k = read_state(loaded.directory, loaded.meta, k)
        state_next = read_state(loaded.directory, loaded.meta, nxt)
    except ReproError as exc:
        return error_verdict(spec_ref, exc, spec=spec, backend=options.backend)
    # to the end of the segment whatever it finds: the state there is the verdict, and the
    # leaves after the restore are the diagnosis (fail-fast would stop at the first metric)
    whole = dataclasses.replace(options, fail_fast=False)
    executor = executor or LocalExecutor(min(jobs, 2))
    b, a = run_replays(loaded, whole, [restored, fresh], executor)
    for result, which in ((b, f"the run restored at step {k}"), (a, "the uninterrupted run")):
        if not isinstance(result, RunResult):
            why = "it was interrupted" if result is None else str(result)
            return error_verdict(spec, f"restart check: {which} did not finish: {why}", spec=spec,
                                 backend=options.backend)
    assert isinstance(a, RunResult) and isinstance(b, RunResult)
    return _judge(loaded, options, k, nxt, b, a, state_k, state_next, executor)


def _judge(loaded: Loaded, options: pipeline.Options, k: int, nxt: int, restored: RunResult,
           fresh: RunResult, state_k: dict[str, Any], state_next: dict[str, Any],
           executor: Executor) -> Verdict:
    rec, spec = loaded.record, loaded.prep.spec
    seg = Segment(k, nxt)
    rec_m, _ = window(rec.metrics, {}, seg)
    run_m, _ = window(restored.metrics, {}, seg)
    rec_a = {f"{CHECKPOINTS}{nxt}/{p}": a for p, a in state_next.items()}
    run_a = {key: a for key, a in restored.arrays.items() if key.startswith(f"{CHECKPOINTS}{nxt}/")}
    cmp = compare_run(RecordView(rec.fingerprint, rec_m, rec_a), run_m, run_a,
                      tolerance=EXACT_TOLERANCE, platform_key=restored.platform_key,
                      run_fingerprint=restored.fingerprint, metric_names=spec.record.metrics)
    for row in cmp.rows:
        row.segment = seg.label
    restart = Restart(at=k, to=nxt)
    v = pipeline.run_verdict(loaded.prep, restored, Status.PASS if cmp.ok else Status.FAIL, options)
    v.rows, v.bitwise, v.record_path, v.restart = cmp.rows, True, str(loaded.directory), restart
    v.mode_reason = (f"the restart check: a run restored from the record's state at step {k} "
                     f"must reach its state at step {nxt} bitwise")
    if cmp.ok:
        return v
    if _state(fresh, k) != {} and not _all_same(state_k, _state(fresh, k)):
        v.notes.append(f"the uninterrupted run does not reach the record's state at step {k} "
                       "bitwise on this machine, so the restored and uninterrupted runs are not "
                       "compared leaf by leaf: verify the spec, or record again here")
        return v
    after = sorted(set(restored.checkpoints) & set(fresh.checkpoints) - {k})
    if not after:
        return v
    f = after[0]
    got, want = _state(restored, f), _state(fresh, f)
    restart.first_step = f
    restart.differing = [p for p in want if p not in got or not _same(want[p], got[p])]
    groups = _groups(list(state_k))
    probes = [replay_of(loaded, k, f) for _ in groups]
    probes = [dataclasses.replace(r, state=_nudged(r.state, g)) for r, g in zip(probes, groups)]
    for group, result in zip(groups, run_replays(loaded, dataclasses.replace(options, fail_fast=False),
                                                 probes, executor)):
        if isinstance(result, RunResult) and _all_same(got, _state(result, f)):
            restart.not_restored.append(group)
    return v


def _groups(paths: list[str]) -> list[str]:
    """The state's top-level parts (params, opt_state, rng), or the next level when it has one."""
    tops = list(dict.fromkeys(p.split("/")[0] for p in paths))
    if len(tops) > 1:
        return tops
    return list(dict.fromkeys("/".join(p.split("/")[:2]) for p in paths))


def _nudged(state: Any, group: str) -> dict[str, np.ndarray]:
    """The state with every number under `group` moved (floats by about 0.4 %, integers by 1):
    a run that takes the part from ctx.restore cannot give the same bits after a step."""
    out = dict(state)
    for path, a in state.items():
        if path != group and not path.startswith(group + "/"):
            continue
        if a.dtype.kind in "fc":
            out[path] = (a + (np.abs(a) + np.asarray(1e-3, a.dtype)) * np.asarray(2**-8, a.dtype)).astype(a.dtype)
        elif a.dtype.kind in "iu":
            out[path] = (a + np.ones_like(a)).astype(a.dtype)
    return out


def _state(result: RunResult, step: int) -> dict[str, np.ndarray]:
    prefix = f"{CHECKPOINTS}{step}/"
    return {key[len(prefix):]: a for key, a in result.arrays.items() if key.startswith(prefix)}


def _all_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return set(a) == set(b) and all(_same(a[p], b[p]) for p in a)


def _same(a: np.ndarray, b: np.ndarray | None) -> bool:
    return b is not None and a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()

