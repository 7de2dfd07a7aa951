"""The noise floor at record time: a record is made from runs that agree.

`repro record` trains `record.runs` times (default 2; `--runs N`) from the same pins on the same
host. Runs that differ mean the training is not deterministic — an unseeded numpy or Python
generator, a host callback, the wall clock, thread scheduling, GPU atomics — and a record of one
of them would make every later verify fail for no reason. So the record is refused (exit 1, the
previous record untouched), naming the first quantity and step where the runs parted. A spec
that accepts noise says so with `tolerance.mode: close`: its runs may differ, the record keeps
the largest difference per quantity (its spread), and verify reports each error also as a
multiple of that spread.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from repro.compare import Comparison, compare_run
from repro.record import MetricSeries, NoiseInfo, Spread
from repro.spec import ToleranceSpec
from repro.verdict import QuantityResult

if TYPE_CHECKING:
    from repro.result import RunResult
    from repro.spec import Spec

EXACT_TOLERANCE = ToleranceSpec(mode="exact")   # runs of one record must agree bit for bit

CAUSES = ("unseeded numpy or Python randomness (use ctx.seed / ctx.key), host callbacks, the "
          "wall clock or other inputs no pin covers, thread scheduling (environment.cpus > 1), "
          "GPU atomics (non-deterministic ops)")


def compare_runs(first: RunResult, second: RunResult, spec: Spec) -> Comparison:
    """Two runs of one spec, bitwise, quantity by quantity (the first plays the record)."""
    return compare_run(first, second.metrics, second.arrays, tolerance=EXACT_TOLERANCE,
                       platform_key=first.platform_key, run_fingerprint=first.fingerprint,
                       metric_names=spec.record.metrics)


def compare_reached(first: RunResult, second: RunResult, spec: Spec) -> Comparison:
    """Two runs compared on what both reached: the steps both logged, the arrays both kept.
    A run that fail-fast stopped earlier than the other has fewer steps, which is no evidence
    that the training is nondeterministic; only a value that differs is."""
    m1: dict[str, MetricSeries] = {}
    m2: dict[str, MetricSeries] = {}
    for name in sorted(set(first.metrics) & set(second.metrics)):
        a, b = first.metrics[name], second.metrics[name]
        common = set(a["steps"]) & set(b["steps"])
        if common:
            m1[name], m2[name] = _steps_only(a, common), _steps_only(b, common)
    keys = set(first.arrays) & set(second.arrays)
    a1 = {k: v for k, v in first.arrays.items() if k in keys}
    a2 = {k: v for k, v in second.arrays.items() if k in keys}
    both = replace(first, metrics=m1, arrays=a1)
    return compare_run(both, m2, a2, tolerance=EXACT_TOLERANCE, platform_key=first.platform_key,
                       run_fingerprint=first.fingerprint, metric_names=sorted(m1))


def _steps_only(series: MetricSeries, steps: set[int]) -> MetricSeries:
    keep = [i for i, s in enumerate(series["steps"]) if s in steps]
    out = dict(series)
    out["steps"] = [series["steps"][i] for i in keep]
    out["values"] = [series["values"][i] for i in keep]
    return out  # type: ignore[return-value]


@dataclass
class NoiseFloor:
    """What the extra runs at record time found."""

    runs: int
    disagreement: Comparison | None = None   # runs differ and the spec does not accept it
    spread: dict[str, Spread] = field(default_factory=dict)  # mode close: largest difference

    def info(self) -> NoiseInfo:
        return NoiseInfo(runs=self.runs, spread=self.spread)


def noise_floor(first: RunResult, rerun: Callable[[], RunResult], spec: Spec,
                runs: int) -> NoiseFloor:
    """Train `runs - 1` more times and compare each with the first. Runs must agree bitwise
    unless the spec accepts noise (mode close): then the largest difference per quantity is
    kept. Runs whose quantities cannot even be compared (shapes, steps) never agree."""
    floor = NoiseFloor(runs)
    for _ in range(runs - 1):
        cmp = compare_runs(first, rerun(), spec)
        if not cmp.ok and (spec.tolerance.mode != "close" or any(r.note for r in cmp.failures)):
            floor.disagreement = cmp
            return floor
        if spec.tolerance.mode == "close":
            for row in cmp.rows:
                old = floor.spread.get(row.label)
                floor.spread[row.label] = Spread(
                    max_abs=_largest(old.max_abs if old else 0.0, row.max_abs),
                    max_rel=_largest(old.max_rel if old else 0.0, row.max_rel))
    return floor


def _largest(a: float | None, b: float) -> float | None:
    """The larger of two spreads; None (JSON has no inf) once either is not finite."""
    return None if a is None or not math.isfinite(b) else max(a, b)


def annotate_spread(rows: list[QuantityResult], noise: NoiseInfo | None) -> None:
    """Give each row the spread its quantity had at record time (mode close records)."""
    if noise is None:
        return
    for row in rows:
        spread = noise.spread.get(row.label)
        if spread is not None:
            row.spread = spread.max_abs if spread.max_abs is not None else math.inf


def first_difference(cmp: Comparison) -> QuantityResult | None:
    order = {"metric": 0, "grad": 1, "state": 2, "weight": 3}
    bad = cmp.failures
    return min(bad, key=lambda r: (r.first_step if r.first_step is not None else 10**12,
                                   order[r.kind])) if bad else None


def describe(cmp: Comparison, runs: int) -> str:
    first = first_difference(cmp)
    where = "" if first is None else (
        f"; first at {first.label}" + (f", step {first.first_step}" if first.first_step is not None
                                       else "") + f" (max abs {first.max_abs:.3g})")
    return (f"{runs} runs from the same pins on this host differ in {len(cmp.failures)} of "
            f"{len(cmp.rows)} quantities{where}: the training is not deterministic. Usual "
            f"causes: {CAUSES}. Fix the cause, or accept the noise explicitly with "
            "`tolerance.mode: close`")
