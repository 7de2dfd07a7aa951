"""An MLflow Project's entry point as a command-form spec (`repro import mlflow --from-project`,
docs/integrations.md): the `command` template of the entry point the run started (its
`mlflow.project.entryPoint` tag) in the `MLproject` file at the run's commit, each `{param}`
turned into a `{config.param}` placeholder, and the run's values of the declared parameters
typed as MLproject declares them, as the spec's `config`.

MLflow runs the template through a shell; a spec runs an argument list. A template that needs
the shell (pipes, `&&`, redirections, `$VAR`) is refused, never approximated. Pure: PyYAML and
the standard library, no MLflow.
"""
from __future__ import annotations

import shlex
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from repro.child.command import PLACEHOLDER
from repro.interop.mlflowimport import MlflowImportError

ENVIRONMENT_KEYS = ("python_env", "conda_env", "docker_env")
_SHELL_CHARS = set(";|&<>()")


@dataclass(frozen=True)
class Parameter:
    """One declared parameter of an entry point."""

    name: str
    type: str                      # float, int, string, path, uri (MLflow's names)
    default: Any = None            # as MLproject writes it; None: no default


@dataclass(frozen=True)
class ProjectCommand:
    """What a spec takes from an MLflow Project's entry point and a run of it."""

    entry_point: str
    command: tuple[str, ...]               # argv, {config.NAME} where MLproject had {NAME}
    config: dict[str, Any]                 # declared parameter -> the run's value, typed
    defaults_used: tuple[str, ...] = ()    # parameters the run did not log: their default
    environment: str | None = None         # the env MLproject names (python_env, …): not carried


def parse_mlproject(text: str, where: str) -> dict[str, Any]:
    """The MLproject file as a mapping with `entry_points`; MlflowImportError naming `where`."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise MlflowImportError(f"{where} is not valid YAML: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("entry_points"), dict):
        raise MlflowImportError(f"{where} has no `entry_points` mapping, so no entry point's "
                                "command can be read from it")
    return doc


def _parameters(raw: Any, where: str) -> list[Parameter]:
    if raw is None:
        return []
    if not isinstance(raw, dict):
        raise MlflowImportError(f"{where}: `parameters` is not a mapping")
    out = []
    for name, decl in raw.items():
        if isinstance(decl, str):          # `alpha: float`, MLflow's shorthand
            out.append(Parameter(str(name), decl))
        elif isinstance(decl, dict):
            out.append(Parameter(str(name), str(decl.get("type", "string")), decl.get("default")))
        else:
            raise MlflowImportError(f"{where}: parameter {name!r} is {decl!r}, not a type nor a "
                                    "mapping with type and default")
    return out


def typed(param: Parameter, value: Any, where: str) -> Any:
    """A parameter's value as its MLproject type says: float, int, else text (a `path` or `uri`
    stays as the run gave it)."""
    text = str(value)
    try:
        if param.type == "float":
            return float(text)
        if param.type in ("int", "integer", "long"):
            return int(text)
    except ValueError:
        raise MlflowImportError(f"{where}: parameter {param.name!r} is {text!r}, not a "
                                f"{param.type}") from None
    return text


def entry_point_command(text: str, where: str, entry: str, params: Mapping[str, str]
                        ) -> ProjectCommand:
    """The spec's command and config for entry point `entry` of the MLproject `text`, with the
    run's `params` (its logged params; a declared parameter it lacks takes its default)."""
    doc = parse_mlproject(text, where)
    entries = doc["entry_points"]
    if entry not in entries:
        raise MlflowImportError(f"{where} declares no entry point {entry!r} (it declares "
                                f"{', '.join(map(str, entries)) or 'none'}); a run of a script "
                                "entry point MLproject does not declare has no command to read: "
                                "write the spec's code.command yourself")
    decl = entries[entry]
    here = f"{where}: entry_points.{entry}"
    if not isinstance(decl, dict) or not isinstance(decl.get("command"), str):
        raise MlflowImportError(f"{here} has no `command` string")
    declared = {p.name: p for p in _parameters(decl.get("parameters"), here)}
    config: dict[str, Any] = {}
    defaults = []
    for name, param in declared.items():
        if name in params:
            config[name] = typed(param, params[name], f"{here} (the run's value)")
        elif param.default is not None:
            config[name] = typed(param, param.default, f"{here} (its default)")
            defaults.append(name)
        else:
            raise MlflowImportError(f"{here}: parameter {name!r} has no default and the run "
                                    "logged no value for it")
    command = _command(decl["command"], declared, here)
    env = next((k for k in ENVIRONMENT_KEYS if k in doc), None)
    return ProjectCommand(entry, tuple(command), config, tuple(defaults), env)


def _command(template: str, declared: Mapping[str, Parameter], where: str) -> list[str]:
    """MLproject's command template as an argument list with {config.NAME} placeholders."""
    pieces = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise MlflowImportError(f"{where}: the command {template!r} is not a valid template: "
                                f"{exc}") from None
    for literal, field, spec, conversion in parsed:
        taken = PLACEHOLDER.search(literal)
        if taken is not None:
            raise MlflowImportError(f"{where}: the command holds {taken[0]!r} as text, which a "
                                    "spec would read as a placeholder")
        pieces.append(literal)
        if field is None:
            continue
        if field not in declared or spec or conversion:
            raise MlflowImportError(f"{where}: the command's {{{field}}} names no declared "
                                    f"parameter (declared: {', '.join(declared) or 'none'})")
        pieces.append("{config." + field + "}")
    line = "".join(pieces)
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError as exc:
        raise MlflowImportError(f"{where}: the command {template!r} cannot be split into "
                                f"arguments: {exc}") from None
    shell = [t for t in tokens if set(t) <= _SHELL_CHARS or "$" in t or "`" in t]
    if tokens and "=" in tokens[0] and "/" not in tokens[0].split("=")[0]:
        shell.insert(0, tokens[0])
    if shell or not tokens:
        what = f"uses the shell ({shell[0]!r})" if shell else "is empty"
        raise MlflowImportError(f"{where}: the command {template!r} {what}; a spec's "
                                "code.command is an argument list run without a shell: write "
                                "it yourself (docs/scripts.md), or import into a spec you wrote")
    return tokens
