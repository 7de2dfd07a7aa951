"""Rendering a `repro calibrate` result: the variation × quantity table, the proposed
tolerances, what --write did; and its JSON document. Rendering only: the numbers come from the
`Calibration`."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from repro.report.text import short_number, table

if TYPE_CHECKING:
    from repro.commands.calibrate import Calibration, VariationRun
    from repro.commands.calibstats import Bounds

CALIBRATION_FORMAT = 1


def progress_line(run: VariationRun, done: int, total: int) -> str:
    """One line as each run finishes."""
    if run.error is not None:
        what = "error: " + (run.error.splitlines() or [""])[0][:100]
    elif not run.rows:
        what = "done"
    elif run.differing:
        what = f"differs in {len(run.differing)} of {len(run.rows)} quantities"
    else:
        what = "bitwise"
    return f"[{done}/{total}] {run.name} ({run.duration_s:.1f} s): {what}"


def _bounds(b: Bounds | None) -> str:
    return "-" if b is None else f"rtol={b.rtol:g} atol={b.atol:g}"


def render_calibration(cal: Calibration, *, verbose: bool = False) -> str:
    """The whole text: header, one block per variation, proposed tolerances, what was written.
    Ends with a line end."""
    n = cal.quantities
    out = [f"repro calibrate {cal.spec} [{cal.platform}] on {cal.host.summary()}: "
           f"{len(cal.runs)} variations, -j {cal.jobs}, {cal.duration_s:.1f} s"]
    if cal.spec_path:
        out.append(f"  spec: {cal.spec_path}")
    base_isa = f", effective ISA {cal.baseline.effective_isa}" if cal.baseline.effective_isa else ""
    out.append(f"  baseline: the spec as pinned{base_isa} ({cal.baseline.duration_s:.1f} s); "
               "every variation is compared with it bitwise")
    out.append("")
    rows: list[list[str]] = []
    for run in cal.runs:
        if run.error is not None:
            rows.append([run.name, "error: " + (run.error.splitlines() or [""])[0], "", "", ""])
            continue
        shown = run.rows if verbose else run.differing
        if not run.differing:
            rows.append([run.name, f"bitwise on all {len(run.rows)} quantities", "", "", ""])
            if not verbose:
                continue
            shown = run.rows
        for i, r in enumerate(shown):
            rows.append([run.name if i == 0 and run.differing else "",
                         r.label, f"{r.n_out}/{r.n_total}" if not r.note else r.note,
                         short_number(r.max_abs), short_number(r.max_rel)])
        if run.differing and not verbose and len(run.rows) > len(run.differing):
            rows.append(["", f"({len(run.rows) - len(run.differing)} other quantities bitwise)",
                         "", "", ""])
    out.append(_matrix(rows) if rows else "No variation of the kinds asked for can run on "
               "this host.")
    if verbose:
        for run in cal.failed:
            if run.error_detail.strip():
                out += ["", f"{run.name}: {run.error}", run.error_detail.rstrip()]
    out.append("")
    if cal.breaking:
        out.append(f"Breaks bitwise: {', '.join(r.name for r in cal.breaking)}")
    elif cal.runs and not cal.failed:
        out.append(f"Every variation is bitwise identical to the baseline on all {n} quantities.")
    if cal.failed:
        out.append(f"Failed: {', '.join(r.name for r in cal.failed)}"
                   + ("" if verbose else " (-v shows their output)"))
    for why in cal.unavailable:
        out.append(f"  not varied here: {why}")
    if cal.proposal.tolerances:
        floor = cal.proposal.floor
        out += ["", f"Proposed tolerances (from the {cal.proposal.variations} "
                    f"{'/'.join(cal.proposal.kinds)} variations; floor rtol {floor.rtol:g}, "
                    f"atol {floor.atol:g}):"]
        body = []
        for t in cal.proposal.tolerances:
            proposed = "not proposed" if t.problem else _bounds_of(t.rtol, t.atol) + (
                "  (floor)" if t.at_floor else "")
            body.append([t.label, proposed, short_number(t.max_abs), short_number(t.max_rel),
                         _bounds(t.current) + (f"  {t.problem}" if t.problem else "")])
        out.append(_indent(table(body, ["tolerance", "proposed", "largest abs dev",
                                        "largest rel dev", "now"])))
        out.append(f"  each deviation d passes as {cal.proposal.margin:g}·|d| <= atol + "
                   "rtol·|baseline|; relative deviations count where |baseline|")
        out.append(f"  is at least {cal.proposal.negligible:g} × its quantity's largest: atol "
                   "covers the elements nearer zero")
    if cal.written is not None:
        out += ["", f"wrote tolerances to {cal.written.path}"]
        out += [f"  {key}: {_bounds(old)} -> {_bounds(new)}" for key, old, new in cal.written.changes]
        out += [f"  warning: {w}" for w in cal.written.warnings]
    elif cal.write_error is None and cal.proposal.tolerances:
        out.append("(repro calibrate --write sets them in the spec)")
    for note in cal.notes:
        out.append(f"  note: {note}")
    return "\n".join(out) + "\n"


def _bounds_of(rtol: float, atol: float) -> str:
    return f"rtol={rtol:g} atol={atol:g}"


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def _matrix(rows: list[list[str]]) -> str:
    """The variation × quantity table; a one-line verdict (bitwise on all, error) spans the
    columns after the variation instead of widening them."""
    header = ["variation", "quantity", "elements differ", "max abs err", "max rel err"]
    wide = [r for r in rows if not r[2] and not r[3]]
    cells = [r for r in rows if r not in wide] or [header]
    widths = [max(len(r[i]) for r in cells + [header]) for i in range(len(header))]
    widths[0] = max(len(r[0]) for r in rows + [header])

    def fmt(r: list[str]) -> str:
        if r in wide:
            return f"{r[0].ljust(widths[0])}  {r[1]}".rstrip()
        return "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def calibration_json(cal: Calibration) -> dict[str, Any]:
    """The machine-readable result (docs/calibrate.md)."""
    def plain(x: float) -> float | str:
        return x if x == x and x not in (float("inf"), float("-inf")) else str(x)

    def bounds(b: Bounds | None) -> dict[str, float] | None:
        return None if b is None else {"rtol": b.rtol, "atol": b.atol}

    def run_doc(run: VariationRun) -> dict[str, Any]:
        v = run.variation
        return {"name": run.name, "kind": run.kind,
                "status": "error" if run.error is not None else "bitwise" if run.bitwise
                else "differs",
                "isa": v.isa, "cpus": v.cpus, "compile_cache": v.compile_cache,
                "hash_seed": v.hash_seed, "listing_order": v.listing_order,
                "effective_isa": run.effective_isa, "duration_s": round(run.duration_s, 3),
                "error": run.error, "error_detail": run.error_detail or None,
                "quantities": [{"kind": r.kind, "name": r.name, "label": r.label,
                                "bitwise": r.ok, "elements_differ": r.n_out,
                                "elements": r.n_total, "max_abs": plain(r.max_abs),
                                "max_rel": plain(r.max_rel), "note": r.note or None}
                               for r in run.rows]}

    return {
        "format": CALIBRATION_FORMAT, "spec": cal.spec, "spec_path": cal.spec_path,
        "platform": cal.platform, "mode": cal.mode, "jobs": cal.jobs,
        "duration_s": round(cal.duration_s, 3),
        "host": {"machine": cal.host.machine, "best_isa": cal.host.best_isa,
                 "cores": cal.host.cores, "model": cal.host.model},
        "baseline": {"effective_isa": cal.baseline.effective_isa,
                     "duration_s": round(cal.baseline.duration_s, 3)},
        "variations": [run_doc(r) for r in cal.runs],
        "breaking": [r.name for r in cal.breaking],
        "failed": [r.name for r in cal.failed],
        "unavailable": cal.unavailable,
        "proposal": {"margin": cal.proposal.margin, "negligible": cal.proposal.negligible,
                     "floor": bounds(cal.proposal.floor),
                     "variations": cal.proposal.variations, "kinds": list(cal.proposal.kinds),
                     "tolerances": [{"key": t.label, "rtol": t.rtol, "atol": t.atol,
                                     "at_floor": t.at_floor, "max_abs": plain(t.max_abs),
                                     "max_rel": plain(t.max_rel),
                                     "elements_differ": t.differing,
                                     "problem": t.problem or None,
                                     "current": bounds(t.current)}
                                    for t in cal.proposal.tolerances]},
        "written": None if cal.written is None else {
            "path": str(cal.written.path),
            "changes": [{"key": k, "before": bounds(a), "after": bounds(b)}
                        for k, a, b in cal.written.changes],
            "warnings": list(cal.written.warnings)},
        "write_error": cal.write_error,
        "notes": cal.notes,
    }
