"""`repro calibrate --write`: the proposed tolerances into the spec file, in place. Comments,
key order and other keys stay byte for byte; the edited text is validated (only the tolerance
block may change) before it replaces the file atomically. Apart from the runs and statistics
because it is the only part of calibrate that edits a user's file.
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path

from repro.commands.calibstats import Bounds, Proposal, resolved_bounds
from repro.errors import ReproError, SpecError
from repro.ioutil import atomic_write_text
from repro.spec import Spec, load_spec, parse_spec
from repro.yamlio import load_with_lines, set_value

STAMP = "# calibrated by repro calibrate"


# -- writing them into the spec --------------------------------------------------------------------
@dataclass(frozen=True)
class Written:
    """What `--write` changed: per block, the tolerance that applied before and after."""

    path: Path
    changes: tuple[tuple[str, Bounds, Bounds], ...]
    warnings: tuple[str, ...] = ()


def check_writable(spec: Spec) -> None:
    """SpecError when tolerances cannot be written into this spec (checked before any run)."""
    if spec.path is None:
        raise SpecError("--write needs a spec file; this spec was not loaded from one")
    if spec.tolerance.mode == "exact":
        raise SpecError("tolerance.mode is exact: every comparison is bitwise and tolerances "
                        "never apply, so there is nothing to write. Set mode to auto (bitwise on "
                        "an identical environment, else within tolerance) or close, or run "
                        "calibrate without --write", file=str(spec.path), key_path="tolerance.mode")


def without_tolerance(spec: Spec) -> dict[str, object]:
    return {k: v for k, v in spec.canonical.items() if k != "tolerance"}


def write_tolerances(spec_path: str | Path, proposal: Proposal, when: _dt.date,
                     host_summary: str) -> Written:
    """Set the spec's tolerance blocks to the proposal, in place: comments, key order and other
    keys stay byte for byte, missing blocks are inserted, and a comment above `tolerance:` says
    they were calibrated, when and where. The edited text is validated before it is written
    (atomically); a failed edit leaves the file as it was."""
    path = Path(spec_path)
    spec = load_spec(path)
    check_writable(spec)
    text = path.read_text(encoding="utf-8")
    blocks = [t for t in proposal.tolerances if not t.problem]
    if not blocks:
        raise ReproError("nothing to write: no variation finished with a quantity a tolerance "
                         "could cover")
    for t in blocks:
        text = set_value(text, ("tolerance",) + t.scope + t.key, {"rtol": t.rtol, "atol": t.atol},
                         str(path))
    comment = (f"{STAMP} {when.isoformat()} on {host_summary}, {proposal.variations} "
               f"variations: largest deviation × {proposal.margin:g}, floor rtol {proposal.floor.rtol:g} "
               f"atol {proposal.floor.atol:g}")
    try:
        text = _stamp(text, comment, str(path))
        data, lines = load_with_lines(text, str(path))
        edited = parse_spec(data, file=str(path), lines=lines, default_name=spec.name)
    except SpecError as exc:
        raise SpecError(f"writing tolerances produced an invalid spec (a bug in repro; the file "
                        f"is unchanged): {exc.reason}", file=str(path), line=exc.line) from None
    if without_tolerance(edited) != without_tolerance(spec):
        raise SpecError("writing tolerances changed more than the tolerance block (a bug in "
                        "repro; the file is unchanged)", file=str(path))
    before, after = spec.tolerance, edited.tolerance
    changes, warnings = [], []
    for t in blocks:
        old = resolved_bounds(before, t.key, proposal.platform, bool(t.scope))
        new = resolved_bounds(after, t.key, proposal.platform, bool(t.scope))
        changes.append((t.label, old, new))
        if new != Bounds(t.rtol, t.atol) and not t.scope:
            warnings.append(f"tolerance.platforms.{proposal.platform} overrides the calibrated "
                            f"{t.label} on {proposal.platform} (rtol {new.rtol:g}, atol "
                            f"{new.atol:g} apply); remove its keys there to use the calibration")
    atomic_write_text(path, text)
    return Written(path, tuple(changes), tuple(warnings))


def _stamp(text: str, comment: str, file: str) -> str:
    """`comment` on its own line above the top-level `tolerance:` key, replacing an earlier
    calibrate comment there."""
    _, lines = load_with_lines(text, file)
    line = lines.get(("tolerance",))
    if line is None:
        raise SpecError("no tolerance block after writing it", file=file)
    rows = text.splitlines(keepends=True)
    indent = rows[line - 1][: len(rows[line - 1]) - len(rows[line - 1].lstrip())]
    if line >= 2 and rows[line - 2].lstrip().startswith(STAMP):
        rows[line - 2] = f"{indent}{comment}\n"
    else:
        rows.insert(line - 1, f"{indent}{comment}\n")
    return "".join(rows)
