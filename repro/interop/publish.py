"""What an audit publishes about each verdict, the same for every tracking tool: a `Publication`
(params, metrics, tags, artifacts) built from a `Verdict` in one place, the `VerdictSink` protocol
the MLflow and W&B sinks implement, and `publish_all`, which drives them so that a tool that
fails costs a warning, never the audit (docs/integrations.md).

Names are stable across nights (`max_abs_error/<kind>/<name>`, `final/<metric>`), so a tool's
compare view lines one spec's runs up; a name a tool would refuse is rewritten the same way
every night, with a short hash of the original so two names never merge.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import math
import os
import posixpath
import re
import shutil
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import repro
from repro.errors import ReproError
from repro.verdict import QuantityResult, Verdict

__all__ = ["Artifact", "Publication", "PublishSettings", "SinkOutcome", "VerdictSink",
           "metric_key", "publication", "publish_all", "publish_settings", "read_mlflow_settings",
           "scoped_env"]

DEFAULT_EXPERIMENT = "repro-audit"   # MLflow experiment and W&B project, unless named
KEY_LIMIT = 250                      # MLflow's longest metric, param and tag name
PARAM_LIMIT = 6000                   # MLflow's longest param value
TAG_LIMIT = 5000                     # well under MLflow's tag value limit (8000)
_BAD_CHARS = re.compile(r"[^A-Za-z0-9_\-. :/]")   # MLflow accepts only these in names


@dataclass(frozen=True)
class Artifact:
    """A file a run carries: its name in the run and its bytes, or the file holding them."""

    name: str
    source: bytes | Path

    def write(self, directory: Path) -> Path:
        """The artifact as `directory/name` (copied when it is a file)."""
        target = directory / self.name
        if isinstance(self.source, Path):
            shutil.copyfile(self.source, target)
        else:
            target.write_bytes(self.source)
        return target


@dataclass(frozen=True)
class Publication:
    """One verdict as every tracking tool receives it."""

    name: str                    # the run's name: the spec's name
    status: str                  # pass, fail, error, skipped
    note: str                    # one line: what the audit's table says about the spec
    started_ms: int              # the audit's start (ms since the epoch): when the night ran
    duration_s: float            # the spec's verify, start to verdict
    params: Mapping[str, str]
    metrics: Mapping[str, float]
    tags: Mapping[str, str]
    artifacts: tuple[Artifact, ...] = ()

    @property
    def failed(self) -> bool:
        return self.status in ("fail", "error")


def metric_key(name: str) -> str:
    """`name` as a metric, param or tag name every tool accepts (MLflow's rules: letters, digits,
    `_-. :/`, a normalised relative path, at most 250 characters). A name that had to change
    gets `_<6 hex>` of the original, so the result is the same every night and two names that
    differ stay apart."""
    clean = _BAD_CHARS.sub("_", name)
    parts = [p if p not in (".", "..") else p.replace(".", "_") for p in clean.split("/") if p]
    clean = "/".join(parts) or "_"
    if clean == name and posixpath.normpath(name) == name and len(name) <= KEY_LIMIT:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:6]
    return f"{clean[:KEY_LIMIT - 7]}_{digest}"


def _quantity_key(r: QuantityResult) -> str:
    kind = {"metric": "metric", "grad": "grad", "weight": "weights", "state": "state"}[r.kind]
    segment = "/segment " + "-".join(re.findall(r"\d+|end", r.segment)) if r.segment else ""
    return f"{kind}/{r.name}{segment}"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _started_ms(started: str) -> int:
    try:
        return int(_dt.datetime.fromisoformat(started).timestamp() * 1000)
    except ValueError:
        return int(_dt.datetime.now(_dt.UTC).timestamp() * 1000)


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _spec_param(path: str, root: Path | None) -> str:
    """The spec's path relative to its repository: the same on every machine and night."""
    if root is not None and path:
        with contextlib.suppress(ValueError):
            return Path(path).resolve().relative_to(root).as_posix()
    return path


def publication(v: Verdict, document: Mapping[str, Any], *, started: str, note: str = "",
                report: Path | None = None, root: Path | None = None) -> Publication:
    """What `v` publishes. `document` is its result in the audit JSON (repro/report/json.py),
    carried as `verdict.json` byte for byte as the audit writes it; `report` (the audit's HTML
    report, when one was written) is carried as `report.html`; `started` is the audit's start
    (ISO 8601), `note` its one-line description of the spec; `root` the specs' repository,
    which the `spec` param is relative to."""
    pins = v.pins or {}
    params: dict[str, str] = {"spec": _spec_param(v.spec_path, root),
                              "commit": str(pins.get("commit") or v.commit),
                              "image": str(pins.get("image") or "none"),
                              "platform": v.platform, "backend": v.backend}
    for name, sha in sorted((pins.get("data") or {}).items()):
        params[f"data/{name}"] = str(sha)
    params = {metric_key(k): _short(val, PARAM_LIMIT) for k, val in params.items() if val}

    metrics: dict[str, float] = {"exit_code": float(v.exit_code), "duration_s": v.duration_s,
                                 "quantities_compared": float(len(v.rows)),
                                 "quantities_out_of_tolerance": float(len(v.failures))}
    for key, seconds in sorted(v.timings.items()):
        metrics[f"time/{key}"] = float(seconds)
    if "train_s" in v.timings:
        metrics["training_s"] = float(v.timings["train_s"])
    for r in v.rows:
        metrics[f"max_abs_error/{_quantity_key(r)}"] = float(r.max_abs)
        metrics[f"max_rel_error/{_quantity_key(r)}"] = float(r.max_rel)
    first = v.first_divergence
    if first is not None and first.first_step is not None:
        metrics["first_divergent_step"] = float(first.first_step)
    for name, value in sorted(v.metrics_final.items()):
        number = _number(value)
        if number is not None:
            metrics[f"final/{name}"] = number
    metrics = {metric_key(k): val for k, val in metrics.items()}

    tags: dict[str, str] = {"status": str(v.status), "spec_name": v.name, "spec_hash": v.spec_hash,
                            "fail_class": v.fail_class, "killed_by": v.killed_by,
                            "compared": "" if v.bitwise is None else
                            ("bitwise" if v.bitwise else "tolerance"),
                            "first_divergence": first.label if first is not None else "",
                            "first_divergence_op": v.localisation.text() if v.localisation else "",
                            "error": (v.error.splitlines() or [""])[0],
                            "audit_started": started, "repro_version": repro.__version__}
    tags = {metric_key(k): _short(val, TAG_LIMIT) for k, val in tags.items() if val}

    text = json.dumps(document, indent=1, sort_keys=True) + "\n"
    artifacts = [Artifact("verdict.json", text.encode())]
    if report is not None:
        artifacts.append(Artifact("report.html", Path(report)))
    return Publication(v.name, str(v.status), note or str(v.status), _started_ms(started),
                       v.duration_s, params, metrics, tags, tuple(artifacts))


# --- sinks --------------------------------------------------------------------------------------

class VerdictSink(Protocol):
    """A tracking tool that receives an audit's verdicts: `open` once, `publish` each, `close`.

    `environment()` is set in this process only while the sink works (the tool's own variables:
    timeouts, offline mode) and restored after; a value the user set already is kept where the
    sink allows it. Each method may raise anything: `publish_all` turns it into a warning."""

    name: str                                    # the tool: "mlflow", "wandb"
    where: str                                   # for messages: the tool and the place

    def environment(self) -> dict[str, str]: ...
    def open(self) -> None: ...
    def publish(self, item: Publication) -> None: ...
    def close(self) -> str: ...                  # where to look now (a URL, a command)


@dataclass
class SinkOutcome:
    """What one sink did: the runs it published, where to see them, and what failed."""

    name: str
    where: str
    published: list[str] = field(default_factory=list)
    total: int = 0
    link: str = ""
    failure: str = ""        # "" when every verdict was published

    def line(self) -> str:
        """The line for stdout when every verdict was published."""
        n = len(self.published)
        return f"{self.name}: {n} run{'s' if n != 1 else ''} in {self.link}"

    def warning(self) -> str:
        """The line for stderr when something failed."""
        done = (f"published {len(self.published)} of {self.total} verdicts "
                f"({', '.join(self.published)}) before this"
                if self.published else "nothing was published there")
        return (f"{self.where}: {self.failure}; {done}. The audit's own reports are written and "
                "its exit code is unchanged")


@contextlib.contextmanager
def scoped_env(values: Mapping[str, str]) -> Iterator[None]:
    """`values` in os.environ for the block, each variable put back as it was after."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, old in saved.items():
            if old is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = old


def _what(exc: BaseException, limit: int = 600) -> str:
    text = " ".join(str(exc).split()) or "(no message)"
    return f"{type(exc).__name__}: {_short(text, limit)}"


def publish_all(sinks: Sequence[VerdictSink], items: Sequence[Publication],
                on_outcome: Callable[[SinkOutcome], None] | None = None) -> list[SinkOutcome]:
    """Every publication to every sink, in order. A sink stops at its first failure (an
    unreachable server fails once, not once per verdict) and the others go on; nothing raised
    by a tool escapes, KeyboardInterrupt aside."""
    outcomes = []
    for sink in sinks:
        out = SinkOutcome(sink.name, sink.where, total=len(items))
        step = "opening"
        try:
            with scoped_env(sink.environment()):
                try:
                    sink.open()
                    for item in items:
                        step = f"publishing {item.name}"
                        sink.publish(item)
                        out.published.append(item.name)
                except BaseException:
                    with contextlib.suppress(Exception, SystemExit):
                        sink.close()   # the tool's own processes and files, whatever failed
                    raise
                step = "finishing"
                out.link = sink.close()
        except (Exception, SystemExit) as exc:   # a tool's sys.exit must not end the audit
            out.failure = f"{step} failed: {_what(exc)}"
        outcomes.append(out)
        if on_outcome is not None:
            on_outcome(out)
    return outcomes


# --- settings -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class PublishSettings:
    """`[tool.repro]` keys of the specs' repository that turn publishing on: `mlflow` (a
    tracking URI, or a table with `tracking_uri`, the form `repro import mlflow` reads too)
    and `mlflow_experiment`."""

    mlflow: str | None = None
    mlflow_experiment: str | None = None
    source: str = ""                      # the pyproject.toml they came from


_EXAMPLES = {"mlflow": "http://mlflow.example:5000", "mlflow_experiment": "nightly"}


def publish_settings(directory: str | Path) -> PublishSettings:
    """The publishing keys of `[tool.repro]` in the pyproject.toml at the root of the git
    repository holding `directory` (none outside a repository or without the file). ReproError
    naming the file and the key when one has the wrong type."""
    from repro.errors import CodePinError
    from repro.pins.code import repo_root

    try:
        pyproject = repo_root(Path(directory)) / "pyproject.toml"
    except CodePinError:
        return PublishSettings()
    if not pyproject.is_file():
        return PublishSettings()
    return read_mlflow_settings(pyproject, remedy="pass --no-mlflow to audit without its "
                                "[tool.repro] settings")


def read_mlflow_settings(pyproject: Path, remedy: str) -> PublishSettings:
    """The MLflow keys of `[tool.repro]` in `pyproject` — the one reader of them, for `repro
    audit` and `repro import mlflow` alike. ReproError naming the file and the key when one has
    the wrong type; `remedy` says what else the user can do (a flag of the command at hand)."""
    try:
        doc = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ReproError(f"{pyproject} cannot be read ({exc}); fix it, or {remedy}") from None
    table = doc.get("tool", {}).get("repro", {})
    values: dict[str, str | None] = {}
    for key in ("mlflow", "mlflow_experiment"):
        value = table.get(key) if isinstance(table, dict) else None
        name = key
        if key == "mlflow" and isinstance(value, dict):   # [tool.repro.mlflow] tracking_uri = …
            value, name = value.get("tracking_uri"), "mlflow.tracking_uri"
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ReproError(f"{pyproject}: [tool.repro] {name} must be a non-empty string "
                             f"(e.g. {key} = \"{_EXAMPLES[key]}\"), not {value!r}")
        values[key] = value
    return PublishSettings(values["mlflow"], values["mlflow_experiment"], str(pyproject))


def finite_or_text(value: float) -> float | str:
    """A number as a tool that drops NaN keeps it: non-finite values as repro's JSON writes
    them ("inf", "-inf", "nan")."""
    return value if math.isfinite(value) else str(value)
