"""`repro init`: from a training function to a pinned, recorded spec in one command
(docs/init.md).

The steps, each explained to the user as a `Choice`: pin the code to HEAD (refusing when the
entrypoint's module is not committed there, or differs in the working tree), hash the data
named with `--data`, run the function once as a probe (its platform, its metrics, whether it
keeps gradients and checkpoints, how many steps it trains), write the spec with the choices as
comments (refusing to overwrite a spec or a record), record it (`record.runs` trainings: the
noise floor), and say what to commit and what to add to CI. A failure removes the spec it wrote:
`repro init` can be run again once the cause is fixed, and nothing of the user's is touched.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from repro.errors import ReproError, SpecError
from repro.pins.code import git, head_commit, repo_root
from repro.verdict import Status, Verdict

if TYPE_CHECKING:
    from repro.result import RunResult

PROBE_GRAD_STEP = 0        # the probe keeps this step's gradients: does the function log them?
PROBE_CHECKPOINT_STEP = 1  # ... and this step's state: does it call ctx.checkpoint?


class InitError(ReproError):
    """`repro init` cannot go on; the message says why and what to do."""


@dataclass(frozen=True)
class InitRequest:
    """What `repro init` is asked for (the CLI's flags)."""

    entrypoint: str | None = None                  # module:function in the repository, or ...
    command: tuple[str, ...] | None = None         # ... an unmodified script's command line
    outputs: Mapping[str, Any] = field(default_factory=dict)  # command: {metrics|weights: {path, format}}
    start: Path = Path(".")                        # a directory inside the git repository
    name: str | None = None                        # default: from the entrypoint or script
    spec_path: Path | None = None                  # default: specs/<name>.yaml
    data: Mapping[str, str] = field(default_factory=dict)     # name -> path (repo-relative)
    seeds: Mapping[str, int] = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)
    runs: int | None = None                        # record.runs (default 2)


@dataclass(frozen=True)
class Choice:
    """One decision `repro init` made, and why (printed, and a comment in the spec)."""

    key: str
    value: str
    why: str


@dataclass
class InitResult:
    spec_path: Path
    choices: list[Choice]
    record: Verdict | None = None       # the record's verdict (RECORDED, or why not)
    next_steps: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Recorded (else the spec was removed again and `record` says why)."""
        return self.record is not None and self.record.status == Status.RECORDED


def default_name(entrypoint: str | None, command: Sequence[str] | None = None) -> str:
    """`pkg.train:train` -> `pkg-train`; `pkg.models:fit_mlp` -> `pkg-models-fit_mlp`; a command
    `python scripts/train.py ...` -> `train`."""
    if entrypoint is None:
        scripts = [Path(a).stem for a in command or () if a.endswith(".py")]
        return re.sub(r"[^A-Za-z0-9._-]", "-", scripts[0] if scripts else "script").lstrip(".-_") or "script"
    module, func = entrypoint.split(":")
    parts = [p for p in module.split(".") if p]
    if func not in ("train", "main", parts[-1] if parts else ""):
        parts.append(func)
    # a spec name starts with a letter or digit: `_x.train:train` -> `x-train`
    return re.sub(r"[^A-Za-z0-9._-]", "-", "-".join(parts)).lstrip(".-_") or "spec"


def init(request: InitRequest, options: Any = None) -> InitResult:
    """Pin, probe, write and record a spec for `request.entrypoint` (docs/init.md)."""
    from repro import pipeline
    from repro.spec import ENTRYPOINT_PATTERN

    if (request.entrypoint is None) == (request.command is None):
        raise InitError("give --entrypoint MODULE:FUNCTION or --command 'python train.py ...' "
                        "(one of them)")
    if request.entrypoint is not None and not ENTRYPOINT_PATTERN.match(request.entrypoint):
        raise InitError(f"--entrypoint {request.entrypoint!r} is not 'package.module:function'")
    if request.command is not None and not request.outputs:
        raise InitError("--command needs --metrics PATH:FORMAT and/or --weights PATH:FORMAT: the "
                        "files the script writes (docs/scripts.md)")
    options = options or pipeline.Options()
    root = repo_root(Path(request.start))
    name = request.name or default_name(request.entrypoint, request.command)
    code = ({"entrypoint": request.entrypoint} if request.entrypoint is not None else
            {"command": list(request.command or ()), "outputs": dict(request.outputs)})
    what = request.entrypoint or " ".join(request.command or ())
    spec_path = (root / request.spec_path) if request.spec_path else root / "specs" / f"{name}.yaml"
    spec_path = spec_path.resolve()
    if not spec_path.is_relative_to(root.resolve()):   # refused before any probe runs
        raise InitError(f"--spec {request.spec_path} is outside the repository {root}: a spec lives "
                        "in the repository whose code it pins (e.g. specs/NAME.yaml)")
    _refuse_existing(spec_path, root, name, options)
    commit = head_commit(root)
    reason = (_commit_reason(root, commit, request.entrypoint) if request.entrypoint is not None
              else _command_reason(root, commit, request.command or ()))
    choices = [Choice("code.commit", commit, reason)]
    data = _hash_data(root, request.data, choices)
    seeds = dict(request.seeds)
    choices.append(Choice("seeds", json.dumps(seeds) if seeds else "{}",
                          "as given with --seed" if seeds else
                          "none given: a function that asks for one (ctx.key/ctx.seed) fails "
                          "naming it; pass --seed NAME=VALUE"))

    probe_record: dict[str, Any] = (   # a script reports only what it writes: no ctx to probe
        {} if request.command is not None else
        {"grads": {"steps": [PROBE_GRAD_STEP]}, "checkpoints": {"steps": [PROBE_CHECKPOINT_STEP]}})
    if request.command is not None and "weights" not in request.outputs:
        probe_record["weights"] = "none"
    doc = _spec_doc(name, commit, code, data, seeds, dict(request.config), probe_record)
    try:   # a probe: what the function logs and keeps decides the record block
        probe_spec = _in_memory(doc, root / spec_path.name)   # its directory may not exist yet
        probe = pipeline.execute(pipeline.prepare(probe_spec, options), options).result
    except ReproError as exc:
        raise InitError(f"the probe run of {what} failed; nothing was written:\n"
                        f"{exc}") from None
    record_block = _record_choices(probe, choices)
    if "weights" in probe_record:
        record_block["weights"] = "none"
        choices.append(Choice("record.weights", "none", "the command declares no weights file: "
                              "its metrics are compared (add --weights PATH:FORMAT for weights)"))
    runs = request.runs
    if runs is not None:
        record_block["runs"] = runs
    choices.append(Choice("record.runs", str(runs or 2),
                          "trainings per record; they must agree bitwise (the noise floor), "
                          "so a nondeterministic training is caught now, not in CI"))
    choices.append(Choice("environment", "platform cpu, cpus 1, isa portable",
                          "the defaults: one pinned core, x86-64 code capped at AVX2 so the "
                          "record compares bitwise on hosts with and without AVX-512"))
    doc = _spec_doc(name, commit, code, data, seeds, dict(request.config), record_block)
    _write_spec(spec_path, doc, choices)
    result = InitResult(spec_path, choices)
    try:
        result.record = pipeline.record(spec_path, options)
    finally:
        if not result.ok:
            spec_path.unlink(missing_ok=True)   # nothing half-made is left: run init again
    if not result.ok:
        return result
    rel = spec_path.relative_to(root)
    record_rel = Path(result.record.record_path or "").resolve().relative_to(root).parent
    result.next_steps = [
        f"git add {rel} {record_rel}",
        f'git commit -m "repro: pin and record {name}"',
        "in CI (after installing your project and repro): python -m pytest "
        f"{rel.parent}/   (docs/ci/github-pr.yml is a complete GitHub Actions job)",
    ]
    return result


def _refuse_existing(spec_path: Path, root: Path, name: str, options: Any) -> None:
    from repro.record import record_dir

    if spec_path.exists():
        raise InitError(f"{spec_path} exists; repro init never overwrites a spec (pass --spec "
                        "PATH or --name NAME for a new one, or `repro record` to re-record it)")
    records = record_dir(root, name, "x", options.records_root).parent
    if records.exists() and any(records.iterdir()):
        raise InitError(f"{records} already holds a record named {name!r}; pass --name NAME")


def _commit_reason(root: Path, commit: str, entrypoint: str) -> str:
    """Why HEAD, after checking that the entrypoint's module is there and unchanged."""
    module = entrypoint.split(":")[0].replace(".", "/")
    tracked = git(["ls-tree", "-r", "--name-only", commit], root).stdout.splitlines()
    candidates = [f"{module}.py", f"{module}/__init__.py"]
    found = [c for c in candidates if c in tracked]
    if not found:
        untracked = [c for c in candidates if (root / c).exists()]
        hint = (f"{untracked[0]} exists but is not committed: `git add {untracked[0]} && git "
                "commit`, then run repro init again" if untracked else
                f"neither {' nor '.join(candidates)} is in the repository at {root}")
        raise InitError(f"the entrypoint's module {module!r} is not in the commit the spec would "
                        f"pin (HEAD {commit[:12]}): {hint}")
    status = git(["status", "--porcelain", "--", found[0]], root).stdout.strip()
    if status:
        raise InitError(f"{found[0]} has uncommitted changes; the spec pins commits, not the "
                        f"working tree: commit them, then run repro init again")
    return f"HEAD, which holds {found[0]}; `repro pin` moves it when the code changes"


def _command_reason(root: Path, commit: str, command: Sequence[str]) -> str:
    """Why HEAD, after checking that every file the command names in the repository is in that
    commit and unchanged (the script runs from the pinned tree, not the working tree)."""
    tracked = set(git(["ls-tree", "-r", "--name-only", commit], root).stdout.splitlines())
    named = []
    for arg in command:
        rel = arg.split("=", 1)[-1]
        if "{" in rel or not rel or rel.startswith("-") or Path(rel).is_absolute():
            continue
        if (root / rel).is_file():
            if rel not in tracked:
                raise InitError(f"the command runs {rel}, which is not committed (HEAD "
                                f"{commit[:12]}): `git add {rel} && git commit`, then run repro "
                                "init again")
            if git(["status", "--porcelain", "--", rel], root).stdout.strip():
                raise InitError(f"{rel} has uncommitted changes; the spec pins commits, not the "
                                "working tree: commit them, then run repro init again")
            named.append(rel)
    held = f", which holds {', '.join(named)}" if named else ""
    return f"HEAD{held}; the command runs in a copy of that tree; `repro pin` moves it"


def _hash_data(root: Path, entries: Mapping[str, str], choices: list[Choice]) -> dict[str, dict[str, str]]:
    from repro.pins.data import hash_path, resolve_data_path
    from repro.spec import relative_path

    out = {}
    for data_name, raw in entries.items():
        try:
            rel = relative_path(raw, f"--data {data_name}")
        except ValueError as exc:
            raise InitError(str(exc)) from None
        path = resolve_data_path(root, rel)
        digest = hash_path(path)
        out[data_name] = {"path": rel, "sha256": digest}
        choices.append(Choice(f"data.{data_name}", f"{rel} sha256 {digest[:12]}…",
                              "hashed now; a verify refuses to train on other bytes"))
    return out


def _record_choices(probe: RunResult, choices: list[Choice]) -> dict[str, Any]:
    """record.metrics / grads / checkpoints from what the probe logged and kept."""
    metrics = sorted(probe.metrics)
    last = max((s["steps"][-1] for s in probe.metrics.values() if s["steps"]), default=0)
    block: dict[str, Any] = {}
    if metrics:
        block["metrics"] = metrics
        choices.append(Choice("record.metrics", ", ".join(metrics),
                              f"every metric the function logged (steps 0..{last})"))
    else:
        choices.append(Choice("record.metrics", "(none)", "the function logged no metric with "
                              "ctx.log: only its final weights are compared"))
    if probe.grad_steps:
        steps = sorted({0, last // 2, last})
        block["grads"] = {"steps": steps}
        choices.append(Choice("record.grads", f"steps {steps}", "the function logs gradients: "
                              "first, middle and last step, so a divergence is placed in time "
                              "and in a layer without storing every step"))
    if probe.checkpoints:
        every = max(1, (last + 1) // 4)
        block["checkpoints"] = {"every": every}
        choices.append(Choice("record.checkpoints", f"every {every}", "the function calls "
                              "ctx.checkpoint: four states, so `--segments` and `--resume-check` "
                              "can verify parts of the run (docs/segments.md)"))
    return block


def _spec_doc(name: str, commit: str, code: Mapping[str, Any], data: Mapping[str, Any],
              seeds: Mapping[str, int], config: Mapping[str, Any], record: Mapping[str, Any]
              ) -> dict[str, Any]:
    doc: dict[str, Any] = {"repro": 1, "name": name,
                           "code": {"commit": commit, **code}}
    if data:
        doc["data"] = dict(data)
    doc["seeds"], doc["config"] = dict(seeds), dict(config)
    if record:
        doc["record"] = dict(record)
    return doc


def _in_memory(doc: Mapping[str, Any], spec_path: Path) -> Any:
    """The spec as if it were at `spec_path` (the probe runs before anything is written)."""
    from repro.spec import parse_spec

    spec = parse_spec(dict(doc), file=str(spec_path), lines={}, default_name=str(doc["name"]))
    spec._path = spec_path
    return spec


def _write_spec(path: Path, doc: Mapping[str, Any], choices: Sequence[Choice]) -> None:
    """The spec as YAML, with what init chose and why as comments on top; atomically, and
    never over an existing file."""
    import yaml

    from repro.ioutil import atomic_write_text

    head = ["# Written by `repro init` (docs/init.md). What it chose, and why:"]
    for c in choices:
        head.append(f"#   {c.key}: {c.value} — {c.why}")
    body = "".join(   # code in block style; small mappings and lists of scalars in flow style
        yaml.safe_dump({key: value}, sort_keys=False, width=100,
                       default_flow_style=None if isinstance(value, dict) and not (
                           key == "code" and all(isinstance(v, str) for v in value.values())) else False)
        for key, value in doc.items())
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        raise SpecError("exists; repro init never overwrites a spec", file=str(path))
    atomic_write_text(path, "\n".join(head) + "\n" + body)
