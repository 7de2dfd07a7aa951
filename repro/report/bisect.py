"""Rendering a bisection (repro/commands/bisect.py): one progress line per round, the result for people,
and its JSON. Rendering only; every commit, outcome and number comes from the `Bisection`."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from repro.report.json import verdict_json
from repro.report.text import short_number, summary_line

if TYPE_CHECKING:
    from repro.commands.bisect import Bisection, Probe, Round
    from repro.commands.envbisect import EnvBisection, EnvProbe
    from repro.verdict import Verdict

JSON_FORMAT = 1
NO_OPS = ("no op named: the training does not wrap its step in ctx.traced, so the first "
          "divergence above and the commit's diff point at the change (docs/localisation.md)")


def _ops_line(v: Verdict) -> str:
    """The first diverging op at the commit found (ctx.traced), or why there is none."""
    if v.localisation is not None:
        return f"first diverging op: {v.localisation.text()}"
    return NO_OPS


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
        out += _verdict_lines(f"verdict {at}", v, verbose)
        out.append(f"  {_ops_line(v)}")
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


def _verdict_lines(lead: str, v: Verdict, verbose: bool) -> list[str]:
    """A failing verdict: its summary, first divergence, what changed since the record."""
    out = [f"{lead}: {summary_line(v)}"]
    first = v.first_divergence
    if first is not None:
        step = f" at step {first.first_step}" if first.first_step is not None else ""
        out.append(f"  first divergence: {first.label}{step} (max abs err {short_number(first.max_abs)}, "
                   f"max rel err {short_number(first.max_rel)}, {first.tolerance_text})")
    if verbose:
        out += [f"    {r.label}: first step {r.first_step}, max abs err {short_number(r.max_abs)}"
                for r in v.failures]
    numeric = [c for c in v.changes if c.numeric]
    if numeric:
        out.append("  what changed since the record: " + "; ".join(c.text() for c in numeric))
    out += [f"  note: {n}" for n in v.notes]
    return out


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
        "notes": b.notes,
        "localisation": None if b.verdict is None or b.verdict.localisation is None
        else b.verdict.localisation.text(),
    }


# -- repro bisect --env ------------------------------------------------------------------------
def _applied(b: EnvBisection | None, p: EnvProbe) -> str:
    if p.role == "good":
        return "the good lock"
    if p.role == "bad":
        return "the bad lock"
    texts = {c.name: c.text() for c in b.changes} if b is not None else {}
    return ", ".join(texts.get(n, n) for n in p.applied)


def env_probe_line(p: EnvProbe, b: EnvBisection | None = None) -> str:
    """`build 3 [reprotest-scale 1.0 -> 1.1]: NAME@sha256:0123456789ab in 4.1 s → fail (changed),
    verify 2.0 s`: one line per build as it ends."""
    where = (f"{p.image.rsplit('@', 1)[-1][:19]} in {p.build_s:.1f} s" if p.image
             else f"no image ({p.build_s:.1f} s)")
    v = p.verdict
    outcome: str = p.outcome
    if p.outcome == "fail" and v is not None and v.fail_class:
        outcome += f" ({v.fail_class})"
    elif p.reason:
        outcome += f" ({p.reason})"
    verify = f", verify {p.verify_s:.1f} s" if p.image else ""
    return f"build {p.number} [{_applied(b, p)}]: {where} → {outcome}{verify}"


def render_env_bisection(b: EnvBisection, *, verbose: bool = False) -> str:
    """The minimal flipping change set, the verdict with it, every build, and the cost."""
    out: list[str] = []
    names = ", ".join(c.text() for c in b.minimal)
    if len(b.minimal) == 1:
        out.append(f"{names} flips the verdict")
    else:
        out.append(f"these {len(b.minimal)} package changes together flip the verdict "
                   f"(1-minimal: without any one of them it does not fail): {names}")
    out.append(f"  ({len(b.minimal)} of the {len(b.changes)} changes between {b.good} and "
               f"{b.bad})")
    if b.verdict is not None:
        out.append("")
        out += _verdict_lines("verdict with it", b.verdict, verbose)
    out.append("")
    out.append("builds:")
    for p in b.probes:
        image = p.image or "no image"
        out.append(f"  {p.number}. {_applied(b, p)}: {p.outcome}  {image}  "
                   f"(build {p.build_s:.1f} s, verify {p.verify_s:.1f} s)")
        if p.reason:
            out.append(f"       {p.reason}")
    build_s = sum(p.build_s for p in b.probes)
    verify_s = sum(p.verify_s for p in b.probes)
    out.append("")
    out.append(f"searched {len(b.changes)} package change{'s' if len(b.changes) != 1 else ''} "
               f"by ddmin: {b.builds} builds ({b.builds - 2} probes and the 2 locks), "
               f"{len(b.unresolved)} unresolved, {b.duration_s:.1f} s (builds {build_s:.1f} s, "
               f"verifies {verify_s:.1f} s)")
    out += [f"note: {n}" for n in b.notes]
    return "\n".join(out) + "\n"


def _change_json(c: Any) -> dict[str, Any]:
    return {"package": c.name, "good": c.old.version if c.old else None,
            "bad": c.new.version if c.new else None, "text": c.text()}


def env_bisection_json(b: EnvBisection) -> dict[str, Any]:
    """The machine-readable env bisection (format in docs/bisect.md)."""
    return {
        "format": JSON_FORMAT, "kind": "env", "spec": b.spec, "good": b.good, "bad": b.bad,
        "recipe": b.recipe, "duration_s": round(b.duration_s, 3), "builds": b.builds,
        "changes": [_change_json(c) for c in b.changes],
        "minimal": [_change_json(c) for c in b.minimal],
        "verdict": None if b.verdict is None else verdict_json(b.verdict),
        "probes": [{"number": p.number, "role": p.role, "applied": list(p.applied),
                    "outcome": p.outcome, "reason": p.reason, "image": p.image,
                    "build_s": round(p.build_s, 3), "verify_s": round(p.verify_s, 3),
                    "status": None if p.verdict is None else str(p.verdict.status)}
                   for p in b.probes],
        "notes": b.notes,
    }
