"""`repro import mlflow`: a recorded version built from what an MLflow run logged, for a run
repro never recorded (docs/integrations.md).

The spec given is the one a verify will check against the record, so the import first makes it
describe the run: `code.commit` from the run's `mlflow.source.git.commit` tag, the `config`
values the spec has from the run's params, `record.metrics` from the metrics the run logged
(system metrics left out), unpinned data hashed now. A spec that says otherwise (another commit,
another lr) is an error naming each difference, unless `overwrite`. With `from_project` the spec
is written new, a command-form one, from the entry point in the run's `MLproject`
(repro/interop/mlflowproject.py).

The record carries the metric histories step by step, the final weights from a logged artifact
(npz, safetensors or an Orbax checkpoint, read by the readers a command-form spec's outputs use,
so they are keyed as a verify run's weights are) and `source` (where it came from); it has no
environment fingerprint, so a verify compares it within tolerance and says where it came from.
Everything is read and checked before anything is written: an error leaves spec and records as
they were. The spec and the record are each written atomically.
"""
from __future__ import annotations

import datetime as _dt
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import repro
from repro.errors import ReproError, SpecError
from repro.interop.extras import require
from repro.interop.mlflowimport import (
    COMMIT_TAG,
    ENTRY_POINT_TAG,
    FEATURE,
    Artifact,
    MlflowImportError,
    MlflowRun,
    MlflowServer,
    parse_ref,
    tracking_uri,
)
from repro.ioutil import atomic_write_text
from repro.pins.code import check_commit, code_repo, git, repo_root
from repro.record import (
    CodeInfo,
    DataInfo,
    MetricSeries,
    RecordMeta,
    SourceInfo,
    SpecInfo,
    check_component,
    record_dir,
    write_record,
)
from repro.spec import Spec, default_name, parse_spec_text
from repro.yamlio import set_value

WEIGHT_SUFFIXES = {".npz": "npz", ".safetensors": "safetensors"}   # and an Orbax directory
ORBAX_MARK = "_METADATA"
_HEX40 = re.compile(r"^[0-9a-fA-F]{40}$")


@dataclass(frozen=True)
class OutputFile:
    """`--metrics-file` / `--weights-file` (with --from-project): what the script writes."""

    path: str
    format: str


@dataclass(frozen=True)
class ImportRequest:
    """What `repro import mlflow` is asked for (the CLI's flags)."""

    ref: str                               # RUN_ID, models:/NAME/VERSION or models:/NAME@ALIAS
    spec: Path                             # the spec to fill and check (--from-project: to write)
    tracking_uri: str | None = None        # default $MLFLOW_TRACKING_URI, [tool.repro] mlflow
    weights: str | None = None             # the artifact holding the final weights
    from_project: bool = False             # write a command-form spec from the run's MLproject
    metrics_file: OutputFile | None = None  # --from-project: the script's metrics file
    weights_file: OutputFile | None = None  # --from-project: the script's weights file
    platform: str = "cpu"                  # the record's platform key
    records_root: Path | None = None
    overwrite: bool = False                # let the run's values replace the spec's, and a record


@dataclass(frozen=True)
class Edit:
    """One value the import set in the spec."""

    key: str
    old: Any
    new: Any


@dataclass
class Imported:
    """What an import did: the record written, the spec edits, and what was not carried over."""

    spec_path: Path
    record_path: Path
    source: SourceInfo
    commit: str
    metrics: dict[str, int]                       # name -> steps
    weights: list[str] = field(default_factory=list)
    weights_format: str | None = None
    new_spec: bool = False
    edits: list[Edit] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)


def import_mlflow(req: ImportRequest) -> Imported:
    """Import the run `req.ref` names into `req.spec` and its record (see the module)."""
    require("mlflow", "mlflow", FEATURE)   # before anything else: without it nothing can work
    spec_path = Path(req.spec).absolute()
    check_component(req.platform, "platform key")
    _check_request(req, spec_path)
    root = repo_root(_existing(spec_path.parent))
    server = MlflowServer(tracking_uri(req.tracking_uri, root))
    run_id, model = server.resolve(parse_ref(req.ref))
    run = server.read_run(run_id, model)
    commit = _commit_of(run)
    left_out: list[str] = []
    if req.from_project:
        text = _project_spec(run, commit, root, spec_path, req, left_out)
    else:
        text = spec_path.read_text(encoding="utf-8")
    spec = parse_spec_text(text, spec_path, require_pins=False)
    repo = code_repo(root, spec.code.repo)
    try:
        check_commit(repo, commit)
    except ReproError as exc:
        raise MlflowImportError(f"MLflow run {run.run_id} ran commit {commit} ({COMMIT_TAG}), "
                                f"which {repo} does not have: {exc}") from None
    edits, conflicts = _spec_edits(spec, run, commit, root, left_out)
    if conflicts and not req.overwrite:
        raise MlflowImportError(
            f"{spec_path} does not describe MLflow run {run.run_id}: " + "; ".join(conflicts)
            + ". Pass --overwrite to set the spec to the run's values, or import into a spec "
              "written for this run")
    for e in edits:
        text = set_value(text, tuple(e.key.split(".")), e.new, str(spec_path))
    spec = parse_spec_text(text, spec_path, require_pins=True)
    names = _compared_metrics(spec, run)
    directory = record_dir(root, spec.name or "", req.platform, req.records_root)
    if (directory / "record.json").exists() and not req.overwrite:
        raise MlflowImportError(f"{directory} already holds a record; pass --overwrite to "
                                "replace it with the one imported from MLflow")
    with tempfile.TemporaryDirectory(prefix="repro-import-") as tmp:
        arrays, artifact, fmt = _weights(server, run, spec, req, Path(tmp))
    if not names and not arrays:
        raise MlflowImportError(f"MLflow run {run.run_id} logged no metric and no weights "
                                "artifact: a verify would have nothing to compare")
    source = SourceInfo(kind="mlflow", tracking_uri=run.tracking_uri, run_id=run.run_id,
                        experiment_id=run.experiment_id, run_name=run.run_name,
                        run_started=run.started, model=model.name if model else None,
                        model_version=model.version if model else None,
                        model_alias=model.alias if model else None,
                        weights_artifact=artifact, params=dict(run.params))
    meta = RecordMeta(
        repro_version=repro.__version__,
        created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        spec=SpecInfo(name=spec.name or "", hash=spec.hash, canonical=spec.canonical,
                      file=_relative(spec_path, root)),
        code=CodeInfo(mode="pinned", commit=commit, dirty=[]),
        data={n: DataInfo(path=e.path, sha256=e.sha256) for n, e in spec.data.items()},
        backend="", platform=req.platform, fingerprint=None,
        metrics={n: _series(run, n) for n in names}, grad_steps=[], source=source)
    if req.from_project:
        if spec_path.exists():
            raise SpecError("exists now; --from-project never overwrites a spec", file=str(spec_path))
        spec_path.parent.mkdir(parents=True, exist_ok=True)
    if req.from_project or edits:
        atomic_write_text(spec_path, text)
    write_record(directory, meta, arrays)
    left_out += _not_carried(run, names)
    return Imported(spec_path, directory, source, commit,
                    {n: len(run.metrics[n].steps) for n in names},
                    sorted(k.removeprefix("weights/") for k in arrays), fmt,
                    new_spec=req.from_project, edits=edits, left_out=left_out)


def _check_request(req: ImportRequest, spec_path: Path) -> None:
    """The flags agree with each other and with what exists."""
    if req.from_project:
        if spec_path.exists():
            raise SpecError("exists; --from-project writes a new spec and never overwrites one "
                            "(import into it without --from-project)", file=str(spec_path))
        if req.metrics_file is None and req.weights_file is None:
            raise MlflowImportError("--from-project needs --metrics-file PATH:FORMAT and/or "
                                    "--weights-file PATH:FORMAT: the files the entry point's "
                                    "script writes, which the verify run reads (MLproject does "
                                    "not name them; docs/scripts.md)")
        return
    if req.metrics_file is not None or req.weights_file is not None:
        raise MlflowImportError("--metrics-file and --weights-file describe the spec "
                                "--from-project writes; set code.outputs in your spec instead")
    if not spec_path.is_file():
        raise SpecError("no such spec file; write the spec for the run first (docs/spec.md), "
                        "or pass --from-project for an MLflow Project run", file=str(spec_path))


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root))
    except ValueError:
        return str(path)


def _commit_of(run: MlflowRun) -> str:
    commit = run.commit
    if not commit:
        raise MlflowImportError(
            f"MLflow run {run.run_id} has no {COMMIT_TAG} tag, so nothing says which code it ran. "
            "MLflow sets it when the script that starts the run lies in a git checkout (with "
            "gitpython installed), and `mlflow run` always does; a run logged from elsewhere "
            "cannot be imported")
    if not _HEX40.match(commit):
        raise MlflowImportError(f"MLflow run {run.run_id}'s {COMMIT_TAG} tag is {commit!r}, "
                                "not a full 40-hex commit")
    return commit.lower()


# -- the spec ------------------------------------------------------------------------------------

def _spec_edits(spec: Spec, run: MlflowRun, commit: str, root: Path, left_out: list[str]
                ) -> tuple[list[Edit], list[str]]:
    """The values to set in the spec so it describes the run, and the conflicts (a value the
    spec has that differs from the run's)."""
    edits: list[Edit] = []
    conflicts: list[str] = []
    if spec.code.commit is None:
        edits.append(Edit("code.commit", None, commit))
    elif spec.code.commit != commit:
        conflicts.append(f"code.commit is {spec.code.commit}, the run's {COMMIT_TAG} is {commit}")
        edits.append(Edit("code.commit", spec.code.commit, commit))
    leaves = dict(_config_leaves(spec.config))
    unused = []
    for name, text in sorted(run.params.items()):
        if name not in leaves:
            unused.append(name)
            continue
        current = leaves[name]
        try:
            value = _typed_like(current, text)
        except ValueError:
            conflicts.append(f"config.{name} is {type(current).__name__} {current!r}, but the run's "
                             f"param {name} = {text!r} is not")
            continue
        if value != current:
            conflicts.append(f"config.{name} is {current!r}, the run's param {name} = {text!r}")
            edits.append(Edit(f"config.{name}", current, value))
    if unused:
        left_out.append(f"params the spec's config has no key for: {', '.join(unused)}")
    unpinned = {n: e for n, e in spec.data.items() if e.sha256 is None}
    if unpinned:
        from repro.pins.data import hash_paths, resolve_data_path

        paths = [resolve_data_path(root, e.path) for e in unpinned.values()]
        for name, (_, digest) in zip(unpinned, hash_paths(paths, root=root)):
            edits.append(Edit(f"data.{name}.sha256", None, digest))
        left_out.append("MLflow keeps no file hashes: data " + ", ".join(unpinned)
                        + " pinned to the files as they are now")
    if spec.record.metrics is None and run.metrics:
        edits.append(Edit("record.metrics", None, sorted(run.metrics)))
    return edits, conflicts


def _config_leaves(config: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) of every config value that is not a mapping: MLflow's params are
    flat, nested settings are logged with dotted names (`optim.lr`)."""
    out = []
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out += _config_leaves(value, name + ".")
        else:
            out.append((name, value))
    return out


def _typed_like(current: Any, text: str) -> Any:
    """An MLflow param (always text) as the type the spec's value has; ValueError if it is not
    one. Lists and mappings are read as JSON, or as Python writes them (str of a list)."""
    if isinstance(current, bool):
        lowered = text.strip().lower()
        if lowered in ("true", "false"):
            return lowered == "true"
        raise ValueError(text)
    if isinstance(current, int):
        return int(text)
    if isinstance(current, float):
        return float(text)
    if isinstance(current, str) or current is None:
        return text
    import ast
    import json

    try:
        value = json.loads(text)
    except ValueError:
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise ValueError(text) from None
    if type(value) is not type(current):
        raise ValueError(text)
    return value


def _compared_metrics(spec: Spec, run: MlflowRun) -> list[str]:
    """What verify will compare: record.metrics (each must be in the run), else what it logged."""
    if spec.record.metrics is None:
        return sorted(run.metrics)
    missing = [m for m in spec.record.metrics if m not in run.metrics]
    if missing:
        raise MlflowImportError(f"record.metrics lists {missing}, which MLflow run {run.run_id} "
                                f"did not log (it logged: {', '.join(sorted(run.metrics)) or 'none'}"
                                "); fix the list, or leave it out to compare what the run logged")
    return list(spec.record.metrics)


def _series(run: MlflowRun, name: str) -> MetricSeries:
    history = run.metrics[name]
    return {"steps": list(history.steps), "values": list(history.values), "dtype": "float64"}


def _not_carried(run: MlflowRun, names: list[str]) -> list[str]:
    out = []
    other = sorted(set(run.metrics) - set(names))
    if other:
        out.append(f"metrics record.metrics does not list: {', '.join(other)}")
    if run.system_metrics:
        out.append(f"system metrics (the host's load, not results): {len(run.system_metrics)}")
    out.append("the run's environment (packages, CPU, device): MLflow keeps no fingerprint, so "
               "the record has none and a verify compares within tolerance")
    return out


# -- --from-project --------------------------------------------------------------------------------

def _project_spec(run: MlflowRun, commit: str, root: Path, spec_path: Path, req: ImportRequest,
                  left_out: list[str]) -> str:
    """A new command-form spec for the run's MLflow Project entry point (its text)."""
    import yaml

    from repro.interop.mlflowproject import entry_point_command

    if not run.entry_point:
        raise MlflowImportError(f"MLflow run {run.run_id} was not started as an MLflow Project "
                                f"(`mlflow run`: it has no {ENTRY_POINT_TAG} tag); write its spec "
                                "yourself (docs/scripts.md) and import without --from-project")
    listing = git(["ls-tree", "--name-only", commit], root, check=False)
    names = [n for n in listing.stdout.splitlines() if n.lower() == "mlproject"]
    if listing.returncode != 0 or not names:
        raise MlflowImportError(f"commit {commit} of {root} has no MLproject file at its root "
                                "(a project in a subdirectory is not supported): write the spec "
                                "yourself and import without --from-project")
    shown = f"MLproject at {commit[:12]}"
    text = git(["show", f"{commit}:{names[0]}"], root).stdout
    project = entry_point_command(text, shown, run.entry_point, run.params)
    outputs: dict[str, dict[str, str]] = {}
    for kind, out in (("metrics", req.metrics_file), ("weights", req.weights_file)):
        if out is not None:
            outputs[kind] = {"path": out.path, "format": out.format}
    name = default_name(spec_path)
    doc: dict[str, Any] = {
        "repro": 1, "name": name,
        "description": f"MLflow Project entry point {project.entry_point!r}, as run by MLflow "
                       f"run {run.run_id} (repro import mlflow --from-project)",
        "code": {"commit": commit, "command": list(project.command), "outputs": outputs},
        "config": project.config,
        "record": {"weights": "final" if req.weights_file else "none"}}
    if project.defaults_used:
        left_out.append("parameters the run did not log, taken from MLproject's defaults: "
                        + ", ".join(project.defaults_used))
    if project.environment:
        left_out.append(f"MLproject's {project.environment} (the project's environment): the "
                        "spec runs in yours; pin packages with environment.packages or an image")
    head = (f"# Written by `repro import mlflow {req.ref} --from-project` from {shown}, entry "
            f"point {project.entry_point!r}\n# with the run's params; its record holds what the "
            "run logged (docs/integrations.md).\n")
    body = "".join(   # code in block style; small mappings in flow style
        yaml.safe_dump({k: v}, sort_keys=False, width=100,
                       default_flow_style=None if isinstance(v, dict) and k != "code" else False)
        for k, v in doc.items())
    return head + body


# -- weights -------------------------------------------------------------------------------------

def _weights(server: MlflowServer, run: MlflowRun, spec: Spec, req: ImportRequest, tmp: Path
             ) -> tuple[dict[str, Any], str | None, str | None]:
    """The final weights from the run's artifact, keyed as a verify run's (weights/<leaf>);
    the artifact's path and format."""
    from repro.child.outputs import OutputError, read_weights
    from repro.child.treepath import numeric_leaves

    if spec.record.weights == "none":
        if req.weights:
            raise MlflowImportError(f"--weights {req.weights}: the spec keeps no weights "
                                    "(record.weights: none); drop the flag or set it to final")
        return {}, None, None
    artifact = _named(run, req.weights) if req.weights else _find_weights(run, spec)
    fmt = weights_format(artifact, run)
    if fmt is None:
        raise MlflowImportError(
            f"artifact {artifact.path} of MLflow run {run.run_id} is not in a format repro "
            "reads: an .npz file, a .safetensors file or an Orbax checkpoint directory. Log the "
            "final weights in one (numpy.savez, safetensors.numpy.save_file, an Orbax "
            "checkpointer) and name it with --weights")
    local = server.download(run.run_id, artifact.path, tmp)
    shown = f"artifact {artifact.path} of MLflow run {run.run_id}"
    try:
        leaves = numeric_leaves(read_weights(local, fmt, shown), f"the weights in {shown}")
    except OutputError as exc:
        raise MlflowImportError(str(exc)) from None
    except (TypeError, ValueError) as exc:
        raise MlflowImportError(f"{exc}; repro keeps numeric arrays only") from None
    if not leaves:
        raise MlflowImportError(f"{shown} holds no arrays")
    return {f"weights/{p}" if p else "weights": a for p, a in leaves}, artifact.path, fmt


def weights_format(artifact: Artifact, run: MlflowRun) -> str | None:
    """npz, safetensors or orbax (a directory holding an Orbax checkpoint, or a
    CheckpointManager's numbered steps), by the artifact's name and listing; None: another."""
    if not artifact.is_dir:
        return WEIGHT_SUFFIXES.get(Path(artifact.path).suffix.lower())
    inside = [a.path[len(artifact.path) + 1:] for a in run.artifacts
              if a.path.startswith(artifact.path + "/")]
    if ORBAX_MARK in inside or any(p.split("/")[0].isdigit() for p in inside):
        return "orbax"
    return None


def _named(run: MlflowRun, path: str) -> Artifact:
    path = path.strip("/")
    for a in run.artifacts:
        if a.path == path:
            return a
    listed = ", ".join(a.path for a in run.artifacts if "/" not in a.path) or "none"
    raise MlflowImportError(f"MLflow run {run.run_id} has no artifact {path!r} (at the top: "
                            f"{listed})")


def _find_weights(run: MlflowRun, spec: Spec) -> Artifact:
    """The one artifact in a format repro reads; with several, those of the format and file
    name a command-form spec's weights output has."""
    found = [a for a in run.artifacts if weights_format(a, run) is not None
             and not any(a.path.startswith(d.path + "/") for d in run.artifacts
                         if d.is_dir and weights_format(d, run) == "orbax")]
    out = spec.code.outputs.weights if spec.code.outputs else None
    if len(found) > 1 and out is not None:
        same = [a for a in found if weights_format(a, run) == out.format]
        found = same or found
        if len(found) > 1:
            found = [a for a in found if Path(a.path).name == Path(out.path).name] or found
    if len(found) == 1:
        return found[0]
    if not found:
        others = ", ".join(a.path for a in run.artifacts if not a.is_dir)[:300] or "none"
        raise MlflowImportError(
            f"the spec keeps the final weights (record.weights: final), but MLflow run "
            f"{run.run_id} logged no artifact in a format repro reads (an .npz file, a "
            f".safetensors file or an Orbax checkpoint directory; it logged: {others}). Log "
            "the final weights in one and name it with --weights PATH, or set "
            "record.weights: none")
    raise MlflowImportError(f"MLflow run {run.run_id} logged several weights artifacts ("
                            f"{', '.join(a.path for a in found)}); name one with --weights PATH")
