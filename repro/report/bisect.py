"""Rendering a bisection (repro/bisect.py): one progress line per round, the result for people,
and its JSON. Rendering only; every commit, outcome and number comes from the `Bisection`."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from repro.report.json import verdict_json
from repro.report.text import _num, summary_line

if TYPE_CHECKING:
    from repro.bisect import Bisection, Probe, Round

JSON_FORMAT = 1
NO_OPS = ("op-level localisation is not built yet: the first divergence above and the commit's "
          "diff are what point at the change")


def _outcome(p: Probe) -> str:
    """`a1b2c3d4e5f6 skip (cannot run)`: the kind of reason only; the result lists it whole."""
    return f"{p.commit[:12]} {p.outcome}" + (f" ({p.reason.split(':')[0]})" if p.reason else "")


def round_line(r: Round) -> str:
    """`round 2: probed 3 commits: a1b2c3 pass, … → 9 left` (round 0: the endpoints)."""
    left = f"→ {r.left} left ({r.duration_s:.1f} s)"
    if r.number == 0:
        good, bad = r.probes
        return f"endpoints: good {_outcome(good)}, bad {_outcome(bad)} {left}"
    return (f"round {r.number}: probed {len(r.probes)} commit{'s' if len(r.probes) != 1 else ''}: "
            + ", ".join(_outcome(p) for p in r.probes) + f" {left}")


def render_bisection(b: Bisection, *, verbose: bool = False) -> str:
    """The commit found (or the candidates skipped commits leave), its subject and diff stat,
    the verdict there, and how the search went. Ends with a line end."""
    out: list[str] = []
    found = b.found
    if found is not None:
        out.append(f"first bad commit: {found.commit}")
        out.append(f"  {found.subject}")
        out += [f"  {line}" for line in found.stat.splitlines()]
    else:
        outcome = {p.commit: p for p in b.probes}
        out.append("the first bad commit is one of (skipped commits between the last pass and "
                   "the first fail):")
        for c in b.candidates:
            p = outcome.get(c.commit)
            state = "not probed" if p is None else (p.reason or p.outcome)
            out.append(f"  {c.commit[:12]}  {c.subject}  [{state}]")
            out += [f"      {line}" for line in c.stat.splitlines()]
    v = b.verdict
    if v is not None:
        out.append("")
        at = "there" if found is not None else f"at {v.commit[:12]}, the first known fail"
        out.append(f"verdict {at}: {summary_line(v)}")
        first = v.first_divergence
        if first is not None:
            step = f" at step {first.first_step}" if first.first_step is not None else ""
            out.append(f"  first divergence: {first.label}{step} (max abs err {_num(first.max_abs)}, "
                       f"max rel err {_num(first.max_rel)}, {first.tolerance_text})")
        if verbose:
            out += [f"    {r.label}: first step {r.first_step}, max abs err {_num(r.max_abs)}"
                    for r in v.failures]
        numeric = [c for c in v.changes if c.numeric]
        if numeric:
            out.append("  what changed since the record: " + "; ".join(c.text() for c in numeric))
        out += [f"  note: {n}" for n in v.notes]
        out.append(f"  {NO_OPS}")
    out.append("")
    verifies = len(b.probes)
    out.append(f"searched {len(b.commits)} commit{'s' if len(b.commits) != 1 else ''} in "
               f"{b.search_rounds} round{'s' if b.search_rounds != 1 else ''} at -j {b.jobs} "
               f"(⌈log_{b.jobs + 1} {len(b.commits)}⌉ = {b.bound} without skips): {verifies} "
               f"verifies ({verifies - 2} probes and the 2 endpoints), {len(b.skipped)} skipped, "
               f"{b.duration_s:.1f} s")
    if b.skipped:
        out.append("skipped (as `git bisect skip`):")
        out += [f"  {p.commit[:12]}  {p.reason}" for p in b.skipped]
    out += [f"note: {n}" for n in b.notes]
    return "\n".join(out) + "\n"


def bisection_json(b: Bisection) -> dict[str, Any]:
    """The machine-readable bisection (format in docs/bisect.md)."""
    return {
        "format": JSON_FORMAT, "spec": b.spec, "repo": b.repo, "good": b.good, "bad": b.bad,
        "commits": b.commits, "jobs": b.jobs, "rounds_bound": b.bound,
        "search_rounds": b.search_rounds, "duration_s": round(b.duration_s, 3),
        "found": b.found.commit if b.found else None,
        "candidates": [{"commit": c.commit, "subject": c.subject, "stat": c.stat, "merge": c.merge}
                       for c in b.candidates],
        "verdict": None if b.verdict is None else verdict_json(b.verdict),
        "rounds": [{"number": r.number, "left": r.left, "duration_s": round(r.duration_s, 3),
                    "probes": [{"commit": p.commit, "position": p.position, "outcome": p.outcome,
                                "reason": p.reason, "status": str(p.verdict.status),
                                "duration_s": round(p.verdict.duration_s, 3)} for p in r.probes]}
                   for r in b.rounds],
        "skipped": [{"commit": p.commit, "reason": p.reason} for p in b.skipped],
        "notes": b.notes, "localisation": NO_OPS,
    }
