"""`repro audit`: verify every spec under a directory, N at a time, and keep its history. Each
spec goes through `commands.check` — the same call as `repro verify` and the pytest item — by
`run_specs` (repro/commands/runspecs.py, the loop `repro verify` uses too) on an `Executor`; an
audit adds its history and reporting (`repro.report`), and publishing its verdicts to the
tracking tools a team looks at (MLflow, W&B: repro/interop, docs/integrations.md).
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repro import pipeline
from repro.commands.check import check
from repro.commands.progress import Progress
from repro.commands.runspecs import lost_verdict, run_specs
from repro.engines.executor import Executor, LocalExecutor
from repro.errors import ReproError
from repro.interop.publish import DEFAULT_EXPERIMENT, SinkOutcome, VerdictSink, publish_all
from repro.verdict import Verdict

__all__ = ["Audit", "Publishing", "audit_sinks", "load_history", "lost_verdict", "publish_audit",
           "run_audit", "save_history"]


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


# --- publishing to tracking tools -------------------------------------------------------------

@dataclass(frozen=True)
class Publishing:
    """Where an audit's verdicts go besides its own reports: `--mlflow URI` (else `[tool.repro]
    mlflow`), `--mlflow-experiment`, `--no-mlflow`, `--wandb`, `--wandb-dir`, `--wandb-project`."""

    mlflow: str | None = None
    mlflow_experiment: str | None = None
    no_mlflow: bool = False
    wandb: bool = False
    wandb_dir: str | None = None
    wandb_project: str | None = None


def audit_sinks(directory: str | Path, publishing: Publishing) -> list[VerdictSink]:
    """The tools the audit of `directory` publishes to: flags first, then the `[tool.repro]`
    settings of the specs' repository. Called before the audit, so that a missing extra
    (MissingExtra) or a contradictory flag or a bad setting (ReproError) is exit 2 before
    anything trains. Constructing a sink imports its tool and contacts nothing."""
    from repro.interop.publish import PublishSettings, publish_settings

    p = publishing
    for flag, value in (("--mlflow", p.mlflow), ("--mlflow-experiment", p.mlflow_experiment),
                        ("--wandb-dir", p.wandb_dir), ("--wandb-project", p.wandb_project)):
        if value is not None and not value.strip():
            what = "a tracking URI" if flag == "--mlflow" else "one"
            raise ReproError(f"{flag} was given an empty value: name {what}, or leave the flag out")
    if p.no_mlflow and (p.mlflow or p.mlflow_experiment):
        raise ReproError("--no-mlflow with --mlflow or --mlflow-experiment: choose one (--no-mlflow "
                         "turns off the publishing [tool.repro] mlflow asks for)")
    if not p.wandb and (p.wandb_dir or p.wandb_project):
        flag = "--wandb-dir" if p.wandb_dir else "--wandb-project"
        raise ReproError(f"{flag} is for the offline W&B runs: add --wandb")
    settings = PublishSettings() if p.no_mlflow else publish_settings(directory)
    sinks: list[VerdictSink] = []
    uri = p.mlflow or settings.mlflow
    if uri:
        from repro.interop.mlflowlog import MlflowSink

        sinks.append(MlflowSink(uri, p.mlflow_experiment or settings.mlflow_experiment
                                or DEFAULT_EXPERIMENT))
    elif p.mlflow_experiment:
        raise ReproError("--mlflow-experiment names an experiment but no tracking server is "
                         "given: add --mlflow URI (or `mlflow = \"URI\"` under [tool.repro] in "
                         "pyproject.toml)")
    if p.wandb:
        from repro.interop.wandblog import WandbSink

        sinks.append(WandbSink(p.wandb_dir or ".", p.wandb_project or DEFAULT_EXPERIMENT))
    return sinks


def publish_audit(sinks: Sequence[VerdictSink], audit: Audit,
                  documents: Sequence[Mapping[str, Any]], *, report: Path | None = None,
                  describe: Callable[[Verdict], str] | None = None,
                  on_outcome: Callable[[SinkOutcome], None] | None = None) -> list[SinkOutcome]:
    """Publish every verdict of a finished audit to `sinks`, after the audit's own reports are
    written: `documents` are the verdicts' results in the audit JSON (same order), `report`
    the HTML report if one was written, `describe` the one-line detail the audit prints per
    spec. A tool that fails is an outcome with its failure, never an exception. An
    interrupted audit publishes nothing: half a night would read as a night in the tools."""
    from repro.interop.publish import publication

    if len(documents) != len(audit.verdicts):
        raise ValueError(f"{len(documents)} documents for {len(audit.verdicts)} verdicts")
    if not audit.complete:
        outcomes = [SinkOutcome(s.name, s.where, total=len(audit.verdicts),
                                failure="not published: the audit was interrupted")
                    for s in sinks]
        for out in outcomes:
            if on_outcome is not None:
                on_outcome(out)
        return outcomes
    from repro.errors import CodePinError
    from repro.pins.code import repo_root

    try:
        root: Path | None = repo_root(Path(audit.directory))
    except CodePinError:
        root = None
    items = [publication(v, doc, started=audit.started, note=describe(v) if describe else "",
                         report=report, root=root)
             for v, doc in zip(audit.verdicts, documents, strict=True)]
    return publish_all(sinks, items, on_outcome)
