"""The noise floor at record time: a record is made from runs that agree.

`repro record` trains `record.runs` times (default 2; `--runs N`) from the same pins on the same
host. Runs that differ mean the training is not deterministic — an unseeded numpy or Python
generator, a host callback, the wall clock, thread scheduling, GPU atomics — and a record of one
of them would make every later verify fail for no reason. So the record is refused (exit 1, the
previous record untouched), naming the first quantity and step where the runs parted. A spec
that accepts noise says so with `tolerance.mode: close`: its runs may differ, and the verdict
notes by how much.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from repro.compare import Comparison, compare_run
from repro.verdict import QuantityResult

if TYPE_CHECKING:
    from repro.result import RunResult
    from repro.spec import Spec

CAUSES = ("unseeded numpy or Python randomness (use ctx.seed / ctx.key), host callbacks, the "
          "wall clock or other inputs no pin covers, thread scheduling (environment.cpus > 1), "
          "GPU atomics (non-deterministic ops)")


def compare_runs(first: RunResult, second: RunResult, spec: Spec) -> Comparison:
    """Two runs of one spec, bitwise, quantity by quantity (the first plays the record)."""
    return compare_run(first, second.metrics, second.arrays, tolerance={"mode": "exact"},
                       platform_key=first.platform_key, run_fingerprint=first.fingerprint,
                       metric_names=spec.record.metrics)


def noise_floor(first: RunResult, rerun: Callable[[], RunResult], spec: Spec,
                runs: int) -> Comparison | None:
    """Train `runs - 1` more times and compare each with the first; the comparison of the first
    run that disagrees, or None when all agree (or the spec accepts noise: mode close)."""
    for _ in range(runs - 1):
        cmp = compare_runs(first, rerun(), spec)
        if not cmp.ok and spec.tolerance.mode != "close":
            return cmp
    return None


def first_difference(cmp: Comparison) -> QuantityResult | None:
    order = {"metric": 0, "grad": 1, "weight": 2}
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
