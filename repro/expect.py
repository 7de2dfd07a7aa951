"""Child side of fail-fast (docs/failfast.md): the recorded metric trajectories a run checks as
it trains, and the exception that stops it at the first value that fails the verify for sure.

Standard library only (the runner imports it inside any image). The parent builds the
expectation (`repro.failfast.expecting`) and passes it in the `Job`; `Context.log` calls
`Expectation.check` once per logged value: a dict lookup, a list index and a float compare.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


class Stopped(BaseException):
    """Raised by `ctx.log` at the first sure failure; the runner catches it (a BaseException so
    that a training loop's `except Exception` does not swallow it)."""

    def __init__(self, info: dict[str, Any]):
        super().__init__(info.get("message", "stopped"))
        self.info = info


class Expectation:
    """Per metric: the recorded steps and values and the (rtol, atol) that a value must meet.
    A value is a sure failure when `|run - record| > atol + rtol * |record|` (exact mode: rtol =
    atol = 0, any difference), or when the run logs a step the record does not have there."""

    def __init__(self, metrics: Mapping[str, Mapping[str, Any]], tolerance: Mapping[str, Any]):
        # name -> [position, steps, values, rtol, atol, first step checked (a replayed segment
        # ignores what the training logs before its start)]
        self._by_name: dict[str, list[Any]] = {
            n: [0, list(s["steps"]), [float(v) for v in s["values"]],
                float(tolerance[n][0]), float(tolerance[n][1]), int(s.get("from", 0))]
            for n, s in metrics.items()}
        self.seconds = 0.0   # spent checking (Context.log adds it up: the check's cost, measured)

    def check(self, name: str, step: int, value: float) -> dict[str, Any] | None:
        """None, or where the run fails for sure (what `Stopped` carries)."""
        e = self._by_name.get(name)
        if e is None or step < e[5]:
            return None
        i = e[0]
        e[0] = i + 1
        steps = e[1]
        if i >= len(steps) or steps[i] != step:
            where = f"step {steps[i]}" if i < len(steps) else "no more steps"
            return _info(name, step, None, value, f"the record has {where} at this position")
        recorded = e[2][i]
        if abs(value - recorded) <= e[4] + e[3] * abs(recorded) or not math.isfinite(recorded):
            return None   # within tolerance; a non-finite recorded value is the parent's to compare
        return _info(name, step, recorded, value, "out of tolerance")   # NaN run values land here


def _info(name: str, step: int, recorded: float | None, value: float, why: str) -> dict[str, Any]:
    return {"quantity": f"metric {name}", "step": step, "why": why, "recorded": recorded,
            "current": value if math.isfinite(value) else repr(value),
            "message": f"metric {name} at step {step}: {why}"}
