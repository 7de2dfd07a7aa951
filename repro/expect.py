"""Child side of fail-fast (docs/failfast.md): the recorded metric trajectories a run checks as
it trains, and the exception that stops it at the first value that fails the verify for sure.

Standard library only (the runner imports it inside any image). The parent builds the
expectation (`repro.failfast.expecting`) and passes it in the `Job`; `Context.log` calls
`Expectation.check` once per logged value: a list index and a float compare.
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
        self._steps = {n: list(s["steps"]) for n, s in metrics.items()}
        self._values = {n: [float(v) for v in s["values"]] for n, s in metrics.items()}
        self._tol = {n: (float(t[0]), float(t[1])) for n, t in tolerance.items()}
        self._seen = dict.fromkeys(self._steps, 0)

    def check(self, name: str, step: int, value: float) -> None:
        steps = self._steps.get(name)
        if steps is None:
            return
        i = self._seen[name]
        self._seen[name] = i + 1
        if i >= len(steps) or steps[i] != step:
            where = f"step {steps[i]}" if i < len(steps) else "no more steps"
            self._stop(name, step, None, value, f"the record has {where} at this position")
        recorded = self._values[name][i]
        if not math.isfinite(recorded):
            return   # the comparison of non-finite values is the parent's
        rtol, atol = self._tol[name]
        if not abs(value - recorded) <= atol + rtol * abs(recorded):   # NaN: out
            self._stop(name, step, recorded, value, "out of tolerance")

    @staticmethod
    def _stop(name: str, step: int, recorded: float | None, value: float, why: str) -> None:
        raise Stopped({"quantity": f"metric {name}", "step": step, "why": why,
                       "recorded": recorded, "current": value if math.isfinite(value) else repr(value),
                       "message": f"metric {name} at step {step}: {why}"})
