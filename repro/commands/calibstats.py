"""The statistics of `repro calibrate`: where a variation's numbers deviate from the baseline,
element by element, and the tightest tolerance that passes every observed deviation with a margin
(largest deviation × MARGIN, never below the built-in floor). Pure numpy over run results: no
runs, no spec files.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal

import numpy as np

from repro.commands.calibvariations import TOLERATED
from repro.compare import FALLBACK, metric_array, resolve_tolerance
from repro.result import RunResult
from repro.spec import ToleranceSpec
from repro.verdict import QuantityKind

MARGIN = 1.5                 # every observed deviation passes at this multiple of itself
NEGLIGIBLE = 1e-3            # |value| below this fraction of its quantity's largest: atol's domain

TolKey = tuple[str, ...]     # a tolerance block under `tolerance:`: (grads,) (weights,) (metrics, NAME)


@dataclass(frozen=True)
class Bounds:
    """An elementwise tolerance: |run - record| <= atol + rtol * |record|."""

    rtol: float
    atol: float


FLOOR = Bounds(FALLBACK["rtol"], FALLBACK["atol"])   # what repro applies when a spec sets nothing


@dataclass(frozen=True)
class Deviations:
    """Where one quantity of a variation's run differs from the baseline: the elements that
    differ, their absolute error, the baseline's magnitude there, and which of them are
    negligible (|baseline| under NEGLIGIBLE × the quantity's largest: relative error means
    nothing there). `problem` says why no tolerance can cover it (shape, missing, non-finite)."""

    key: TolKey
    abs_err: np.ndarray
    magnitude: np.ndarray
    negligible: np.ndarray
    problem: str = ""


def deviations(key: TolKey, recorded: np.ndarray, current: np.ndarray,
               where: str = "") -> Deviations:
    """The deviations of `current` from `recorded` (the baseline), element by element."""
    empty = np.zeros(0)
    if recorded.shape != current.shape:
        return Deviations(key, empty, empty, empty.astype(bool),
                          f"shape {current.shape} != baseline {recorded.shape}{where}")
    a = np.asarray(recorded).astype(np.complex128 if recorded.dtype.kind == "c" else np.float64)
    b = np.asarray(current).astype(a.dtype)
    with np.errstate(invalid="ignore", over="ignore"):
        same = (np.isnan(a) & np.isnan(b)) | (np.isinf(a) & (a == b))
        err = np.where(same, 0.0, np.abs(b - a)).ravel()
        mag = np.abs(a).ravel()
    if not np.all(np.isfinite(err)):
        return Deviations(key, empty, empty, empty.astype(bool),
                          f"non-finite where the baseline is not (or the reverse){where}")
    finite = mag[np.isfinite(mag)]
    scale = float(finite.max()) if finite.size else 0.0
    neg = (mag < NEGLIGIBLE * scale) | (mag == 0)
    differ = err > 0
    return Deviations(key, err[differ], mag[differ], neg[differ])


def tolerance_key(kind: QuantityKind, name: str) -> TolKey:
    return ("metrics", name) if kind == "metric" else ("grads",) if kind == "grad" else ("weights",)


def quantities(result: RunResult, metric_names: Sequence[str]
                ) -> dict[tuple[QuantityKind, str], np.ndarray]:
    """Each compared quantity as one array, grouped as repro.compare groups them (a metric's
    trajectory; a gradient leaf over all kept steps; a final-weight leaf)."""
    out: dict[tuple[QuantityKind, str], np.ndarray] = {}
    for name in metric_names:
        if name in result.metrics:
            out[("metric", name)] = metric_array(result.metrics[name])
    grads: dict[str, list[tuple[int, np.ndarray]]] = {}
    for key, value in result.arrays.items():
        if key.startswith("grads/"):
            _, step, *path = key.split("/", 2)
            grads.setdefault(path[0] if path else "(root)", []).append((int(step), value))
        elif key == "weights" or key.startswith("weights/"):
            out[("weight", key[len("weights/"):] if key != "weights" else "(root)")] = value
    for leaf, steps in grads.items():
        out[("grad", leaf)] = np.concatenate([np.ravel(v) for _, v in sorted(steps, key=lambda s: s[0])])
    return out


def all_deviations(base: RunResult, run: RunResult, metric_names: Sequence[str],
                    name: str) -> list[Deviations]:
    a, b = quantities(base, metric_names), quantities(run, metric_names)
    out = []
    for q in list(a) + [q for q in b if q not in a]:
        key = tolerance_key(*q)
        if q not in a or q not in b:
            empty = np.zeros(0)
            what = "not in the baseline" if q not in a else "not logged"
            out.append(Deviations(key, empty, empty, empty.astype(bool),
                                  f"{q[0]} {q[1]} {what} under {name}"))
        else:
            out.append(deviations(key, a[q], b[q], f" ({q[0]} {q[1]} under {name})"))
    return out


# -- tolerances from what was observed -----------------------------------------------------------
@dataclass(frozen=True)
class ProposedTolerance:
    """The tolerance one block gets: every observed deviation passes at MARGIN × itself.
    `current` is what the spec applies now on the measured platform."""

    key: TolKey
    rtol: float
    atol: float
    max_abs: float = 0.0        # largest absolute deviation seen
    max_rel: float = 0.0        # largest relative deviation among non-negligible elements
    differing: int = 0          # elements that differed, over every variation
    problem: str = ""           # why no tolerance covers what was seen: not written
    current: Bounds | None = None
    scope: tuple[str, ...] = ()  # ("mesh",): a block of tolerance.mesh (calibrate --meshes)

    @property
    def label(self) -> str:
        return ".".join(self.scope + self.key)

    @property
    def at_floor(self) -> bool:
        return self.rtol == FLOOR.rtol and self.atol == FLOOR.atol


def round_up(x: float, digits: int = 2) -> float:
    """`x` rounded up to `digits` significant digits (a proposal never shrinks when written)."""
    if x <= 0:
        return x
    d = Decimal(repr(x))
    quantum = Decimal(1).scaleb(d.adjusted() - digits + 1)
    return float((d / quantum).to_integral_value(ROUND_CEILING) * quantum)


def propose_tolerance(key: TolKey, observed: Sequence[Deviations], floor: Bounds = FLOOR,
                      margin: float = MARGIN) -> ProposedTolerance:
    """The (rtol, atol) for one block from the deviations observed in it.

    atol first: `margin` × the largest deviation of the negligible elements (near zero, only an
    absolute bound makes sense there). Then rtol: the smallest that covers every other element
    at `margin` × its deviation given that atol, i.e. max((margin·|d| - atol) / |baseline|).
    Each is at least the floor and rounded up to two significant digits. Above the floor the
    tolerance is tight: at the element that set it, a deviation twice as large fails."""
    problem = next((o.problem for o in observed if o.problem), "")
    d = np.concatenate([o.abs_err for o in observed]) if observed else np.zeros(0)
    r = np.concatenate([o.magnitude for o in observed]) if observed else np.zeros(0)
    neg = np.concatenate([o.negligible for o in observed]).astype(bool) if observed else \
        np.zeros(0, dtype=bool)
    max_abs = float(d.max()) if d.size else 0.0
    rel = d[~neg] / r[~neg]
    max_rel = float(rel.max()) if rel.size else 0.0
    if problem:
        return ProposedTolerance(key, floor.rtol, floor.atol, max_abs, max_rel, int(d.size),
                                 problem)
    atol = max(floor.atol, margin * float(d[neg].max()) if neg.any() else 0.0)
    need = (margin * d[~neg] - atol) / r[~neg]
    rtol = max(floor.rtol, float(need.max()) if need.size else 0.0)
    return ProposedTolerance(key, round_up(rtol), round_up(atol), max_abs, max_rel, int(d.size))


@dataclass(frozen=True)
class Proposal:
    """The tolerances calibrate proposes, and what they were measured from."""

    tolerances: tuple[ProposedTolerance, ...]
    variations: int          # variation runs they cover (those that finished)
    platform: str            # the record platform key the runs had
    floor: Bounds = FLOOR
    margin: float = MARGIN
    negligible: float = NEGLIGIBLE
    kinds: tuple[str, ...] = TOLERATED    # the variation kinds they absorb


def resolved_bounds(tolerance: ToleranceSpec, key: TolKey, platform_key: str,
                    mesh: bool = False) -> Bounds:
    """What applies to one block now (`mesh`: when the mesh is the only difference)."""
    kind: QuantityKind = "metric" if key[0] == "metrics" else "grad" if key[0] == "grads" else \
        "weight"
    tol = resolve_tolerance(tolerance, kind, key[1] if len(key) > 1 else None, platform_key, mesh)
    return Bounds(tol["rtol"], tol["atol"])
