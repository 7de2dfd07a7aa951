"""The audit's verdicts as offline W&B runs (`repro audit --wandb`), written with wandb's own
library for `wandb sync` later: each verdict one run (name = the spec), its params as config,
its metrics and tags in the summary, status tags, and the verdict JSON and HTML report as an
artifact. Nothing is sent: offline mode is forced for the call, whatever the user's settings.

Everything lands under the chosen directory: the runs (`DIR/wandb/offline-run-*`), the
artifact files beside each run's log (referenced in place, so the run directory is all `wandb
sync` needs), wandb's cache and staging (unless the user set `WANDB_CACHE_DIR` or
`WANDB_DATA_DIR`). wandb starts a service process (wandb-core) for its runs; `close` ends every
run and tears the service down, so nothing is left running.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path
from typing import Any

from repro.interop.extras import require
from repro.interop.publish import DEFAULT_EXPERIMENT, Publication, finite_or_text

__all__ = ["FEATURE", "WandbSink"]

FEATURE = "repro audit --wandb"
ARTIFACT_TYPE = "repro-verdict"


class WandbSink:
    """Offline runs under `directory`, in `project`. Constructing it imports wandb
    (MissingExtra, exit 2, before the audit runs); nothing is written before `open`."""

    def __init__(self, directory: str | Path, project: str = DEFAULT_EXPERIMENT):
        require("wandb", "wandb", FEATURE)
        self.directory = Path(directory).absolute()
        self.project = project
        self.name = "wandb"
        self.where = f"W&B offline runs in {directory} (project {project})"
        self.runs: list[Path] = []
        self._owns_service = False

    def environment(self) -> dict[str, str]:
        """Offline and quiet, no error reports (they would be sent), caches in the directory."""
        home = self.directory / "wandb"
        return {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_ERROR_REPORTING": "false",
                "WANDB_CACHE_DIR": os.environ.get("WANDB_CACHE_DIR", str(home / "cache")),
                "WANDB_DATA_DIR": os.environ.get("WANDB_DATA_DIR", str(home / "data"))}

    def open(self) -> None:
        import wandb

        self.directory.mkdir(parents=True, exist_ok=True)
        # a run the caller has open keeps wandb's service: it is theirs to tear down
        self._owns_service = wandb.run is None

    def _settings(self) -> Any:
        import wandb

        return wandb.Settings(mode="offline", silent=True, console="off", x_disable_stats=True,
                              x_disable_machine_info=True, disable_git=True, save_code=False,
                              disable_job_creation=True, x_save_requirements=False)

    def publish(self, item: Publication) -> None:
        """One offline run, finished with exit code 1 for a failing or erroring verdict (W&B
        shows it as failed) and 0 otherwise."""
        import wandb

        tags = [t for t in (item.status, item.tags.get("fail_class", "")) if t]
        run = wandb.init(project=self.project, name=item.name, dir=str(self.directory),
                         config=dict(item.params), tags=tags, notes=item.note,
                         job_type="repro-audit", settings=self._settings(), reinit="create_new")
        run_dir = Path(run.settings.sync_dir)
        try:
            # W&B drops NaN from a summary: non-finite values go as repro's JSON writes them
            run.summary.update({**{k: finite_or_text(v) for k, v in item.metrics.items()},
                                **item.tags})
            if item.artifacts:
                files = run_dir / "repro"
                files.mkdir(exist_ok=True)
                artifact = wandb.Artifact(_artifact_name(item.name), type=ARTIFACT_TYPE,
                                          description=item.note,
                                          metadata={"status": item.status, **item.tags})
                for a in item.artifacts:
                    artifact.add_file(str(a.write(files)), name=a.name, policy="immutable")
                run.log_artifact(artifact)
        except BaseException:
            # half a run, synced later, would read as a verdict without its numbers: remove it
            with contextlib.suppress(Exception):
                run.finish(exit_code=1)
            shutil.rmtree(run_dir, ignore_errors=True)
            raise
        run.finish(exit_code=1 if item.failed else 0)
        self.runs.append(run_dir)

    def close(self) -> str:
        """Every run finished (publish does), then wandb's service process stopped."""
        import wandb

        if self._owns_service:
            wandb.teardown()
        home = self.directory / "wandb"
        return f"{home} (upload later with `wandb sync {home}/offline-run-*`)"


def _artifact_name(spec: str) -> str:
    """W&B artifact names take letters, digits, '-', '_' and '.'."""
    return "repro-" + re.sub(r"[^A-Za-z0-9._-]", "_", spec)
