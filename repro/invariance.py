"""Parallelism invariance at record time (`record.invariance`, docs/sharding.md).

A spec that demands `record.invariance: {meshes: [[8, 1], [4, 2]]}` says its result must not
depend on how the devices are laid out beyond `tolerance.mesh` (else the spec's tolerances).
After the runs that make the record agree, `repro record` trains once more on each listed mesh
(the same devices, the same axis names, the same config and so the same global batch) and
compares every quantity with the recorded run. One beyond tolerance refuses the record, naming
the quantity, its first step and the two meshes; what was checked goes into the record.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from repro.compare import Comparison, compare_run
from repro.record import InvarianceInfo, MeshChecked
from repro.result import RunResult
from repro.spec import Spec
from repro.variation import Variation


def mesh_name(sizes: tuple[int, ...] | list[int]) -> str:
    """`8x1`: a mesh's sizes in the spec's axis order."""
    return "x".join(str(n) for n in sizes)


def mesh_words(axes: list[str], sizes: tuple[int, ...] | list[int]) -> str:
    """`{data: 8, model: 1}`: a mesh as the spec writes it."""
    return "{" + ", ".join(f"{a}: {n}" for a, n in zip(axes, sizes, strict=True)) + "}"


def mesh_variation(sizes: tuple[int, ...] | list[int]) -> Variation:
    return Variation(f"mesh={mesh_name(sizes)}", mesh=tuple(int(n) for n in sizes))


def compare_meshes(recorded: RunResult, other: RunResult, spec: Spec) -> Comparison:
    """The run on another mesh against the recorded run, within the spec's tolerances
    (tolerance.mesh where set: the mesh is the only environment difference)."""
    return compare_run(recorded, other.metrics, other.arrays, tolerance=spec.tolerance,
                       platform_key=recorded.platform_key, run_fingerprint=other.fingerprint,
                       metric_names=spec.record.metrics)


@dataclass
class InvarianceCheck:
    """What the invariance runs found: the record's part, and the first violation if any."""

    info: InvarianceInfo
    violation: Comparison | None = None
    message: str = ""


def check_invariance(spec: Spec, recorded: RunResult,
                     run_on: Callable[[Variation], RunResult]) -> InvarianceCheck | None:
    """Train on every mesh of record.invariance other than the spec's own and compare with
    `recorded`; None for a spec that demands none."""
    inv, env = spec.record.invariance, spec.environment
    if inv is None or not env.mesh:
        return None
    axes, own = list(env.mesh), [int(n) for n in env.mesh.values()]
    info = InvarianceInfo(axes=axes, recorded=own, checked=[])
    for sizes in inv.meshes:
        if list(sizes) == own:
            continue
        cmp = compare_meshes(recorded, run_on(mesh_variation(sizes)), spec)
        moved = [r for r in cmp.rows if r.max_abs != 0 or r.note or not r.ok]
        info.checked.append(MeshChecked(
            mesh=list(sizes), bitwise=not moved, moved=len(moved),
            max_abs=_finite(max((r.max_abs for r in moved), default=0.0)),
            max_rel=_finite(max((r.max_rel for r in moved), default=0.0))))
        if not cmp.ok:
            return InvarianceCheck(info, cmp, violation_message(cmp, axes, own, list(sizes)))
    return InvarianceCheck(info)


def violation_message(cmp: Comparison, axes: list[str], own: list[int], other: list[int]) -> str:
    from repro.noise import first_difference

    bad = first_difference(cmp)
    what = "" if bad is None else (
        f"{bad.label}" + (f" from step {bad.first_step}" if bad.first_step is not None else "")
        + (f" (max abs {bad.max_abs:.3g}, max rel {bad.max_rel:.3g}, tolerance rtol="
           f"{bad.rtol:g} atol={bad.atol:g})" if not bad.note else f" ({bad.note})"))
    # follows "compared within tolerance: " in the verdict
    return (f"tolerance.mesh, on each mesh record.invariance lists: the result depends on the "
            f"mesh: {what} differs between mesh "
            f"{mesh_words(axes, own)} (the spec's) and mesh {mesh_words(axes, other)} "
            f"({len(cmp.failures)} of {len(cmp.rows)} quantities beyond tolerance). Nothing was "
            "recorded. Measure the spread with `repro calibrate SPEC --meshes "
            f"{mesh_name(own)},{mesh_name(other)} --write` (sets tolerance.mesh) if it is "
            "rounding, or fix what ties the result to the layout")


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None
