"""Every spec named, one verdict each, here or on an executor: the loop `repro run|record|verify`
and `repro audit` share (`run_specs`), and the rules a front end used to decide itself — which
engine may run what (`open_executor`), and what `repro verify` does with its modes and `-j`
(`verify_plan`). A front end parses flags, calls these and renders; nothing here prints.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from repro.engines.executor import Executor, SpecJob, run_spec_job
from repro.errors import ReproError

if TYPE_CHECKING:   # loaded by the functions that need them: open_executor connects first
    from repro.commands.progress import Progress
    from repro.discovery import FoundSpec
    from repro.pipeline import Options
    from repro.spec import Spec
    from repro.verdict import Verdict

# What runs one spec: pipeline.run / pipeline.record / commands.check.check / a partial of one.
Action = Callable[["Spec", "Options"], "Verdict"]
ENGINES = ("local", "ray")
RESUME_CHECK_JOBS = 2   # the restored and the uninterrupted run, side by side


@dataclass(frozen=True)
class Engine:
    """Where jobs run (`--engine`, `--address`, `--node-kind`): `local`, or `ray` at `address`
    (None: the cluster this machine belongs to, else a local one started for the command)."""

    name: str = "local"
    address: str | None = None
    node_kinds: tuple[str, ...] = ()


LOCAL = Engine()


def check_engine(engine: Engine, code: str = "pinned") -> None:
    """The jobs an engine can take: Ray runs the pinned commit only (`code`: "pinned" or
    "worktree"; the working tree is not shipped to the cluster)."""
    if engine.name not in ENGINES:
        raise ReproError(f"engine must be one of {', '.join(ENGINES)}, not {engine.name!r}")
    if engine.name != "local" and code == "worktree":
        raise ReproError("--engine ray runs the pinned commit (the working tree is not shipped "
                         "to the cluster); drop --code worktree")


def open_executor(engine: Engine, jobs: int, code: str = "pinned") -> Executor:
    """The executor for `engine` after its rules are checked (`check_engine`): `jobs` at a time
    here, or a Ray cluster (repro/engines/rayexec.py; a local one started for it when none runs
    and no address is named: its `started_local` says so). Connects first, before the caller
    loads anything heavy, so a cluster's workers start meanwhile. The caller closes it."""
    check_engine(engine, code)
    from repro.engines.factory import make_executor
    return make_executor(engine.name, jobs, engine.address, engine.node_kinds)


@dataclass(frozen=True)
class VerifyPlan:
    """What `repro verify` runs for a spec: `mode` "check" (the whole run), "segments"
    (replayed between checkpoints) or "resume" (the restart check, `resume_at`: a step or
    None, the first checkpoint); `jobs`: runs at a time on one spec."""

    mode: str
    jobs: int
    resume_at: int | None = None


def verify_plan(engine: Engine, jobs: int | None, segments: str | None = None,
                resume_check: bool = False, resume_at: int | None = None) -> VerifyPlan:
    """The rules of `repro verify`'s modes: the restart check runs on this machine only, two
    runs at a time unless told (`-j`); segments `-j` at a time (default 1); a plain verify one
    run per spec."""
    if resume_check or resume_at is not None:
        if segments is not None:
            raise ReproError("--segments and --resume-check are separate modes of repro verify; "
                             "choose one")
        if engine.name != "local":
            raise ReproError("--resume-check runs on this machine only (no --engine ray yet)")
        return VerifyPlan("resume", jobs or RESUME_CHECK_JOBS, resume_at)
    if segments is not None:
        return VerifyPlan("segments", jobs or 1)
    return VerifyPlan("check", 1)


def check_env_bisect(engine: Engine, jobs: int) -> None:
    """`bisect --env` builds and verifies one image at a time, on this machine."""
    if engine.name != "local":
        raise ReproError(f"--env builds images on this machine (no --engine {engine.name})")
    if jobs != 1:
        raise ReproError("--env builds and verifies one environment at a time (no -j)")


def bisect_options(options: Options, env: bool = False) -> Options:
    """A bisect's probes: the code pin is what moves (pinned, whatever was asked), side by side
    (no streamed output); with `env` an environment is an image, so they run in docker."""
    return replace(options, code="pinned", echo=False, backend="docker" if env else options.backend)


@dataclass
class SpecsRun:
    """The verdicts of a run of specs, in the order they were named (a spec that could not be
    loaded: an error), and whether every spec finished (False: interrupted)."""

    found: list[FoundSpec]
    verdicts: list[Verdict] = field(default_factory=list)
    complete: bool = True

    @property
    def exit_code(self) -> int:
        return max((v.exit_code for v in self.verdicts), default=0)


def lost_verdict(path: Path, spec: Any, backend: str, message: str | ReproError) -> Verdict:
    """A spec whose job could not finish (a cluster worker died on every try): an error; or
    skipped (NeedsDevice: no node of the cluster has the GPU it needs)."""
    from repro.verdict import error_verdict
    return error_verdict(path, message, spec=spec, backend=backend)


def run_specs(specs: Iterable[Path], options: Options,
              action: Action, *, executor: Executor | None = None,
              progress: Progress | None = None,
              on_done: Callable[[Verdict, int, int], None] | None = None,
              on_verdict: Callable[[Verdict], None] | None = None,
              stopped: str = "the command was stopped") -> SpecsRun:
    """Run `action` on every spec named (directories expanded, duplicate names refused before
    anything runs), one verdict each.

    Without `executor` each spec runs here, in order, and `on_verdict` sees its verdict as it
    finishes (Ctrl-C propagates). With one, every loaded spec is one `SpecJob` on it — a Ray
    cluster ships each spec's project — all submitted at once; `on_done(verdict, finished,
    total)` and `progress` (told of every spec as it is queued, starts and finishes) follow the
    jobs as they end, and `on_verdict` sees the verdicts in spec order once all have finished.
    Interrupted (Ctrl-C): every job is stopped, the specs not finished are errors naming
    `stopped`, `complete` is False and `on_verdict` is not called.
    """
    from repro.backends import KilledBy
    from repro.discovery import discover
    from repro.verdict import Status, error_verdict

    out = SpecsRun(discover(specs))

    def problem(f: FoundSpec) -> Verdict:
        return error_verdict(f.path, f.problem or "", spec=f.spec, backend=options.backend)

    if executor is None:
        for f in out.found:
            verdict = problem(f) if f.problem is not None or f.spec is None \
                else action(f.spec, options)
            out.verdicts.append(verdict)
            if on_verdict:
                on_verdict(verdict)
        return out

    runnable = [i for i, f in enumerate(out.found) if f.problem is None and f.spec is not None]
    first = progress.add([f.spec.name if f.spec is not None and f.spec.name else f.path.stem
                          for f in out.found]) if progress else 0
    if progress:
        for i, f in enumerate(out.found):
            if f.problem is not None:
                progress.done(first + i, problem(f))
    finished = 0

    def done(k: int, verdict: Verdict) -> None:
        nonlocal finished
        finished += 1
        if on_done:
            on_done(verdict, finished + len(out.found) - len(runnable), len(out.found))
        if progress:
            progress.done(first + runnable[k], verdict)

    jobs = [SpecJob(f.spec, options, action, partial(lost_verdict, f.path, f.spec, options.backend))
            for i in runnable if (f := out.found[i]).spec is not None]
    batch = executor.map(run_spec_job, jobs, on_done=done,
                         on_start=(lambda k: progress.start(first + runnable[k])) if progress else None)
    out.complete = batch.complete
    verdicts = {runnable[k]: v for k, v in batch.results.items()}
    running = {runnable[k] for k in batch.interrupted_running}
    for i, f in enumerate(out.found):
        v = verdicts.get(i)
        if f.problem is not None:
            v = problem(f)
        elif v is None:
            v = error_verdict(f.path, f"interrupted before it finished ({stopped})", spec=f.spec,
                              backend=options.backend)
        elif i in running and v.status == Status.ERROR and v.killed_by == KilledBy.SIGNAL:
            v.error = f"interrupted: {stopped} while this spec ran"   # not a crash
        out.verdicts.append(v)
    if out.complete and on_verdict:
        for v in out.verdicts:
            on_verdict(v)
    return out

