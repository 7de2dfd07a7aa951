"""What `ctx.traced` tells a verify (docs/localisation.md): which programs changed since the
record (a strong cause when code changed; "programs unchanged" when only numbers moved), and on
a failure the first diverging op of the first traced step that differs. Pure functions over the
recorded and the current `TraceInfo` and their kept op values."""
from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from repro.record import ProgramPrint, Record, TracedFunction, TraceInfo
from repro.result import RunResult
from repro.verdict import FAIL, Change, Localisation, Verdict


def attach_traces(v: Verdict, rec: Record, result: RunResult) -> None:
    """Add program changes, `programs_unchanged` and (on a failure) the localisation to `v`."""
    recorded, current = rec.meta.traced, result.traced
    if recorded is None or current is None:
        if recorded is not None:
            v.notes.append("the record has ctx.traced programs; this run traced none")
        return
    changes, compared = program_changes(recorded, current)
    v.changes[:0] = changes
    moved = ("program ", "shardings of program ")
    v.programs_unchanged = bool(compared) and not any(c.numeric and c.key.startswith(moved) for c in changes)
    if v.status != FAIL:
        return
    v.localisation = first_diverging_op(recorded, rec.arrays, current, result.arrays)
    if v.localisation is None and any(f.steps for f in current.functions):
        v.notes.append("ctx.traced: every op of the traced steps both runs share is bitwise as "
                       "recorded; the difference arises outside them")


def _pairs(a: TraceInfo, b: TraceInfo) -> list[tuple[TracedFunction, TracedFunction]]:
    """Traced functions of both, paired by call order and name."""
    return [(fa, fb) for fa, fb in zip(a.functions, b.functions) if fa.name == fb.name]


def program_changes(a: TraceInfo, b: TraceInfo) -> tuple[list[Change], int]:
    """Changes between recorded and current programs, and how many programs were compared."""
    out: list[Change] = []
    compared = 0
    names_a, names_b = [f.name for f in a.functions], [f.name for f in b.functions]
    if names_a != names_b:
        out.append(Change("code", "traced functions", names_a, names_b))
    for fa, fb in _pairs(a, b):
        by_inputs = {p.inputs: p for p in fa.programs}
        for pb in fb.programs:
            pa = by_inputs.get(pb.inputs)
            if pa is None:
                continue
            compared += 1
            if pa.shardings != pb.shardings:   # a resharded program: named by its layout
                moved = [f"{x} -> {y.split(': ', 1)[-1]}" for x, y in zip(pa.shardings or [], pb.shardings or [])
                         if x != y]
                out.append(Change("sharding", f"shardings of program {fb.name}",
                                  "sharded" if pa.shardings else "one device",
                                  "sharded" if pb.shardings else "one device",
                                  detail="; ".join(moved[:4]) or "a different number of sharded "
                                  "inputs/outputs"))
            elif pa.jaxpr_sha256 != pb.jaxpr_sha256 or pa.hlo_sha256 != pb.hlo_sha256:
                out.append(Change("code", f"program of {fb.name}", f"{pa.eqns} equations",
                                  f"{pb.eqns} equations", detail=_first_program_difference(pa, pb, a, b)))
            elif pa.compiled_sha256 != pb.compiled_sha256:
                out.append(Change("environment", f"compiled program of {fb.name}", pa.compiled_sha256[:12],
                                  pb.compiled_sha256[:12],
                                  detail="same jaxpr and lowered HLO: the compiler or its target moved"))
    return out, compared


def _first_program_difference(pa: ProgramPrint, pb: ProgramPrint, a: TraceInfo, b: TraceInfo) -> str:
    ka = [(op[0], op[1], op[2]) for op in pa.ops]
    kb = [(op[0], op[1], op[2]) for op in pb.ops]
    for tag, i1, i2, j1, _j2 in difflib.SequenceMatcher(None, ka, kb, autojunk=False).get_opcodes():
        if tag == "equal":
            continue
        if j1 < len(pb.ops):
            op = pb.ops[j1]
            was = f"{pa.ops[i1][0]}" if i1 < i2 else "nothing"
            return f"first difference at {_source(b, op[3])}: {op[0]} {op[1]} (recorded: {was})"
        op = pa.ops[i1]
        return f"first difference: recorded {op[0]} at {_source(a, op[3])} is gone"
    return "same equations; the jaxpr or HLO text differs elsewhere (names, layout, jax version)"


def _source(trace: TraceInfo, index: int) -> str:
    return trace.sources[index] if 0 <= index < len(trace.sources) else "?"


def first_diverging_op(a: TraceInfo, a_arrays: Mapping[str, Any], b: TraceInfo,
                       b_arrays: Mapping[str, Any]) -> Localisation | None:
    """The first op (earliest traced step, then position) whose output differs from the record."""
    found: list[tuple[int, int, Localisation]] = []
    for fa, fb in _pairs(a, b):
        for step in sorted(set(fa.steps) & set(fb.steps), key=int):
            loc = _step_divergence(fa, fb, step, a, a_arrays, b, b_arrays)
            if loc is not None:
                found.append((int(step), fb.index, loc))
                break
    return min(found, key=lambda t: (t[0], t[1]))[2] if found else None


def _step_divergence(fa: TracedFunction, fb: TracedFunction, step: str, a: TraceInfo,
                     a_arrays: Mapping[str, Any], b: TraceInfo, b_arrays: Mapping[str, Any]
                     ) -> Localisation | None:
    ops_a, ops_b = fa.steps[step], fb.steps[step]
    ka, kb = [(o[0], o[1]) for o in ops_a], [(o[0], o[1]) for o in ops_b]
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, ka, kb, autojunk=False).get_opcodes():
        if tag == "equal":
            for i, j in zip(range(i1, i2), range(j1, j2)):
                if ops_a[i][2] != ops_b[j][2]:
                    return _value_divergence(fa, fb, step, i, j, a_arrays, b, b_arrays)
            continue
        j = min(j1, len(ops_b) - 1)
        op = ops_b[j] if ops_b else ops_a[i1]
        shown = ops_a[i1:i2][:3]
        recorded = ", ".join(f"{o[0]} {o[1]} at {_source(a, o[3])}" for o in shown) + \
            (" …" if i2 - i1 > 3 else "")
        src = _source(b, op[3]) if ops_b else _source(a, op[3])
        return Localisation("structure", fb.name, int(step), j, len(ops_b), op[0], op[1], src,
                            recorded=recorded if tag != "insert" else "nothing (an op was added)")
    return None


def _value_divergence(fa: TracedFunction, fb: TracedFunction, step: str, i: int, j: int,
                      a_arrays: Mapping[str, Any], b: TraceInfo, b_arrays: Mapping[str, Any]
                      ) -> Localisation:
    import numpy as np

    op_a, op_b = fa.steps[step][i], fb.steps[step][j]
    loc = Localisation("value", fb.name, int(step), j, len(fb.steps[step]), op_b[0], op_b[1],
                       _source(b, op_b[3]))
    va, vb = a_arrays.get(f"trace/{fa.index}/{step}/{i}"), b_arrays.get(f"trace/{fb.index}/{step}/{j}")
    if va is None or vb is None or op_a[4] != op_b[4] or np.shape(va) != np.shape(vb):
        return loc
    x, y = np.asarray(va, dtype=np.float64), np.asarray(vb, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        diff = np.abs(x - y)
        rel = diff / np.maximum(np.abs(x), np.finfo(np.float64).tiny)
    loc.max_abs = float(np.nanmax(diff)) if diff.size else 0.0
    loc.max_rel = float(np.nanmax(rel)) if rel.size else 0.0
    loc.sampled = max(1, int(op_b[4]))
    return loc
