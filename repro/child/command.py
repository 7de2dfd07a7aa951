"""Unmodified scripts (`code.command`, docs/scripts.md): the placeholders a command may hold,
and running the command in the child, under the run's pins and determinism settings.

Standard library only: the spec checks placeholders with it in the parent; the runner runs the
script with it inside any image. What the script writes is read by `repro.child.outputs`.
"""
from __future__ import annotations

import collections
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from repro.job import Outputs

PLACEHOLDER = re.compile(r"\{(config|seeds|data)\.([^{}]+)\}")
PYTHON_NAMES = ("python", "python3", f"python{sys.version_info[0]}.{sys.version_info[1]}")
TAIL_LINES = 30


class ScriptError(Exception):
    """The script could not run, or exited non-zero. `detail`: the last lines of its output."""

    def __init__(self, message: str, detail: str = ""):
        super().__init__(message)
        self.detail = detail


def _lookup(kind: str, name: str, seeds: Mapping[str, int], config: Mapping[str, Any],
            data: Mapping[str, str]) -> Any:
    """The value a placeholder stands for; KeyError when the spec has no such key. A config
    name may be dotted into nested mappings (`{config.optim.lr}`)."""
    if kind == "seeds":
        return seeds[name]
    if kind == "data":
        return data[name]
    if name in config:
        return config[name]
    value: Any = config
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise KeyError(name)
        value = value[part]
    return value


def _text(value: Any) -> str:
    """A value as one command-line argument: strings as they are, the rest as JSON (0.05,
    true, [1, 2])."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def unknown_placeholders(command: Sequence[str], seeds: Mapping[str, int],
                         config: Mapping[str, Any], data: Mapping[str, Any]) -> list[str]:
    """What is wrong with a command's placeholders (empty: nothing)."""
    problems = []
    for arg in command:
        for m in PLACEHOLDER.finditer(arg):
            kind, name = m.groups()
            try:
                _lookup(kind, name, seeds, config, data)
            except KeyError:
                have = {"seeds": seeds, "config": config, "data": data}[kind]
                problems.append(f"{m.group(0)} names no key of `{kind}` (it has: "
                                f"{', '.join(sorted(map(str, have))) or 'none'})")
    return problems


def substitute(command: Sequence[str], seeds: Mapping[str, int], config: Mapping[str, Any],
               data: Mapping[str, str]) -> list[str]:
    """The command with its placeholders replaced; `python` is this interpreter (the one the
    run's packages were checked in)."""
    args = [PLACEHOLDER.sub(lambda m: _text(_lookup(m.group(1), m.group(2), seeds, config, data)), a)
            for a in command]
    if args and args[0] in PYTHON_NAMES:
        args[0] = sys.executable
    return args


def _env_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", name).upper()


def script_environment(base: Mapping[str, str], seeds: Mapping[str, int],
                       config: Mapping[str, Any], data: Mapping[str, str]) -> dict[str, str]:
    """The runner's own environment (built from scratch by the parent: the determinism
    settings) plus REPRO_SEED_<NAME>, REPRO_DATA_<NAME> and REPRO_CONFIG (JSON)."""
    env = dict(base)
    env.pop("PYTHONSAFEPATH", None)   # the script's directory is on its sys.path, as usual
    for name, seed in seeds.items():
        env[f"REPRO_SEED_{_env_name(name)}"] = str(seed)
    for name, path in data.items():
        env[f"REPRO_DATA_{_env_name(name)}"] = path
    env["REPRO_CONFIG"] = json.dumps(dict(config), sort_keys=True)
    return env


def working_copy(tree: str, workdir: Path) -> Path:
    """A writable copy of the (read-only) pinned code tree for the script to run and write in."""
    shutil.copytree(tree, workdir, symlinks=True)
    for dirpath, _dirnames, filenames in os.walk(workdir):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                os.chmod(p, stat.S_IMODE(os.lstat(p).st_mode) | 0o200)
    return workdir


def clear_outputs(workdir: Path, outputs: Outputs) -> list[str]:
    """Remove every declared output (code.outputs) that the pinned tree already holds from the
    working copy, before the script runs: a committed metrics or weights file must never stand
    in for what this run writes (a script that writes elsewhere, or nothing, would otherwise
    pass). A link is removed as a link, never followed; a TensorBoard directory goes whole, so
    every event file read afterwards is this run's. Returns the paths removed."""
    removed = []
    root = os.path.realpath(workdir)
    for out in (outputs.metrics, outputs.weights):
        if out is None:
            continue
        path = workdir / out.path
        parent = os.path.realpath(path.parent)
        if parent != root and not parent.startswith(root + os.sep):
            continue   # resolve() refuses it after the run, naming it
        if os.path.islink(path) or path.is_file():
            os.unlink(path)
        elif path.is_dir():
            shutil.rmtree(path)
        else:
            continue
        removed.append(out.path)
    return removed


@dataclass(frozen=True)
class ScriptRun:
    args: list[str]
    returncode: int
    tail: list[str]

    def describe(self) -> str:
        return f"`{' '.join(self.args)}` exited with status {self.returncode}"


def run_script(args: list[str], cwd: Path, env: Mapping[str, str]) -> ScriptRun:
    """Run the command to its end, its output passed through (the parent shows and logs it);
    keep the last lines for errors. ScriptError when it cannot start or exits non-zero."""
    try:
        proc = subprocess.Popen(args, cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    except OSError as exc:
        raise ScriptError(f"code.command cannot start: {args[0]!r}: {exc.strerror or exc}") from None
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    assert proc.stdout is not None
    out = sys.stdout.buffer
    for line in proc.stdout:
        out.write(line)
        out.flush()
        tail.append(line.decode("utf-8", "replace").rstrip("\n"))
    run = ScriptRun(args, proc.wait(), list(tail))
    if run.returncode != 0:
        raise ScriptError(f"{run.describe()}; the last lines of its output are below",
                          "\n".join(run.tail))
    return run
