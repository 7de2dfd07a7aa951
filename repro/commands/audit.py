"""`repro audit`: verify every spec under a directory, N at a time, and keep its history. Each
spec goes through `commands.check` — the same call as `repro verify` and the pytest item — by
`run_specs` (repro/commands/runspecs.py, the loop `repro verify` uses too) on an `Executor`; an
audit adds its history and reporting (`repro.report`), nothing else.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repro import pipeline
from repro.commands.check import check
from repro.commands.progress import Progress
from repro.commands.runspecs import lost_verdict, run_specs
from repro.engines.executor import Executor, LocalExecutor
from repro.errors import ReproError
from repro.verdict import Verdict

__all__ = ["Audit", "load_history", "lost_verdict", "run_audit", "save_history"]


@dataclass
class Audit:
    """One audit: its verdicts in spec order, and whether every spec finished."""

    directory: str
    jobs: int
    options: pipeline.Options
    started: str
    finished: str = ""
    duration_s: float = 0.0
    complete: bool = True
    verdicts: list[Verdict] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return max((v.exit_code for v in self.verdicts), default=0)

    def counts(self) -> dict[str, int]:
        out = {"pass": 0, "fail": 0, "error": 0}
        for v in self.verdicts:
            out[str(v.status)] = out.get(str(v.status), 0) + 1
        return out


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def run_audit(directory: str | Path, options: pipeline.Options | None = None, *, jobs: int = 1,
              on_done: Any = None, executor: Executor | None = None,
              progress: Progress | None = None) -> Audit:
    """Verify every spec under `directory`, `jobs` at a time (or on `executor`).

    `on_done(verdict, finished_count, total)` is called as each spec finishes (the progress
    lines); `progress` (repro/commands/progress.py) is told of every spec as it is queued, starts and
    finishes (a spec that cannot load finishes at once, as an error). On KeyboardInterrupt
    every child is killed, specs not finished are reported as errors 'interrupted', and the
    audit is returned with `complete=False`.
    """
    options = options or pipeline.Options()
    if not Path(directory).is_dir():
        raise ReproError(f"{directory} is not a directory; `repro audit DIR` looks for specs "
                         "below DIR (default: specs/)")
    executor = executor or LocalExecutor(jobs)
    t0, started = time.perf_counter(), _now()
    result = run_specs([Path(directory)], options, check, executor=executor, progress=progress,
                       on_done=on_done, stopped="the audit was stopped")
    audit = Audit(str(directory), min(executor.slots, max(1, len(result.found))), options, started,
                  complete=result.complete, verdicts=result.verdicts)
    audit.finished = _now()
    audit.duration_s = time.perf_counter() - t0
    return audit


def load_history(directory: str | Path, limit: int = 10) -> list[dict[str, Any]]:
    """The last `limit` audit JSON documents kept in a history directory, oldest first.
    Unreadable files are skipped (a history must never break tonight's report)."""
    out = []
    for path in sorted(Path(directory).glob("audit-*.json"))[-limit:]:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and isinstance(doc.get("results"), list):
            out.append(doc)
    return out


def save_history(directory: str | Path, doc: dict[str, Any]) -> Path:
    """Keep an audit's JSON as `audit-<started>.json` (`-2`, `-3` … when audits share a start
    second). The name is claimed with O_EXCL, so two audits saving at the same instant both
    keep their file; the content is then written atomically over the empty claim."""
    from repro.ioutil import write_json_atomic

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stamp = doc["started"].replace(":", "").replace("-", "").replace("+0000", "Z")
    for n in range(1, 10_000):
        path = directory / (f"audit-{stamp}.json" if n == 1 else f"audit-{stamp}-{n}.json")
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        except FileExistsError:
            continue
        write_json_atomic(path, doc)
        return path
    raise ReproError(f"{directory} already holds 10,000 audits started at {doc['started']}")
