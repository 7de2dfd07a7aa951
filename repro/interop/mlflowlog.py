"""The audit publishes to MLflow (`repro audit --mlflow URI`, or `[tool.repro] mlflow`): each
verdict one run in an experiment (default `repro-audit`), through MLflow's own client
(`MlflowClient`; the `mlflow` extra installs mlflow-skinny). What a run holds is
`repro.interop.publish.publication`'s; this module only talks to the server.

A server that does not answer must cost seconds, not the client's default minutes of retries:
the client's retry and timeout variables are set for the call unless the user set them. MLflow
reports its own usage to its vendor outside CI unless told not to; repro talks to the server it
was given and nothing else, so that is off too (MLFLOW_DISABLE_TELEMETRY=false keeps it on).
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any

from repro.errors import ReproError
from repro.interop.extras import require
from repro.interop.publish import DEFAULT_EXPERIMENT, Publication, scoped_env

__all__ = ["FEATURE", "MlflowSink"]

FEATURE = "repro audit --mlflow"
# MLflow's own variables, read at each request. The user's values win over these defaults.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",      # default 7: minutes of backoff
                 "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",   # default 2
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",         # default 120 s per request
                 "MLFLOW_DISABLE_TELEMETRY": "true"}          # read as mlflow is imported
# The client prints "View run … at …" for every run it ends, and draws upload progress bars:
# the audit prints one line of its own instead.
QUIET = {"MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
         "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
BATCH = {"metrics": 1000, "params": 100}     # log_batch's limits per request


class MlflowSink:
    """Runs in one MLflow experiment, created if absent. Constructing it imports MLflow
    (MissingExtra, exit 2, before the audit runs); nothing touches the server before `open`."""

    def __init__(self, uri: str, experiment: str = DEFAULT_EXPERIMENT):
        with scoped_env(self.environment()):    # mlflow decides on telemetry as it is imported
            require("mlflow", "mlflow", FEATURE)
        self.uri, self.experiment = uri, experiment
        self.name = "mlflow"
        self.where = f"MLflow at {uri} (experiment {experiment})"
        self.experiment_id = ""
        self._client: Any = None

    def environment(self) -> dict[str, str]:
        return {**{k: os.environ.get(k, v) for k, v in HTTP_DEFAULTS.items()}, **QUIET}

    def open(self) -> None:
        """Find the experiment by name, or create it (another audit may create it first)."""
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        client = MlflowClient(tracking_uri=self.uri)
        found = client.get_experiment_by_name(self.experiment)
        if found is None:
            try:
                self.experiment_id = client.create_experiment(self.experiment)
            except MlflowException:
                found = client.get_experiment_by_name(self.experiment)
                if found is None:
                    raise
        if found is not None:
            if found.lifecycle_stage == "deleted":
                raise ReproError(f"the experiment {self.experiment!r} is deleted in MLflow: "
                                 f"restore it (`mlflow experiments restore --experiment-id "
                                 f"{found.experiment_id}`) or name another with "
                                 "--mlflow-experiment")
            self.experiment_id = found.experiment_id
        self._client = client

    def publish(self, item: Publication) -> None:
        """One run: created with its tags, then its params and metrics in batches, the
        artifacts in one upload, and ended FINISHED (pass, skipped) or FAILED (fail, error)."""
        from mlflow.entities import Metric, Param

        client = self._client
        run = client.create_run(self.experiment_id, start_time=item.started_ms, run_name=item.name,
                                tags={**item.tags, "mlflow.note.content": item.note})
        run_id = run.info.run_id
        try:
            _log_in_batches(client, run_id,
                            [Metric(k, v, item.started_ms, 0) for k, v in item.metrics.items()],
                            [Param(k, v) for k, v in item.params.items()])
            if item.artifacts:
                with tempfile.TemporaryDirectory(prefix="repro-mlflow-") as tmp:
                    for artifact in item.artifacts:
                        artifact.write(Path(tmp))
                    client.log_artifacts(run_id, tmp)
            end_ms = item.started_ms + round(item.duration_s * 1000)
            client.set_terminated(run_id, "FAILED" if item.failed else "FINISHED", end_time=end_ms)
        except BaseException:
            # half a run would read as a verdict without its numbers: remove it, if the server lets
            with contextlib.suppress(Exception):
                client.delete_run(run_id)
            raise

    def close(self) -> str:
        base = self.uri.rstrip("/")
        if base.startswith(("http://", "https://")) and self.experiment_id:
            return f"{base}/#/experiments/{self.experiment_id}"
        return f"{self.uri}, experiment {self.experiment}"


def _log_in_batches(client: Any, run_id: str, metrics: list[Any], params: list[Any]) -> None:
    """log_batch within its per-request limits (1000 metrics, 100 params)."""
    m, p = BATCH["metrics"], BATCH["params"]
    for n in range(max(-(-len(metrics) // m), -(-len(params) // p), 1)):
        client.log_batch(run_id, metrics=metrics[n * m:(n + 1) * m], params=params[n * p:(n + 1) * p])
