"""Rendering verdicts for people: the terminal table a failure shows, and one-line summaries.

Rendering only; the numbers come from the Verdict. Kept free of pytest and argparse so that the
plugin, the CLI and the audit print the same text.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from repro.verdict import ERROR, FAIL, PASS, RAN, RECORDED, QuantityResult, Status, Verdict

if TYPE_CHECKING:
    from repro.commands.audit import Audit

MAX_ROWS = 15


def short_number(x: float) -> str:
    if x == 0:
        return "0"
    if x != x or x in (float("inf"), float("-inf")):
        return str(x)
    return f"{x:.3g}"


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]

    def fmt(r: list[str]) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def summary_line(v: Verdict) -> str:
    word = {PASS: "PASS", FAIL: "FAIL", ERROR: "ERROR", RECORDED: "RECORDED", RAN: "RAN",
            Status.SKIPPED: "SKIP"}[v.status]
    parts = [f"{word} {v.name}"]
    if v.platform:
        parts.append(f"[{v.platform}]")
    if v.status == PASS:
        parts.append("bitwise identical" if v.bitwise else "within tolerance")
        seg = f", {len(v.segments.outcomes)} of {v.segments.total} segments" if v.segments else ""
        parts.append(f"({len(v.rows)} quantities{seg})")
    elif v.status == FAIL:
        first = v.first_divergence
        if v.fail_class:
            parts.append(f"({v.fail_class})")
        parts.append(f"{len(v.failures)} of {len(v.rows)} quantities out of tolerance")
        if v.stopped is not None:
            parts.append(f"(stopped at step {v.stopped.step} of {v.stopped.of}, fail-fast)")
        if first is not None:
            where = f" at step {first.first_step}" if first.first_step is not None else ""
            parts.append(f"— first: {first.label}{where}")
    elif v.status == RECORDED:
        parts.append(f"-> {v.record_path}")
    elif v.status in (ERROR, Status.SKIPPED):
        parts.append("— " + v.error.splitlines()[0] if v.error else "")
    return " ".join(p for p in parts if p)


def render(v: Verdict, *, verbose: bool = False) -> str:
    """The full text for one verdict: what was compared, the table, what changed, notes.
    Ends with a line end, like any text a program prints."""
    out = [summary_line(v) if v.status != ERROR else f"ERROR {v.name}"]
    if v.spec_path:
        out.append(f"  spec:   {v.spec_path}")
    if v.code:
        out.append(f"  code:   {v.code}")
    if v.record_path and v.status != RECORDED:
        out.append(f"  record: {v.record_path}")
    if v.status == ERROR:
        out.append("")
        out.append(v.error)
        if v.error_detail:
            out.append("")
            out.append(v.error_detail.rstrip())
    if v.stopped is not None:
        out.append(f"  {v.stopped.text()}")
    if v.segments is not None:
        out.append(f"  {v.segments.text()}")
        if verbose:
            out += [f"    {o.text()} " + ("(continued from the segment before, in its run)" if o.continued
                                           else f"({o.duration_s:.1f} s)") for o in v.segments.outcomes]
    if v.restart is not None:
        out += ["  " + line for line in v.restart.text().splitlines()]
    if v.rows and (v.status != PASS or verbose):
        out.append(f"  compared {'bitwise' if v.bitwise else 'within tolerance'}: {v.mode_reason}")
        rows = v.failures if (v.status == FAIL and not verbose) else v.rows
        spread = any(r.spread is not None for r in rows)
        body = [[r.label, "-" if r.first_step is None else str(r.first_step), short_number(r.max_abs),
                 short_number(r.max_rel)] + ([_multiple(r)] if spread else []) +
                [r.tolerance_text, f"{r.n_out}/{r.n_total}" + (f"  {r.note}" if r.note else "")]
                for r in rows[:MAX_ROWS]]
        out.append("")
        out.append(table(body, ["quantity", "first step", "max abs err", "max rel err"] +
                         (["x recorded spread"] if spread else []) + ["tolerance", "out"]))
        if len(rows) > MAX_ROWS:
            out.append(f"… and {len(rows) - MAX_ROWS} more")
        if v.status == FAIL and not verbose and len(v.rows) > len(rows):
            out.append(f"({len(v.rows) - len(rows)} other quantities within tolerance)")
    if v.metrics_final and v.status in (RAN, RECORDED):
        out.append("  final metrics: " + ", ".join(f"{k}={_fmt_metric(x)}"
                                                   for k, x in sorted(v.metrics_final.items())))
    if v.timings.get("train_s") is not None and (v.status in (RAN, RECORDED) or verbose):
        early = v.timings.get("waited_for_job_s")   # repro/backends/prestart.py
        out.append(f"  training took {v.timings['train_s']:.2f} s "
                   f"(process {v.timings.get('total_s', 0):.2f} s)" +
                   (f"; the process started while repro loaded and waited {early:.2f} s for its job"
                    if early is not None else ""))
    if v.status == FAIL and v.fail_class:
        out.append("")
        out += class_lines(v)
    if v.status == FAIL and v.localisation is not None:
        out.append(f"  first diverging op: {v.localisation.text()}")
    if v.status == FAIL and v.programs_unchanged:
        out.append("  programs unchanged: every ctx.traced program has its recorded jaxpr and HLO")
    numeric = [c for c in v.changes if c.numeric]
    info = [c for c in v.changes if not c.numeric]
    if v.status == FAIL or (v.changes and verbose):
        out.append("")
        if numeric:
            out.append("What changed since the record (likely causes first):")
            out += [f"  {c.what:<12} {c.text()}" for c in numeric]
        elif v.status == FAIL and not v.fail_class:
            out.append("No pin, spec key or environment fact that decides the numbers changed "
                       "since the record.")
        if info:
            out.append("Also different (does not change the numbers):")
            out += [f"  {c.what:<12} {c.text()}" for c in info]
    elif v.status == PASS and numeric:
        out.append("  changed since the record: " + "; ".join(c.text() for c in numeric[:5]))
    for note in v.notes:
        out.append(f"  note: {note}")
    return "\n".join(out) + "\n"


def class_lines(v: Verdict) -> list[str]:
    """What kind of failure this is and the evidence (repro/confirm.py, repro/noise.py)."""
    from repro.noise import CAUSES

    c = v.confirmation
    if v.fail_class == "nondeterministic":
        if c is None:   # record time: the runs that were to make the record disagreed
            return ["Class: nondeterministic (the runs from the same pins differ; see above)"]
        return [f"Class: nondeterministic: run again from the same pins, the training gave other "
                f"bits than the first time (first at {c.first_difference}). The record may be "
                f"right; the training is not deterministic. Usual causes: {CAUSES}."]
    if v.fail_class == "mesh-dependent":   # record.invariance (repro/invariance.py)
        return ["Class: mesh-dependent: the same training on another mesh of the same devices "
                "moved beyond tolerance (see above); nothing was recorded."]
    if c is None:
        return ["Class: changed: a pin, spec key or environment fact that decides the numbers "
                "changed since the record (below)."]
    lines = [f"Class: changed: {c.runs + 1} runs from the same pins agree bitwise with each "
             "other but not with the record, so the training is deterministic and an input that "
             "no pin covers changed."]
    if c.candidates:
        lines.append("Candidates (inputs no pin covers that differ from the recorded run's):")
        lines += [f"  {x}" for x in c.candidates]
    else:
        lines.append("Candidates: none found. No unpinned input the record knows differs from the "
                     "recorded run's: look for inputs repro cannot see (the network, the clock, "
                     "files opened by C code, a CPU the environment fingerprint does not tell apart).")
    if c.unknown:
        lines.append("Not known to the record (no hash kept, so not evidence):")
        lines += [f"  {x}" for x in c.unknown[:10]]
        if len(c.unknown) > 10:
            lines.append(f"  … and {len(c.unknown) - 10} more")
    return lines


def _multiple(r: QuantityResult) -> str:
    """The error as a multiple of the spread the record's runs showed (mode close)."""
    m = r.spread_multiple
    if m is None:
        return "-"
    return f"{short_number(m)}x (spread {short_number(r.spread or 0.0)})"


def _fmt_metric(x: object) -> str:
    return f"{x:.6g}" if isinstance(x, float) else str(x)


def verdict_detail(v: Verdict) -> str:
    if v.status == FAIL and v.first_divergence is not None:
        r = v.first_divergence
        where = f" at step {r.first_step}" if r.first_step is not None else ""
        cls = f"{v.fail_class}: " if v.fail_class else ""
        stop = f" (stopped at step {v.stopped.step} of {v.stopped.of})" if v.stopped else ""
        return f"{cls}{r.label}{where}, max rel err {short_number(r.max_rel)}{stop}"
    if v.status == ERROR:
        return (v.error.splitlines() or [""])[0][:100]
    if v.status == PASS:
        return "bitwise" if v.bitwise else "within tolerance"
    return ""


def progress_line(v: Verdict, done: int, total: int, width: int = 20) -> str:
    """One line per finished spec: a bar, the count, the status and why."""
    filled = round(width * done / total)
    bar = "#" * filled + "-" * (width - filled)
    word = {PASS: "PASS", FAIL: "FAIL", ERROR: "ERROR"}.get(v.status, v.status.upper())
    return f"[{bar}] {done}/{total} {word:<5} {v.name} ({v.duration_s:.1f} s) {verdict_detail(v)}"


def audit_summary(audit: Audit) -> str:
    """The table printed at the end of an audit."""
    rows = [[v.name, v.status, f"{v.duration_s:.1f} s", verdict_detail(v)] for v in audit.verdicts]
    counts = audit.counts()
    head = (f"repro audit of {audit.directory}: {counts['pass']} pass, {counts['fail']} fail, "
            f"{counts['error']} error"
            f"{f', {n} skipped' if (n := counts.get('skipped', 0)) else ''}"
            f" in {audit.duration_s:.1f} s (-j {audit.jobs})"
            + ("" if audit.complete else "  [INCOMPLETE: interrupted]"))
    return head + "\n\n" + table(rows, ["spec", "status", "time", "detail"]) + "\n"
