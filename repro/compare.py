"""Compare a run with its record: pure functions from (record, run, tolerances) to rows.

Every quantity — each metric trajectory, each kept-gradient leaf (over all kept steps), each
final-weight leaf — becomes one `QuantityResult` holding the numbers that decide it: first
diverging step, max absolute and relative error, the tolerance applied and how many elements
were out. Closeness is elementwise `|run - record| <= atol + rtol * |record|`; bitwise means the
same dtype, shape and bytes (NaN payloads included).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
from typing_extensions import TypedDict

from repro.env.fingerprint import NUMERIC_FIELDS, SLICE_SAFE_K, Fingerprint, describe_kernel, describe_mesh
from repro.record import MetricSeries
from repro.spec import PlatformTolerance, Tol, ToleranceSpec
from repro.verdict import QuantityKind, QuantityResult


class Recorded(Protocol):
    """The recorded side of a comparison (a `repro.record.Record`). No fingerprint: the record
    was imported (its environment unknown), so it is compared within tolerance."""

    @property
    def fingerprint(self) -> Fingerprint | None: ...

    @property
    def metrics(self) -> Mapping[str, MetricSeries]: ...

    @property
    def arrays(self) -> Mapping[str, np.ndarray]: ...



class Tolerance(TypedDict):
    """|run - record| <= atol + rtol * |record|, elementwise."""

    rtol: float
    atol: float


FALLBACK: Tolerance = {"rtol": 1e-6, "atol": 1e-8}


@dataclass
class Comparison:
    rows: list[QuantityResult] = field(default_factory=list)
    bitwise: bool = False
    reason: str = ""

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)

    @property
    def failures(self) -> list[QuantityResult]:
        return [r for r in self.rows if not r.ok]


def resolve_tolerance(tol_spec: ToleranceSpec, kind: QuantityKind, name: str | None,
                      platform_key: str, mesh: bool = False) -> Tolerance:
    """rtol/atol for one quantity. Later layers override earlier ones field by field:
    built-in fallback < `default` < the quantity's block (`grads`, `weights`, `metrics.<name>`)
    < `platforms.<key>` (its rtol/atol, then its default, then its quantity block) < with `mesh`
    (the mesh is the only environment difference) `tolerance.mesh`, layered the same way."""
    out: Tolerance = {"rtol": FALLBACK["rtol"], "atol": FALLBACK["atol"]}

    def overlay(block: Tol | None) -> None:
        if block is not None:
            if block.rtol is not None:
                out["rtol"] = float(block.rtol)
            if block.atol is not None:
                out["atol"] = float(block.atol)

    def quantity_block(t: ToleranceSpec | PlatformTolerance) -> Tol | None:
        if kind == "metric":
            return t.metrics.get(name) if name is not None else None
        return t.grads if kind == "grad" else t.weights   # a state's tolerance is the weights'

    overlay(tol_spec.default)
    overlay(quantity_block(tol_spec))
    plat = tol_spec.platforms.get(platform_key)
    if plat is not None:
        overlay(plat)
        overlay(plat.default)
        overlay(quantity_block(plat))
    if mesh and tol_spec.mesh is not None:
        overlay(tol_spec.mesh)
        overlay(tol_spec.mesh.default)
        overlay(quantity_block(tol_spec.mesh))
    return out


def mesh_only(recorded_fp: Fingerprint | None, run_fp: Fingerprint | None) -> bool:
    """Is the mesh the only numeric environment difference? Then tolerance.mesh applies."""
    if recorded_fp is None or run_fp is None:
        return False
    return numeric_fingerprint_equal(recorded_fp, run_fp)[1] == ["mesh"]


def numeric_fingerprint_equal(a: Fingerprint, b: Fingerprint) -> tuple[bool, list[str]]:
    """Do two fingerprints agree on every field that decides the arithmetic?"""
    from repro.env.isa import effective_of

    def value(fp: Fingerprint, key: str) -> Any:
        return effective_of(fp) if key == "effective_isa" else getattr(fp, key)
    # l1d_cache: None where no contraction is sliced by it; a record made before repro read its
    # programs has no such key, so a run whose programs slice by it cannot claim its bits
    differ = [k for k in NUMERIC_FIELDS if value(a, k) != value(b, k)]
    return not differ, differ


NO_FINGERPRINT = ("the record has no environment fingerprint (it was imported, not made by "
                  "repro), so nothing says this environment computes its bits")


def choose_bitwise(mode: str, recorded_fp: Fingerprint | None, run_fp: Fingerprint | None
                   ) -> tuple[bool, str]:
    """Bitwise or within tolerance, and why. A side without a fingerprint (an imported record)
    is always compared within tolerance, whatever the mode: bitwise needs the same environment,
    and nothing says what that side's was."""
    if recorded_fp is None or run_fp is None:
        return False, NO_FINGERPRINT
    if mode == "exact":
        return True, "tolerance.mode is exact"
    if mode == "close":
        return False, "tolerance.mode is close"
    same, differ = numeric_fingerprint_equal(recorded_fp, run_fp)
    if same:
        return True, _what_was_equal(recorded_fp, run_fp)
    return False, "the environment differs from the record's: " + "; ".join(
        _field_change(k, recorded_fp, run_fp) for k in differ)


def _field_change(key: str, a: Fingerprint, b: Fingerprint) -> str:
    from repro.env.isa import effective_of

    if key == "settings" and a.settings is not None and b.settings is not None:
        sa, sb = a.settings, b.settings
        keys = [k for k in sorted(set(sa) | set(sb)) if sa.get(k) != sb.get(k)]
        return "settings " + ", ".join(keys)
    if key == "effective_isa":
        why = _unpinned(b) or _unpinned(a)
        return f"effective ISA {effective_of(a)} -> {effective_of(b)}" + (
            f" ({why})" if why else "")
    if key == "l1d_cache":
        was = "not known to the record" if a.l1d_cache is None else f"{a.l1d_cache} bytes"
        now = "not used" if b.l1d_cache is None else f"{b.l1d_cache} bytes"
        return (f"L1 data cache {was} -> {now} (the programs sum contractions longer than "
                f"{SLICE_SAFE_K} in slices sized by it)")
    if key == "mesh":
        return f"mesh {describe_mesh(a.mesh)} -> {describe_mesh(b.mesh)}"
    return f"{key} {a.json_value(key)} -> {b.json_value(key)}"


def _unpinned(fp: Fingerprint) -> str:
    """The library kernels of a fingerprint that nothing pins, named."""
    loose = [describe_kernel(k) for k in fp.kernels or () if not k.pinned]
    return "kernels the CPU chooses: " + ", ".join(loose[:3]) if loose else ""


def _what_was_equal(a: Fingerprint, b: Fingerprint) -> str:
    """What `auto` found equal, said plainly (not "the fingerprint": the hosts may differ)."""
    from repro.env.isa import effective_of, host_best

    isa = effective_of(b)
    text = (f"jax {b.jax}, jaxlib {b.jaxlib}, numpy {b.numpy}, "
            f"{b.device_kind} ×{b.device_count}{f' (mesh {describe_mesh(b.mesh)})' if b.mesh else ''}, "
            f"{b.cpus} core(s), effective ISA "
            f"{isa}, the determinism settings and the PRNG canary equal the record's")
    if b.l1d_cache:
        text += f", L1 data cache {b.l1d_cache} bytes"
    best_a, best_b = (host_best(fp.cpu_isa or ()) for fp in (a, b))
    if best_a != best_b:
        text += f" (recorded where the CPU's best ISA is {best_a}, run where it is {best_b}"
        text += ": every library kernel pinned)" if b.kernels is not None else ")"
    if a.kernels is None and b.kernels is not None:
        text += "; the record does not list its library kernels (made before repro read them)"
    return text


def compare_arrays(kind: QuantityKind, name: str, recorded: np.ndarray, current: np.ndarray, *,
                   bitwise: bool, tol: Tolerance, steps: list[int] | None = None) -> QuantityResult:
    """One quantity. With `steps`, axis 0 indexes steps and first_step names the first bad one."""
    row = QuantityResult(kind, name, ok=True, bitwise=bitwise, rtol=tol["rtol"], atol=tol["atol"],
                         n_total=int(np.size(recorded)))
    if recorded.shape != current.shape:
        row.ok, row.note = False, f"shape {current.shape} != recorded {recorded.shape}"
        return row
    if bitwise and recorded.dtype != current.dtype:
        row.ok, row.note = False, f"dtype {current.dtype} != recorded {recorded.dtype}"
        return row
    if recorded.dtype.kind not in "fciub" or current.dtype.kind not in "fciub":
        row.ok, row.note = False, f"cannot compare dtype {current.dtype}"
        return row
    a = recorded.astype(np.float64) if recorded.dtype.kind != "c" else recorded.astype(np.complex128)
    b = current.astype(a.dtype)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        diff = np.abs(b - a)
        both_nan = np.isnan(a) & np.isnan(b)
        same_inf = np.isinf(a) & (a == b)
        diff = np.where(both_nan | same_inf, 0.0, diff)
        diff = np.where(np.isnan(diff), np.inf, diff)
        rel = np.where(diff == 0, 0.0, diff / np.abs(a))
        rel = np.where(np.isnan(rel), np.inf, rel)  # inf/inf, x/nan: out, not 'nan'
    if bitwise:
        bad = _bitwise_unequal(recorded, current)
    else:
        bad = diff > tol["atol"] + tol["rtol"] * np.abs(np.where(np.isfinite(a), a, 0))
    row.n_out = int(np.count_nonzero(bad))
    row.ok = row.n_out == 0
    if diff.size:
        row.max_abs = float(np.max(diff))
        row.max_rel = float(np.max(rel))
    if not row.ok and steps is not None:
        per_step = bad.reshape(bad.shape[0], -1).any(axis=1) if bad.ndim else np.array([bool(bad)])
        row.first_step = int(steps[int(np.argmax(per_step))])
    return row


def _bitwise_unequal(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.dtype.itemsize in (1, 2, 4, 8) and a.dtype == b.dtype:
        view = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize]
        return np.asarray(np.ascontiguousarray(a).view(view) != np.ascontiguousarray(b).view(view),
                          dtype=bool)
    return np.asarray(a != b, dtype=bool)


def metric_array(series: MetricSeries) -> np.ndarray:
    """A logged trajectory as an array of its own float dtype (non-finite values are stored as
    strings such as 'nan'; float() reads them back)."""
    dtype = np.dtype(series.get("dtype", "float64"))
    return np.asarray([float(v) for v in series["values"]],
                      dtype=dtype if dtype.kind == "f" else np.float64)


def compare_run(recorded: Recorded, run_metrics: Mapping[str, MetricSeries],
                run_arrays: Mapping[str, np.ndarray], *, tolerance: ToleranceSpec,
                platform_key: str, run_fingerprint: Fingerprint | None,
                metric_names: list[str] | None) -> Comparison:
    """Compare everything a spec records. `tolerance` is the spec's tolerance block;
    `recorded` is a `repro.record.Record` (or anything with its fingerprint, metrics, arrays)."""
    bitwise, reason = choose_bitwise(tolerance.mode, recorded.fingerprint,
                                     run_fingerprint)
    out = Comparison(bitwise=bitwise, reason=reason)
    mesh = not bitwise and mesh_only(recorded.fingerprint, run_fingerprint)
    if mesh and tolerance.mesh is not None:
        out.reason += " (the mesh alone: tolerance.mesh applies)"
    rec_metrics, record_arrays = recorded.metrics, recorded.arrays
    names = metric_names if metric_names is not None else sorted(set(rec_metrics) | set(run_metrics))
    for name in names:
        tol = resolve_tolerance(tolerance, "metric", name, platform_key, mesh)
        a, b = rec_metrics.get(name), run_metrics.get(name)
        if a is None or b is None:
            out.rows.append(QuantityResult("metric", name, ok=False, bitwise=bitwise, **tol,
                            note="not in the record" if a is None else "not logged by the run"))
            continue
        if a["steps"] != b["steps"]:
            first = next((x for x, y in zip(a["steps"], b["steps"]) if x != y),
                         min(len(a["steps"]), len(b["steps"])))
            out.rows.append(QuantityResult(
                "metric", name, ok=False, bitwise=bitwise, **tol,
                note=f"logged steps differ: record has {len(a['steps'])}, run has "
                     f"{len(b['steps'])} (first difference at position {first})"))
            continue
        out.rows.append(compare_arrays("metric", name, metric_array(a), metric_array(b),
                                       bitwise=bitwise, tol=tol, steps=a["steps"]))
    out.rows += _compare_leaves("grad", record_arrays, run_arrays, tolerance, platform_key, bitwise,
                                mesh)
    out.rows += _compare_leaves("weight", record_arrays, run_arrays, tolerance, platform_key, bitwise,
                                mesh)
    out.rows += _compare_leaves("state", record_arrays, run_arrays, tolerance, platform_key, bitwise,
                                mesh)
    return out


def _compare_leaves(kind: Literal["grad", "weight", "state"], rec: Mapping[str, np.ndarray],
                    run: Mapping[str, np.ndarray], tolerance: ToleranceSpec, platform_key: str,
                    bitwise: bool, mesh: bool = False) -> list[QuantityResult]:
    prefix = {"grad": "grads/", "weight": "weights", "state": "checkpoints/"}[kind]
    tol = resolve_tolerance(tolerance, kind, None, platform_key, mesh)
    rows: list[QuantityResult] = []
    if kind == "weight":
        keys = _ordered([k for k in rec if k.startswith(prefix)], [k for k in run if k.startswith(prefix)])
        for key in keys:
            leaf = key[len("weights/"):] if key != "weights" else "(root)"
            if key not in rec or key not in run:
                rows.append(QuantityResult(kind, leaf, ok=False, bitwise=bitwise, **tol,
                            note="not in the record" if key not in rec else "not returned by the run"))
            else:
                rows.append(compare_arrays(kind, leaf, rec[key], run[key], bitwise=bitwise, tol=tol))
        return rows
    # gradients and checkpointed states: group by leaf path across kept steps
    def by_leaf(arrays: Mapping[str, np.ndarray]) -> dict[str, dict[int, np.ndarray]]:
        out: dict[str, dict[int, np.ndarray]] = {}
        for key, value in arrays.items():
            if key.startswith(prefix):
                _, step, *path = key.split("/", 2)
                out.setdefault(path[0] if path else "(root)", {})[int(step)] = value
        return out
    a, b = by_leaf(rec), by_leaf(run)
    for leaf in _ordered(list(a), list(b)):
        if leaf not in a or leaf not in b:
            rows.append(QuantityResult(kind, leaf, ok=False, bitwise=bitwise, **tol,
                        note="not in the record" if leaf not in a else "not logged by the run"))
            continue
        if sorted(a[leaf]) != sorted(b[leaf]):
            rows.append(QuantityResult(kind, leaf, ok=False, bitwise=bitwise, **tol,
                        note=f"kept steps differ: record {_steps(a[leaf])}, run {_steps(b[leaf])}"))
            continue
        steps = sorted(a[leaf])
        try:
            ra, rb = np.stack([a[leaf][s] for s in steps]), np.stack([b[leaf][s] for s in steps])
        except ValueError:
            rows.append(QuantityResult(kind, leaf, ok=False, bitwise=bitwise, **tol,
                                       note="leaf shape changes between steps"))
            continue
        # a state's integers, booleans and strings (counters, RNG states, keys) are exact: a
        # tolerance on a 64-bit RNG word would hide a different random stream
        exact = bitwise or (kind == "state" and ra.dtype.kind not in "fc")
        rows.append(compare_arrays(kind, leaf, ra, rb, bitwise=exact, tol=tol, steps=steps))
    return rows


def _steps(by_step: Mapping[int, object]) -> str:
    steps = sorted(by_step)
    return str(steps) if len(steps) <= 6 else str(steps[:6])[:-1] + ", …]"


def _ordered(first: list[str], second: list[str]) -> list[str]:
    """Union keeping the record's (pytree) order, then the run's extra keys."""
    seen = dict.fromkeys(first)
    seen.update(dict.fromkeys(second))
    return list(seen)
