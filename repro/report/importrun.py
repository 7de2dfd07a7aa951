"""Rendering what `repro import` did (repro/commands/importrun.py): the run, the spec's edits,
the record, what was not carried over, and what to do next. Rendering only."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from repro.commands.importrun import Imported


def _shown(value: Any) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]"
    return str(value)


def _path(p: Path) -> str:
    rel = os.path.relpath(p)
    return rel if not rel.startswith("..") else str(p)


def render_import(result: Imported) -> str:
    """The text `repro import mlflow` prints; ends with a line end."""
    spec, record = _path(result.spec_path), _path(result.record_path)
    out = [f"IMPORTED {result.source.describe()}"]
    how = ("new, from the run's MLproject" if result.new_spec
           else "updated" if result.edits else "unchanged")
    out.append(f"  spec:    {spec} ({how})")
    out += [f"    {e.key}: {_shown(e.old)} -> {_shown(e.new)}" for e in result.edits
            if not result.new_spec]
    out.append(f"  code:    commit {result.commit} (the run's mlflow.source.git.commit)")
    if result.metrics:
        out.append("  metrics: " + ", ".join(f"{n} ({k} steps)" for n, k in result.metrics.items()))
    if result.weights:
        shown = ", ".join(result.weights[:6]) + (f" … ({len(result.weights)} in all)"
                                                 if len(result.weights) > 6 else "")
        out.append(f"  weights: {shown} (from artifact {result.source.weights_artifact}, "
                   f"{result.weights_format})")
    out.append(f"  record:  {record} (no environment fingerprint: a verify compares it within "
               "tolerance)")
    if result.left_out:
        out.append("  not carried over:")
        out += [f"    {line}" for line in result.left_out]
    out.append("Next:")
    out.append(f"  repro verify {spec}")
    out.append(f"  git add {spec} {record} && git commit -m 'import MLflow run "
               f"{result.source.run_id[:12]}'")
    return "\n".join(out) + "\n"
