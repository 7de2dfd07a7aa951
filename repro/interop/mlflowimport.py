"""Reading an MLflow run for `repro import mlflow` (docs/integrations.md): which run a reference
names (a run id, `models:/NAME/VERSION`, `models:/NAME@ALIAS`), what it logged — params, tags,
every metric's history step by step — and its artifacts, listed and downloaded.

Everything goes through MLflow's own client (`MlflowClient`), imported only here and only when
a `MlflowServer` is made (`repro[mlflow]`; without it, `MissingExtra`, exit 2). Every failure of
the client — an unknown run, a server that does not answer, a model version without a run —
is an `MlflowImportError` saying what, where (the tracking URI) and what to do. What comes back
is typed (`MlflowRun`, `Artifact`) and holds no MLflow object.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import math
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from repro.errors import ReproError
from repro.interop.extras import require

FEATURE = "repro import mlflow"
COMMIT_TAG = "mlflow.source.git.commit"        # set by MLflow for a run started inside a git checkout
ENTRY_POINT_TAG = "mlflow.project.entryPoint"  # set by `mlflow run` (an MLflow Project)
SYSTEM_PREFIX = "system/"                      # MLflow's system metrics: the host's load, not results
URI_ENV = "MLFLOW_TRACKING_URI"
MAX_ARTIFACTS = 10_000                         # entries listed before the listing is refused
# A client call that cannot reach the server is retried by MLflow 7 times with growing waits
# (about four minutes); an import asks for 2 retries, and no download progress bars, unless
# the user set these.
CLIENT_SETTINGS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                   "MLFLOW_HTTP_REQUEST_TIMEOUT": "60", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,255}$")
_MODEL = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>[^/@]+)|@(?P<alias>[^/@]+))$")


class MlflowImportError(ReproError):
    """An MLflow run (or model version, or artifact) that cannot be imported; the message says
    what, where and what to do."""


@dataclass(frozen=True)
class RunRef:
    """What the user named: a run id, or a registered model version by number or alias."""

    text: str
    run_id: str | None = None
    model: str | None = None
    version: str | None = None
    alias: str | None = None


def parse_ref(text: str) -> RunRef:
    """`RUN_ID`, `models:/NAME/VERSION` or `models:/NAME@ALIAS`; MlflowImportError otherwise."""
    if text.startswith("models:/"):
        m = _MODEL.match(text)
        if m is None:
            raise MlflowImportError(f"{text!r} is not models:/NAME/VERSION nor models:/NAME@ALIAS")
        version = m["version"]
        if version is not None and not version.isdigit():
            raise MlflowImportError(
                f"{text!r}: {version!r} is not a version number; MLflow's stages (Production, "
                "Staging, latest) are deprecated: name the version (models:/NAME/3) or an alias "
                "(models:/NAME@production)")
        return RunRef(text, model=m["name"], version=version, alias=m["alias"])
    if text.startswith("runs:/"):
        raise MlflowImportError(f"{text!r}: give the run's id alone (the part after runs:/); "
                                "name the weights artifact with --weights PATH")
    if not _RUN_ID.match(text):
        raise MlflowImportError(f"{text!r} is not an MLflow run id (32 hex digits, as the run's "
                                "page and `mlflow.active_run().info.run_id` show it) nor "
                                "models:/NAME/VERSION or models:/NAME@ALIAS")
    return RunRef(text, run_id=text)


@dataclass(frozen=True)
class ResolvedModel:
    """The registered model version a reference went through to reach its run."""

    name: str
    version: str
    alias: str | None = None


@dataclass(frozen=True)
class MetricHistory:
    """One metric as the run logged it: steps increasing, one value each."""

    steps: tuple[int, ...]
    values: tuple[float, ...]


@dataclass(frozen=True)
class Artifact:
    """One entry of the run's artifact tree."""

    path: str
    is_dir: bool
    size: int | None = None


@dataclass(frozen=True)
class MlflowRun:
    """What an MLflow run logged, as repro uses it."""

    run_id: str
    tracking_uri: str                      # as shown and kept: no credentials
    experiment_id: str | None
    run_name: str | None
    status: str
    started: str | None                    # UTC, ISO 8601
    params: Mapping[str, str]
    tags: Mapping[str, str]
    metrics: Mapping[str, MetricHistory]   # system metrics left out
    system_metrics: tuple[str, ...] = ()   # their names, to say they were left out
    model: ResolvedModel | None = None
    artifacts: tuple[Artifact, ...] = field(default_factory=tuple)

    @property
    def commit(self) -> str | None:
        return self.tags.get(COMMIT_TAG)

    @property
    def entry_point(self) -> str | None:
        return self.tags.get(ENTRY_POINT_TAG)


def shown_uri(uri: str) -> str:
    """The tracking URI without the user name and password a URL may carry: it is printed and
    kept in records, which are committed."""
    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@dataclass(frozen=True)
class TrackingUri:
    uri: str
    where: str   # "--tracking-uri", "$MLFLOW_TRACKING_URI" or the pyproject.toml's path


def tracking_uri(given: str | None, repo_root: Path) -> TrackingUri:
    """`--tracking-uri`, else $MLFLOW_TRACKING_URI, else `[tool.repro] mlflow` (a URI, or a
    table with `tracking_uri`) in the repository's pyproject.toml; MlflowImportError if none."""
    if given:
        return TrackingUri(given, "--tracking-uri")
    if os.environ.get(URI_ENV):
        return TrackingUri(os.environ[URI_ENV], f"${URI_ENV}")
    pyproject = Path(repo_root) / "pyproject.toml"
    if pyproject.is_file():   # the one reader of [tool.repro] mlflow, shared with repro audit
        from repro.interop.publish import read_mlflow_settings
        value = read_mlflow_settings(pyproject, remedy="pass --tracking-uri URI").mlflow
        if value:
            return TrackingUri(value, str(pyproject))
    raise MlflowImportError("no MLflow tracking URI: pass --tracking-uri URI, set "
                            f"${URI_ENV}, or set `mlflow = \"http://host:5000\"` under "
                            f"[tool.repro] in {pyproject}")


class MlflowServer:
    """A tracking server (or store) read through `MlflowClient`."""

    def __init__(self, uri: TrackingUri):
        mlflow = require("mlflow", "mlflow", FEATURE)
        self.uri, self.shown = uri, shown_uri(uri.uri)
        self._exception: type[BaseException] = mlflow.exceptions.MlflowException
        with self._call("connect"):
            self._client = mlflow.MlflowClient(tracking_uri=uri.uri)

    @contextlib.contextmanager
    def _call(self, what: str, missing: str | None = None) -> Iterator[None]:
        """Run a client call with CLIENT_SETTINGS; its failure as an MlflowImportError.
        `missing`: the message for RESOURCE_DOES_NOT_EXIST."""
        saved = {k: os.environ.get(k) for k in CLIENT_SETTINGS}
        for key, value in CLIENT_SETTINGS.items():
            os.environ.setdefault(key, value)
        try:
            yield
        except MlflowImportError:
            raise
        except Exception as exc:
            raise self._error(what, exc, missing) from None
        finally:
            for key, old in saved.items():
                if old is None:
                    os.environ.pop(key, None)

    def _error(self, what: str, exc: Exception, missing: str | None) -> MlflowImportError:
        code = str(getattr(exc, "error_code", "") or "")
        text = str(exc).strip().splitlines()[0][:400] if str(exc).strip() else type(exc).__name__
        if missing is not None and code == "RESOURCE_DOES_NOT_EXIST":
            return MlflowImportError(f"{missing} at {self.shown} ({self.uri.where}): {text}")
        unreachable = isinstance(exc, OSError) or (isinstance(exc, self._exception)
                                                   and text.startswith("API request to"))
        if unreachable:   # requests' errors are OSErrors; MLflow wraps them as "API request to …"
            return MlflowImportError(
                f"cannot reach the MLflow tracking server at {self.shown} ({self.uri.where}) to "
                f"{what}: {text}. Is the server running and the URI right? Pass --tracking-uri "
                f"or set ${URI_ENV}")
        kind = "" if isinstance(exc, self._exception) else f"{type(exc).__name__}: "
        return MlflowImportError(f"MLflow at {self.shown} ({self.uri.where}) could not {what}: "
                                 f"{kind}{text}")

    def resolve(self, ref: RunRef) -> tuple[str, ResolvedModel | None]:
        """The run id a reference names, and the model version it went through."""
        if ref.run_id is not None:
            return ref.run_id, None
        assert ref.model is not None
        if ref.alias is not None:
            with self._call(f"resolve {ref.text}", missing=f"no registered model {ref.model!r} "
                            f"with the alias {ref.alias!r}"):
                mv = self._client.get_model_version_by_alias(ref.model, ref.alias)
        else:
            with self._call(f"resolve {ref.text}", missing=f"no version {ref.version} of the "
                            f"registered model {ref.model!r}"):
                mv = self._client.get_model_version(ref.model, str(ref.version))
        if not getattr(mv, "run_id", None):
            raise MlflowImportError(
                f"{ref.text} (version {mv.version}) has no source run: it was registered from "
                f"{getattr(mv, 'source', None) or 'a path'}, not from a run, so there are no "
                "metrics to import; import the run that trained it by its id")
        return str(mv.run_id), ResolvedModel(ref.model, str(mv.version), ref.alias)

    def read_run(self, run_id: str, model: ResolvedModel | None = None) -> MlflowRun:
        """The run's params, tags, every metric's history and its artifact tree."""
        with self._call(f"read run {run_id}", missing=f"no MLflow run {run_id}"):
            run = self._client.get_run(run_id)
        data, info = run.data, run.info
        names = sorted(data.metrics)
        system = tuple(n for n in names if n.startswith(SYSTEM_PREFIX))
        metrics = {}
        for name in names:
            if name.startswith(SYSTEM_PREFIX):
                continue
            with self._call(f"read the history of metric {name!r} of run {run_id}"):
                history = self._client.get_metric_history(run_id, name)
            metrics[name] = _history(run_id, name, [(int(m.step), int(m.timestamp or 0), m.value)
                                                    for m in history])
        started = None
        if info.start_time:
            started = _dt.datetime.fromtimestamp(info.start_time / 1000, _dt.UTC).isoformat(
                timespec="seconds")
        return MlflowRun(run_id=str(info.run_id), tracking_uri=self.shown,
                         experiment_id=str(info.experiment_id) if info.experiment_id else None,
                         run_name=info.run_name or None, status=str(info.status), started=started,
                         params=dict(data.params), tags=dict(data.tags), metrics=metrics,
                         system_metrics=system, model=model,
                         artifacts=tuple(self._artifacts(run_id)))

    def _artifacts(self, run_id: str) -> list[Artifact]:
        """The run's artifact tree, breadth first (at most MAX_ARTIFACTS entries)."""
        out: list[Artifact] = []
        todo: list[str | None] = [None]
        while todo:
            path = todo.pop(0)
            with self._call(f"list the artifacts of run {run_id}" + (f" under {path}" if path else "")):
                entries = self._client.list_artifacts(run_id, path)
            for e in entries:
                out.append(Artifact(str(e.path), bool(e.is_dir), e.file_size))
                if e.is_dir:
                    todo.append(str(e.path))
            if len(out) > MAX_ARTIFACTS:
                raise MlflowImportError(f"run {run_id} has more than {MAX_ARTIFACTS:,} artifacts; "
                                        "name the weights with --weights PATH")
        return out

    def download(self, run_id: str, path: str, dest: Path) -> Path:
        """One artifact (a file, or a directory with everything below it) into `dest`."""
        with self._call(f"download the artifact {path} of run {run_id}",
                        missing=f"run {run_id} has no artifact {path!r}"):
            return Path(self._client.download_artifacts(run_id, path, str(dest)))


def _history(run_id: str, name: str, points: list[tuple[int, int, float]]) -> MetricHistory:
    """A metric's points as one value per step, in step order (as logged at equal steps: by
    time). A step logged twice, or a value that is not finite, cannot be compared step by
    step: MlflowImportError naming the metric and the step."""
    points.sort(key=lambda p: (p[0], p[1]))
    steps = [p[0] for p in points]
    for a, b in zip(steps, steps[1:]):
        if a == b:
            raise MlflowImportError(
                f"run {run_id} logged metric {name!r} more than once at step {a}: repro compares "
                "one value per step. Log it with step=… (mlflow.log_metric(name, value, step=s)); "
                "a metric logged without a step has every value at step 0")
    for step, _, value in points:
        if not math.isfinite(value):
            raise MlflowImportError(
                f"run {run_id} logged metric {name!r} = {value} at step {step}: a run whose "
                "metrics are not finite diverged, and is not a result to reproduce")
    return MetricHistory(tuple(steps), tuple(float(p[2]) for p in points))
