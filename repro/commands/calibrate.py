"""`repro calibrate SPEC`: how far a spec's numbers move when only the environment moves.

A variation matrix for training, in the spirit of reprotest: the spec runs once as pinned (the
baseline) and once under each variation this host can do — every XLA ISA ceiling below the
host's best, other core counts, the compile cache off and warm, other PYTHONHASHSEEDs, reversed
directory listings — and every quantity of every variation is compared with the baseline,
bitwise. What breaks bitwise is named; what the arithmetic variations (ISA, cores, compile
cache) moved gives measured tolerances: per quantity kind (grads, weights) and per metric, the
smallest (rtol, atol) that lets every observed deviation pass with a margin of 1.5, never
below repro's built-in fallback (the rule of Megatron-LM's golden-value statistics: largest
deviation × 1.5, with a floor). PYTHONHASHSEED and listing order are not tolerated: code that
depends on them computes something else, and is named. `--write` puts the tolerances in the
spec, keeping the user's comments. Tolerance keys never change a spec's numbers, so
records stay valid.

Runs go through the `Executor`: the baseline first (it also fills the compile cache the
`compile-cache=warm` variation loads from), then the variations `-j` at a time on their own CPU
slots. A variation that changes the core count runs alone after the others, on the first cores,
so that it gets every core it asks for and shares none.

This module is the orchestration (`calibrate`, `Calibration`); the matrix is in
commands/calibvariations.py, the deviations and the tolerance rule in commands/calibstats.py,
the spec edit of `--write` in commands/calibwrite.py.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from repro import pipeline
from repro.commands.calibstats import (
    Deviations,
    Proposal,
    all_deviations,
    propose_tolerance,
    resolved_bounds,
)
from repro.commands.calibvariations import (
    MESH,
    TOLERATED,
    Host,
    cpu_variations,
    parse_meshes,
    select,
    unavailable,
    variation_kind,
    variations_for,
)
from repro.commands.calibwrite import (
    Written,
    check_writable,
    without_tolerance,
    write_tolerances,
)
from repro.commands.progress import Progress
from repro.engines.executor import LocalExecutor
from repro.errors import ReproError, RunError, SpecError
from repro.noise import compare_runs
from repro.result import RunResult, check_recordable
from repro.spec import Spec, load_spec
from repro.variation import BASELINE, Variation
from repro.verdict import QuantityResult


# -- one run and its comparison with the baseline ------------------------------------------------
@dataclass
class VariationRun:
    """One run under one variation, compared with the baseline quantity by quantity (bitwise:
    `ok` means the same bits). A run that failed has `error` and no rows."""

    variation: Variation
    rows: list[QuantityResult] = field(default_factory=list)
    error: str | None = None
    error_detail: str = ""
    duration_s: float = 0.0
    effective_isa: str | None = None     # from the run's fingerprint

    @property
    def name(self) -> str:
        return self.variation.name

    @property
    def kind(self) -> str:
        return variation_kind(self.variation)

    @property
    def differing(self) -> list[QuantityResult]:
        return [r for r in self.rows if not r.ok]

    @property
    def bitwise(self) -> bool:
        return self.error is None and not self.differing


# -- the whole calibration ------------------------------------------------------------------------
@dataclass
class Calibration:
    """A spec's variation matrix: the baseline, each variation's comparison with it, the
    tolerances they imply, and what --write did (or why it did not)."""

    spec: str
    spec_path: str
    host: Host
    platform: str
    jobs: int
    mode: str                          # the spec's tolerance.mode
    baseline: VariationRun
    runs: list[VariationRun]
    proposal: Proposal
    unavailable: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    written: Written | None = None
    write_error: str | None = None     # --write was asked for and refused or failed
    duration_s: float = 0.0

    @property
    def quantities(self) -> int:
        return max((len(r.rows) for r in self.runs), default=0)

    @property
    def breaking(self) -> list[VariationRun]:
        """Variations that finished and changed at least one bit."""
        return [r for r in self.runs if r.error is None and r.differing]

    @property
    def failed(self) -> list[VariationRun]:
        return [r for r in self.runs if r.error is not None]

    @property
    def exit_code(self) -> int:
        return 2 if self.write_error else 0


@dataclass
class _Outcome:
    run: VariationRun
    result: RunResult | None = None
    deviations: list[Deviations] = field(default_factory=list)


def _execute(prep: pipeline.Prepared, options: pipeline.Options, variation: Variation,
             slot: int, baseline: RunResult | None) -> _Outcome:
    """One run under `variation`; compared with `baseline` when given. Errors are kept."""
    t0 = time.perf_counter()
    run = VariationRun(variation)
    try:
        result = pipeline.execute(prep, dataclasses.replace(options, variation=variation,
                                                            cpu_slot=slot)).result
    except ReproError as exc:
        run.error, run.error_detail = str(exc), getattr(exc, "detail", "")
        run.duration_s = time.perf_counter() - t0
        return _Outcome(run)
    except Exception as exc:  # a bug in repro: reported for this variation, not a lost matrix
        import traceback
        run.error = f"internal error in repro (a bug: please report it): {type(exc).__name__}: {exc}"
        run.error_detail = traceback.format_exc()
        run.duration_s = time.perf_counter() - t0
        return _Outcome(run)
    run.effective_isa = result.fingerprint.effective_isa
    if baseline is None:  # the baseline's arrays are kept for the comparisons
        run.duration_s = time.perf_counter() - t0
        return _Outcome(run, result)
    # a variation keeps only its rows and the elements that differ, not its arrays
    names = prep.spec.record.metrics
    run.rows = compare_runs(baseline, result, prep.spec).rows
    metric_names = names if names is not None else sorted(set(baseline.metrics) |
                                                          set(result.metrics))
    found = all_deviations(baseline, result, metric_names, variation.name)
    run.duration_s = time.perf_counter() - t0
    return _Outcome(run, deviations=found)


OnDone = Callable[[VariationRun, int, int], None]


def calibrate(spec_ref: pipeline.SpecRef, options: pipeline.Options | None = None, *,
              jobs: int | None = None, only: Collection[str] | None = None,
              write: bool = False, host: Host | None = None, on_done: OnDone | None = None,
              today: _dt.date | None = None, progress: Progress | None = None,
              meshes: str | None = None) -> Calibration:
    """Run the spec as pinned and under each variation this host can do (`only`: those kinds,
    of KINDS), compare each with the baseline, propose tolerances from the TOLERATED kinds and,
    with `write`, set them in the spec. `jobs` runs at a time (default: cores // environment.cpus); `on_done(run,
    finished, total)` as each run ends; `progress` sees every run queued, started and finished
    (the result: its VariationRun). Raises ReproError for a bad spec, a broken pin or a
    failed baseline (RunError, with the run's detail); a failed variation is reported in the
    result. KeyboardInterrupt kills every run. `meshes` ("8x1,4x2,2x4"): instead, the spec on
    each of those meshes (docs/sharding.md); their deviations propose tolerance.mesh."""
    t0 = time.perf_counter()
    # the baseline always fills the compile cache: compile-cache=warm loads from it
    options = dataclasses.replace(options or pipeline.Options(), compile_cache=True, echo=False,
                                  variation=BASELINE)
    spec = pipeline.as_spec(spec_ref)
    if write:
        check_writable(spec)
    host = host or Host.here()
    if meshes is not None and only is not None:
        raise ReproError("--meshes and --variations are separate matrices (tolerance.mesh and "
                         "the spec's own tolerances): run calibrate once for each")
    planned = parse_meshes(meshes, spec) if meshes is not None else select(
        variations_for(spec, host), only)
    prep = pipeline.prepare(spec, options)
    slots = jobs or max(1, host.cores // spec.environment.cpus)
    total = len(planned) + 1
    finished = 0
    # core-count variations run alone, after the others: each gets the cores it asks for
    together = [v for v in planned if v.cpus is None]
    alone = [v for v in planned if v.cpus is not None]
    first_job = progress.add([v.name for v in [BASELINE, *together, *alone]]) if progress else 0

    def tracked(offset: int) -> tuple[Callable[[int, _Outcome], None],
                                      Callable[[int], None] | None]:
        """The executor callbacks of one batch whose first run is job `offset` of `progress`."""
        def done(index: int, outcome: _Outcome) -> None:
            nonlocal finished
            finished += 1
            if on_done:
                on_done(outcome.run, finished, total)
            if progress:
                progress.done(first_job + offset + index, outcome.run)
        start = (lambda index: progress.start(first_job + offset + index)) if progress else None
        return done, start

    first = LocalExecutor(1).map(lambda v, slot: _execute(prep, options, v, slot, None),
                                 [BASELINE], *tracked(0))
    if not first.complete:
        raise KeyboardInterrupt
    base = first.results[0]
    if base.result is None:
        raise RunError(f"the baseline run (the spec as pinned, no variation) failed, so there is "
                       f"nothing to compare with: {base.run.error}", detail=base.run.error_detail)
    check_recordable(spec, base.result)
    baseline = base.result

    outcomes: dict[str, _Outcome] = {}
    for executor, batch_items, offset in ((LocalExecutor(slots), together, 1),
                                          (LocalExecutor(1), alone, 1 + len(together))):
        batch = executor.map(lambda v, slot: _execute(prep, options, v, slot, baseline),
                             batch_items, *tracked(offset))
        outcomes.update({batch_items[i].name: o for i, o in batch.results.items()})
        if not batch.complete:
            raise KeyboardInterrupt
    runs = [outcomes[v.name].run for v in planned]
    kinds = (MESH,) if meshes is not None else TOLERATED
    scope = (MESH,) if meshes is not None else ()
    tolerated = [v for v in planned if variation_kind(v) in kinds]
    observed = [d for v in tolerated for d in outcomes[v.name].deviations]
    order = {"metrics": 0, "grads": 1, "weights": 2}
    keys = sorted(dict.fromkeys(d.key for d in observed), key=lambda k: order[k[0]])  # stable
    tolerance = spec.tolerance
    proposed = tuple(dataclasses.replace(
        propose_tolerance(k, [d for d in observed if d.key == k]), scope=scope,
        current=resolved_bounds(tolerance, k, baseline.platform_key, bool(scope))) for k in keys)
    cal = Calibration(
        spec=spec.name or "spec", spec_path=str(spec.path or ""), host=host,
        platform=baseline.platform_key, jobs=slots, mode=spec.tolerance.mode,
        baseline=base.run, runs=runs,
        proposal=Proposal(proposed, sum(outcomes[v.name].run.error is None for v in tolerated),
                          baseline.platform_key, kinds=kinds),
        unavailable=[] if meshes is not None else unavailable(spec, host) + (
            ["cpu: emulated CPUs (qemu-user) are not run unless asked: --variations cpu"]
            if only is None and cpu_variations(spec, host)[0] else []))
    cal.notes = _notes(cal)
    if write:
        _write(cal, spec, today or _dt.datetime.now(_dt.UTC).date())
    cal.duration_s = time.perf_counter() - t0
    return cal


def _notes(cal: Calibration) -> list[str]:
    notes = []
    warm = next((r for r in cal.runs if r.name == "compile-cache=warm"), None)
    if warm is not None and warm.error is None and warm.differing:
        notes.append("compile-cache=warm differs from the baseline although only the cache's "
                     "state changed: the training itself may not be deterministic (`repro "
                     "record` checks: its runs must agree)")
    named = {"hash-seed": "the training depends on PYTHONHASHSEED (hash() of a str or bytes, "
                          "set iteration order); repro runs always use 0, other runners do not",
             "listing": "the training depends on the order directory listings come back in, "
                        "which differs between filesystems: sort what it lists",
             "gpu-ops": "XLA's non-deterministic GPU ops (atomic reductions, scatter) change "
                        "this training's bits; repro runs always set "
                        "--xla_gpu_deterministic_ops=true, runs outside repro must too"}
    for kind, why in named.items():
        broken = [r.name for r in cal.breaking if r.kind == kind]
        if broken:
            fix = "keep the flag" if kind == "gpu-ops" else "fix the code"
            notes.append(f"{', '.join(broken)}: {why}. Not absorbed into the tolerances: {fix}")
    ops = [r for r in cal.runs if r.kind == "gpu-ops" and r.bitwise]
    if ops:
        notes.append(f"{ops[0].name} changed no bit: this training's ops are deterministic on "
                     "this GPU even without --xla_gpu_deterministic_ops")
    if any(r.kind in TOLERATED for r in cal.failed):
        notes.append(f"{len(cal.failed)} variation(s) failed; the proposed tolerances cover the "
                     f"{cal.proposal.variations} of kinds {', '.join(TOLERATED)} that finished")
    if cal.mode == "exact":
        notes.append("tolerance.mode is exact: these tolerances would never apply")
    return notes


def _write(cal: Calibration, spec: Spec, today: _dt.date) -> None:
    assert spec.path is not None  # check_writable
    try:
        now = load_spec(spec.path)
        if without_tolerance(now) != without_tolerance(spec):
            raise SpecError("the spec changed while calibrate ran (beyond its tolerance block); "
                            "these measurements are of the old one: run calibrate again",
                            file=str(spec.path))
        cal.written = write_tolerances(spec.path, cal.proposal, today, cal.host.summary())
    except ReproError as exc:
        cal.write_error = f"tolerances not written: {exc}"
