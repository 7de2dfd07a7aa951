"""Child side of fail-fast (docs/failfast.md): the recorded metric trajectories a run checks as
it trains, and the exception that stops it at the first value that fails the verify for sure.

Standard library only at import (the runner imports it inside any image). The parent builds
the expectation (`repro.failfast.expecting`) and passes it in the `Job`; `Context.log` calls
`Expectation.check` once per logged value: a dict lookup, a list index and a float compare.
Kept gradients and checkpointed states are checked the same way by `ArrayExpectation` against
the record's arrays the parent copied next to the run (`out/expected.npz`), when they arrive.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from repro.job import ExpectedSeries


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

    def __init__(self, metrics: Mapping[str, ExpectedSeries]):
        # name -> [position, steps, values, rtol, atol, first step checked (a replayed segment
        # ignores what the training logs before its start)]: flat lists, the check is hot
        self._by_name: dict[str, list[Any]] = {
            n: [0, list(s.steps), [float(v) for v in s.values],
                float(s.limit.rtol), float(s.limit.atol), s.start]
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


class ArrayExpectation:
    """The record's kept gradients and states for the steps the parent copied (within its size
    cap), and the tolerance each must meet. A leaf is a sure failure when it is missing from the
    run or the record, has another shape, or differs beyond `atol + rtol * |record|` (exact
    mode, a tolerance of (0, 0): any bit; integers, booleans and strings: always exact)."""

    def __init__(self, path: str, grad_steps: list[int], state_steps: list[int],
                 tolerance: Mapping[str, Any]):
        self._path = path
        self._steps = {"grad": set(grad_steps), "state": set(state_steps)}
        self._tol = {k: (float(v[0]), float(v[1])) for k, v in tolerance.items()}
        self._file: Any = None
        self._index: dict[tuple[str, int], dict[str, str]] = {}   # (kind, step) -> leaf path -> member
        self.seconds = 0.0   # spent loading and comparing (the runner adds it to failfast_s)

    def expects(self, kind: str, step: int) -> bool:
        return step in self._steps[kind]

    def check(self, kind: str, step: int, leaves: Mapping[str, Any]) -> dict[str, Any] | None:
        """None, or the first leaf of `leaves` (path -> array) that fails for sure at `step`."""
        if step not in self._steps[kind]:
            return None
        import time

        import numpy as np

        t0 = time.perf_counter()
        try:
            if self._file is None:   # opened once; its members indexed by (kind, step) once
                self._file = np.load(self._path, allow_pickle=False)
                for key in self._file.files:
                    top, _, rest = key.partition("/")
                    at, _, path = rest.partition("/")
                    if top in ("grads", "checkpoints") and at.isdigit():
                        self._index.setdefault((top, int(at)), {})[path] = key
            recorded = self._index.get(("grads" if kind == "grad" else "checkpoints", step), {})
            label = "grad" if kind == "grad" else "state"
            for path in [*leaves, *(p for p in recorded if p not in leaves)]:
                name = f"{label} {path or '(root)'}"
                if path not in recorded:
                    return _info(name, step, None, math.nan, "is not in the record", quantity=True)
                if path not in leaves:
                    return _info(name, step, None, math.nan, "is in the record but not in the run",
                                 quantity=True)
                why = _array_difference(np.asarray(self._file[recorded[path]]),
                                        np.asarray(leaves[path]), self._tol[kind])
                if why is not None:
                    return _info(name, step, why[1], why[2], why[0], quantity=True)
            return None
        finally:
            self.seconds += time.perf_counter() - t0


def _array_difference(a: Any, b: Any, tol: tuple[float, float]
                      ) -> tuple[str, float | None, float] | None:
    """(why, recorded, run) at the first element out of tolerance, or None. Mirrors
    `repro.compare.compare_arrays`: equal NaNs and equal infinities agree; integers, booleans
    and strings are exact; a tolerance of (0, 0) (exact mode) means every bit."""
    import numpy as np

    if a.shape != b.shape:
        return f"has shape {list(b.shape)}, the record {list(a.shape)}", None, math.nan
    floats = a.dtype.kind in "fc", b.dtype.kind in "fc"
    if floats != (True, True):
        if floats[0] != floats[1] or (tol == (0.0, 0.0) and a.dtype != b.dtype):
            return f"has dtype {b.dtype}, the record {a.dtype}", None, math.nan
        bad = np.asarray(a != b).reshape(-1)
        what = "differs at element {i} (an exact leaf)"
    elif tol == (0.0, 0.0):
        if a.dtype != b.dtype:
            return f"has dtype {b.dtype}, the record {a.dtype}", None, math.nan
        width = a.dtype.itemsize
        bits = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}.get(width)
        if bits is None:   # complex: compare both halves
            bad = np.asarray(a != b).reshape(-1)
        else:
            bad = (np.ascontiguousarray(a).view(bits) != np.ascontiguousarray(b).view(bits)).reshape(-1)
        bad = bad & ~(np.isnan(a) & np.isnan(b)).reshape(-1)
        what = "differs at element {i} ({n} of {size} elements not bitwise equal)"
    else:
        x = a.astype(np.complex128 if "c" in (a.dtype.kind, b.dtype.kind) else np.float64)
        y = b.astype(x.dtype)
        with np.errstate(invalid="ignore", over="ignore"):
            diff = np.abs(y - x)
            diff = np.where((np.isnan(x) & np.isnan(y)) | (np.isinf(x) & (x == y)), 0.0, diff)
            diff = np.where(np.isnan(diff), np.inf, diff)
            bad = (diff > tol[1] + tol[0] * np.abs(np.where(np.isfinite(x), x, 0))).reshape(-1)
        what = "out of tolerance at element {i} ({n} of {size} elements)"
    if not bad.any():
        return None
    i = int(np.argmax(bad))
    return (what.format(i=i, n=int(bad.sum()), size=bad.size), *_pair(a, b, i))


def _pair(a: Any, b: Any, i: int) -> tuple[float | None, float]:
    try:
        return float(a.reshape(-1)[i].real), float(b.reshape(-1)[i].real)
    except (TypeError, ValueError):   # strings
        return None, math.nan


def _info(name: str, step: int, recorded: float | None, value: float, why: str,
          quantity: bool = False) -> dict[str, Any]:
    label = name if quantity else f"metric {name}"
    return {"quantity": label, "step": step, "why": why, "recorded": recorded,
            "current": value if math.isfinite(value) else repr(value),
            "message": f"{label} at step {step}: {why}"}
