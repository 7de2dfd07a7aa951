"""Rendering verdicts, and nothing else: `text` (the terminal table and summary lines), `json`
(the machine-readable result and audit document), `junit` (JUnit XML and per-test properties),
`html` + `svg` (the self-contained audit report). The numbers all come from the `Verdict`."""
from repro.report.text import audit_summary, progress_line, render, summary_line

__all__ = ["render", "summary_line", "progress_line", "audit_summary"]
