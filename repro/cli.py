"""The `repro` command line: a thin shell over the library that prints verdicts. Each command is
an `add_<cmd>(subparsers)` that declares its flags beside the `cmd_<cmd>(ns)` that parses them
into typed options, calls the library (repro.pipeline, repro.commands: `run_specs`, the engine
and mode rules) and renders the result; `main` turns errors into exit codes.

Exit codes: 0 pass (or done), 1 a mismatch (a verified one: nothing else), 2 an error (bad spec,
broken pin, crash, bad usage), 130 interrupted, 141 the reader of its output went away.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from repro.errors import ReproError

if TYPE_CHECKING:
    from repro.commands.runspecs import Engine
    from repro.engines.executor import Executor
    from repro.interop.publish import SinkOutcome
    from repro.pipeline import Options
    from repro.verdict import Verdict

N = TypeVar("N", int, float)
Sub = Any   # argparse's subparsers action (its class is private)

EXIT_OK, EXIT_ERROR = 0, 2
EXIT_BROKEN_PIPE = 128 + 13   # the shell's status for a process killed by SIGPIPE


# --- typed options from the parsed flags ------------------------------------------------------

def _options(ns: argparse.Namespace, jobs: int = 1) -> Options:
    """The pipeline's Options from the flags every running command has (set_defaults gives a
    command the ones it has no flag for)."""
    from repro.pipeline import Options
    from repro.variation import BASELINE, Variation

    echo = ns.stream if ns.stream is not None else sys.stderr.isatty()
    model = ns.emulate_cpu
    return Options(backend=ns.backend, code=ns.code, platform=ns.platform,
                   variation=Variation(f"cpu={model}", emulate_cpu=model) if model else BASELINE,
                   records_root=Path(ns.records) if ns.records else None,
                   timeout=ns.timeout, echo=echo, compile_cache=ns.compile_cache,
                   confirm=ns.confirm, fail_fast=ns.fail_fast, segments=ns.segments, jobs=jobs)


def _engine_of(ns: argparse.Namespace) -> Engine:
    from repro.commands.runspecs import Engine
    return Engine(ns.engine, ns.address, tuple(ns.node_kind or ()))


def _executor(ns: argparse.Namespace, jobs: int, code: str = "pinned") -> Executor:
    """The Executor `--engine`, `--address` and `--node-kind` ask for (its rules:
    repro/commands/runspecs.py), closed as the command ends (main)."""
    from repro.commands.runspecs import open_executor

    executor = open_executor(_engine_of(ns), jobs, code)
    ns.closing.callback(executor.close)
    if executor.started_local:
        print(f"repro: started a local Ray cluster ({executor.started_local} CPUs) for this command (no "
              "--address and none running); it stops when the command ends", file=sys.stderr,
              flush=True)
    return executor


def _run_each(ns: argparse.Namespace, action: Callable[..., Verdict], jobs: int = 1,
              ship: bool = True) -> int:
    """`run_specs` over the specs named, each verdict printed as it is known; the exit code of
    the worst. With `--engine ray` each spec is one task on the cluster (`ship`: False when
    `action` sends its own tasks), connected first: the workers start while the rest loads."""
    executor = _executor(ns, 1, ns.code) if ship and ns.engine != "local" else None

    from repro.commands.runspecs import run_specs
    from repro.report import render

    result = run_specs([Path(p) for p in ns.specs], _options(ns, jobs), action, executor=executor,
                       on_verdict=lambda v: print(render(v, verbose=ns.verbose), end="", flush=True))
    if not result.complete:
        raise KeyboardInterrupt
    return result.exit_code


# --- option groups several commands share ------------------------------------------------------

def _running_flags(p: argparse.ArgumentParser) -> None:
    """The flags of every command that trains specs as a user would (run, record, verify,
    audit), with the defaults of those it lacks."""
    p.add_argument("--backend", default="local", choices=("local", "docker"))
    p.add_argument("--code", default="pinned", choices=("pinned", "worktree"),
                   help="pinned: the tree at code.commit (default); worktree: this checkout")
    p.add_argument("--platform", metavar="KEY", help="record platform key (default: the "
                   "run's platform: cpu, gpu or tpu)")
    p.add_argument("--records", metavar="DIR", help="records root (default "
                   "<repo>/fixtures/records)")
    p.add_argument("--timeout", type=_positive(float), metavar="S", help="kill the run after S seconds "
                   "(default: the spec's timeout)")
    p.add_argument("--stream", dest="stream", action="store_true", default=None,
                   help="show the training output as it runs (default: on a terminal)")
    p.add_argument("--no-stream", dest="stream", action="store_false")
    p.add_argument("--no-compile-cache", dest="compile_cache", action="store_false",
                   help="do not share JAX's persistent compilation cache between runs")
    p.add_argument("-v", "--verbose", action="store_true", help="show every quantity")


# What a command without these flags runs with (set last: a default set before a flag is added
# would replace the flag's own).
NO_ENGINE = {"engine": "local", "address": None, "node_kind": None}
NOT_VERIFYING = {"confirm": 1, "fail_fast": False, "segments": None, "jobs": None, **NO_ENGINE}


def _emulate_cpu(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--emulate-cpu", metavar="MODEL", help="run the training under `qemu-x86_64 -cpu "
        "MODEL` (e.g. Haswell-noTSX: AVX2+FMA, no AVX-512): what a runner with that CPU would "
        "compute; local backend, x86-64 hosts, needs qemu-user (docs/portability.md)")


def _confirm(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--confirm", type=_count, default=1, metavar="N", help="when a spec fails and no pin "
        "changed, train it N more times to tell nondeterministic from changed (default 1; "
        "0: do not)")


def _engine(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", default="local", choices=("local", "ray"), help="where jobs run: "
                   "local (this machine, -j at a time) or ray (one task per job on a Ray cluster; "
                   "inputs travel through the project's store, docs/ray.md)")
    p.add_argument("--address", metavar="auto|HOST:PORT|ray://HOST:PORT", help="the Ray cluster "
                   "(default: the one this machine belongs to, or $RAY_ADDRESS; with neither, a "
                   "local cluster started for the command)")
    p.add_argument("--node-kind", action="append", metavar="RESOURCE", help="run only on Ray nodes "
                   "with this custom resource (one unit a task; repeatable)")


def _no_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="plain progress lines, one per "
                   "finished job, even on a terminal (they are the default when the output is "
                   "not a terminal, as in CI logs)")


def _specs_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("specs", nargs="+", metavar="SPEC", help="spec file(s) or directories")


def _running(sub: Sub, name: str, help_: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help_, description=help_)


# --- run, record ------------------------------------------------------------------------------

def add_run(sub: Sub) -> None:
    p = _running(sub, "run", "execute specs and print a summary; compare nothing")
    _specs_arg(p)
    _running_flags(p)
    _emulate_cpu(p)
    p.set_defaults(func=cmd_run, **NOT_VERIFYING)


def cmd_run(ns: argparse.Namespace) -> int:
    from repro import pipeline
    return _run_each(ns, pipeline.run)


def add_record(sub: Sub) -> None:
    p = _running(sub, "record", "execute specs and write their recorded versions")
    _specs_arg(p)
    _running_flags(p)
    p.add_argument(
        "--runs", type=_positive(int), metavar="N", help="train N times; the runs must agree "
        "bitwise or nothing is recorded (default: the spec's record.runs, else 2)")
    _emulate_cpu(p)
    p.set_defaults(func=cmd_record, **NOT_VERIFYING)


def cmd_record(ns: argparse.Namespace) -> int:
    import dataclasses

    from repro import pipeline

    def record(spec: Any, options: Options) -> Verdict:
        return pipeline.record(spec, dataclasses.replace(options, runs=ns.runs))
    return _run_each(ns, record)


# --- verify -----------------------------------------------------------------------------------

def add_verify(sub: Sub) -> None:
    p = _running(sub, "verify", "execute specs and compare with their recorded versions "
                 "(exit 0 pass, 1 mismatch, 2 error)")
    _specs_arg(p)
    _running_flags(p)
    _no_progress(p)
    _engine(p)
    _emulate_cpu(p)
    p.add_argument(
        "--fail-fast", action=argparse.BooleanOptionalAction, default=True, help="stop a run at "
        "the first step where a metric is sure to fail the comparison (default: on; docs/failfast.md)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--segments", type=_selection, metavar="all|sample:K[:SEED]|A-B", help="replay the record's "
                     "segments (between its checkpoints) instead of the whole run, each from its "
                     "recorded start state: all of them, K chosen at random (seed reported), or "
                     "those overlapping steps A-B (docs/segments.md)")
    how.add_argument("--resume-check", action="store_true", help="restore the recorded state at "
                     "the first checkpoint (--resume-check-at: at STEP) and require the next "
                     "checkpoint bitwise; names the leaves a restore misses")
    how.add_argument("--resume-check-at", dest="resume_at", type=_resume_step, metavar="STEP",
                     help="the restart check, restored at the checkpoint at STEP "
                     "(also --resume-check=STEP)")
    p.add_argument(
        "-j", "--jobs", type=_positive(int), metavar="N", help="segments (--segments) or runs "
        "(--resume-check: 2) at a time, each on its own cores (default 1)")
    _confirm(p)
    p.set_defaults(func=cmd_verify)


def cmd_verify(ns: argparse.Namespace) -> int:
    from repro.commands.runspecs import verify_plan

    plan = verify_plan(_engine_of(ns), ns.jobs, ns.segments, ns.resume_check, ns.resume_at)
    jobs = ns.jobs or 1   # a spec's options: segments side by side (on Ray, in one task)
    if plan.mode == "resume":
        _no_step_for_a_spec(ns.specs)
        from repro.commands.resume import check_restart
        return _run_each(ns, functools.partial(check_restart, at=plan.resume_at, jobs=plan.jobs),
                         jobs)
    if plan.mode == "check":
        from repro.backends.prestart import ahead  # the child starts while the rest loads
        ahead([Path(p) for p in ns.specs], backend=ns.backend, engine=ns.engine,
              emulate_cpu=ns.emulate_cpu, compile_cache=ns.compile_cache)
        from repro.commands.check import check
        return _run_each(ns, check, jobs)
    executor = _executor(ns, plan.jobs, ns.code)   # -j segments at a time here; on Ray each a task

    from repro.commands.segments import replay_segments
    from repro.report.progress import describe_replay, progress_display

    def by_segments(spec: Any, options: Options) -> Verdict:  # commands.check, with a display
        with progress_display(describe_replay, title=f"segments of {spec.name}",
                              plain=ns.no_progress) as progress:
            return replay_segments(spec, options, executor=executor, progress=progress)
    return _run_each(ns, by_segments, jobs, ship=False)


def _no_step_for_a_spec(specs: list[str]) -> None:
    """`--resume-check 100 specs/x.yaml` (the old spelling): say how to name the step."""
    for name in specs:
        if name.isdigit() and not Path(name).exists():
            raise ReproError(f"{name!r} is not a spec: --resume-check takes no value; to "
                             f"restore at step {name} write --resume-check-at {name} "
                             "(docs/checkpoints.md)")


# --- audit ------------------------------------------------------------------------------------

def add_audit(sub: Sub) -> None:
    p = _running(sub, "audit", "verify every spec under DIR and report (exit 0 all pass, "
                 "1 any fail, 2 any error)")
    p.add_argument("directory", nargs="?", default="specs", metavar="DIR",
                   help="where to look for specs (default: specs/)")
    p.add_argument("-j", "--jobs", type=_positive(int), default=1, metavar="N",
                   help="verify N specs at a time (each run takes environment.cpus cores)")
    p.add_argument("--json", metavar="F", help="write the machine-readable result")
    p.add_argument("--junit", metavar="F", help="write JUnit XML (one case per spec)")
    p.add_argument("--report", metavar="F.html", help="write the HTML report")
    p.add_argument("--history", metavar="DIR", help="keep this audit's JSON in DIR; the "
                   "report shows the last audits per spec")
    p.add_argument("--history-limit", type=_positive(int), default=10, metavar="N")
    _running_flags(p)
    _no_progress(p)
    _engine(p)
    p.add_argument(
        "--segments", type=_selection, metavar="all|sample:K[:SEED]|A-B", help="verify specs whose "
        "record keeps checkpoints by replaying these segments (the others in full)")
    p.add_argument(
        "--fail-fast", action="store_true", default=False, help="stop each run at the first step "
        "where a metric is sure to fail the comparison (default: off, an audit runs to the end)")
    _confirm(p)
    _publishing(p)
    p.set_defaults(func=cmd_audit, emulate_cpu=None)


def _publishing(p: argparse.ArgumentParser) -> None:
    """Where the audit's verdicts go besides its reports (docs/integrations.md)."""
    g = p.add_argument_group("publishing (after the reports are written; a tool that fails is "
                             "a warning, the exit code stays the audit's)")
    g.add_argument("--mlflow", metavar="URI", help="log each verdict as a run to this MLflow "
                   "tracking server (default: [tool.repro] mlflow in pyproject.toml); needs "
                   "repro[mlflow]")
    g.add_argument("--mlflow-experiment", metavar="NAME", help="the MLflow experiment, created "
                   "if absent (default: [tool.repro] mlflow_experiment, else repro-audit)")
    g.add_argument("--no-mlflow", action="store_true", help="do not publish to MLflow even when "
                   "[tool.repro] mlflow is set")
    g.add_argument("--wandb", action="store_true", help="write each verdict as an offline W&B "
                   "run, for `wandb sync` later (nothing is sent); needs repro[wandb]")
    g.add_argument("--wandb-dir", metavar="DIR", help="where the offline runs go: "
                   "DIR/wandb/offline-run-* (default: the current directory)")
    g.add_argument("--wandb-project", metavar="NAME", help="the W&B project (default: "
                   "repro-audit)")


def cmd_audit(ns: argparse.Namespace) -> int:
    if not _output_dirs(("--json", ns.json), ("--junit", ns.junit), ("--report", ns.report)):
        return EXIT_ERROR
    from repro.commands.audit import Publishing, audit_sinks

    # before anything runs: a missing extra or a bad publishing setting is exit 2 now
    sinks = audit_sinks(ns.directory, Publishing(
        ns.mlflow, ns.mlflow_experiment, ns.no_mlflow, ns.wandb, ns.wandb_dir, ns.wandb_project))
    executor = _executor(ns, ns.jobs, ns.code)   # first: a cluster's workers start while the rest loads

    import dataclasses
    import json

    from repro.commands.audit import load_history, publish_audit, run_audit, save_history
    from repro.ioutil import atomic_write_text
    from repro.report import audit_summary
    from repro.report.json import audit_json
    from repro.report.junit import junit_xml
    from repro.report.progress import describe_verdict, progress_display, verdict_line

    # parallel children's output would interleave; it is in each verdict
    options = dataclasses.replace(_options(ns), echo=False)
    with progress_display(describe_verdict, title=f"repro audit {ns.directory}",
                          line=verdict_line, plain=ns.no_progress) as progress:
        audit = run_audit(ns.directory, options, executor=executor, progress=progress)
    print()
    print(audit_summary(audit), end="", flush=True)
    doc = audit_json(audit)
    if ns.json:
        atomic_write_text(Path(ns.json), json.dumps(doc, indent=1, sort_keys=True) + "\n")
    if ns.junit:
        atomic_write_text(Path(ns.junit), junit_xml(audit))
    history = []
    if ns.history:
        save_history(ns.history, doc)
        history = load_history(ns.history, ns.history_limit)
    if ns.report:
        from repro.report.html import render_html
        atomic_write_text(Path(ns.report), render_html(doc, history))
    for flag, path in (("json", ns.json), ("junit", ns.junit), ("report", ns.report)):
        if path:
            print(f"{flag}: {path}")
    if sinks:
        from repro.report.text import verdict_detail

        sys.stdout.flush()
        publish_audit(sinks, audit, doc["results"], report=Path(ns.report) if ns.report else None,
                      describe=verdict_detail, on_outcome=_print_outcome)
    if not audit.complete:
        print("repro: audit interrupted; the reports are marked incomplete", file=sys.stderr)
        return 130
    return audit.exit_code


def _print_outcome(outcome: SinkOutcome) -> None:
    """A tool's runs on stdout, or its failure as a warning on stderr."""
    if outcome.failure:
        print(f"repro: warning: {outcome.warning()}", file=sys.stderr, flush=True)
    else:
        print(outcome.line(), flush=True)


# --- bisect -----------------------------------------------------------------------------------

def add_bisect(sub: Sub) -> None:
    p = sub.add_parser("bisect", help="the first commit whose verify fails between a good and a "
                       "bad commit, or (--env) the smallest package change between two locks "
                       "(exit 0 found, 2 error or only skipped commits left)",
                       description="Verify the spec with its code pinned at commits between "
                       "--good and --bad (data, seeds, config and record as they are), k at a "
                       "time, and name the first commit that fails. With --env, --good and --bad "
                       "are two requirements.lock files (or recipe directories): build images "
                       "from the good lock with subsets of the bad lock's changes and name the "
                       "smallest set that makes the verify fail (ddmin; docs/bisect.md).")
    p.add_argument("spec", metavar="SPEC", help="one spec file (its record is the reference)")
    p.add_argument("--good", required=True, metavar="C1|LOCK_A", help="a commit whose verify "
                   "passes (--env: a lock or recipe dir whose image passes)")
    p.add_argument("--bad", required=True, metavar="C2|LOCK_B", help="a later commit whose "
                   "verify fails (--env: a lock or recipe dir whose image fails)")
    p.add_argument("--env", action="store_true", help="bisect package changes between two "
                   "locked environments instead of commits (docker backend, offline builds)")
    p.add_argument("-j", "--jobs", type=_positive(int), default=1, metavar="K",
                   help="verify K commits at a time: n commits take ⌈log_(K+1) n⌉ rounds")
    p.add_argument("--confirm", type=_count, default=1, metavar="N", help="train a failing "
                   "commit N more times; one whose runs differ is nondeterministic and skipped "
                   "(default 1; 0: do not)")
    p.add_argument("--backend", default="local", choices=("local", "docker"))
    p.add_argument("--platform", metavar="KEY", help="record platform key (default: the run's)")
    p.add_argument("--records", metavar="DIR", help="records root (default <repo>/fixtures/records)")
    p.add_argument("--timeout", type=_positive(float), metavar="S", help="kill a run after S "
                   "seconds (default: the spec's timeout); a commit that times out is skipped")
    p.add_argument("--no-compile-cache", dest="compile_cache", action="store_false")
    p.add_argument("--json", metavar="F", help="write the machine-readable result")
    p.add_argument("-v", "--verbose", action="store_true", help="list every failing quantity")
    _no_progress(p)
    _engine(p)
    p.set_defaults(func=cmd_bisect, stream=False, code="pinned", emulate_cpu=None,
                   fail_fast=False, segments=None)


def cmd_bisect(ns: argparse.Namespace) -> int:
    from repro.commands.runspecs import bisect_options, check_env_bisect

    if ns.env:
        check_env_bisect(_engine_of(ns), ns.jobs)
    if not _output_dirs(("--json", ns.json)):
        return EXIT_ERROR
    if ns.env:
        return _env_bisect(ns, bisect_options(_options(ns), env=True))
    executor = _executor(ns, ns.jobs)   # first: a cluster's workers start while the rest loads
    options = bisect_options(_options(ns))

    from repro.commands.bisect import bisect
    from repro.report.bisect import bisection_json, render_bisection, round_line
    from repro.report.progress import describe_verdict, progress_display

    with progress_display(describe_verdict, title=f"repro bisect {ns.spec}", line=None,
                          plain=ns.no_progress) as progress:   # plain: the round lines only
        result = bisect(ns.spec, ns.good, ns.bad, options, executor=executor,
                        on_round=lambda r: progress.print(round_line(r)), progress=progress)
    return _result(render_bisection(result, verbose=ns.verbose), ns.json,
                   lambda: bisection_json(result), result.exit_code)


def _env_bisect(ns: argparse.Namespace, options: Options) -> int:
    from repro.commands.envbisect import env_bisect
    from repro.report.bisect import env_bisection_json, env_probe_line, render_env_bisection

    build_echo = (lambda line: print(line, file=sys.stderr, flush=True)) if ns.verbose else None
    result = env_bisect(ns.spec, ns.good, ns.bad, options, echo=build_echo,
                        on_probe=lambda p: print(env_probe_line(p), flush=True))
    return _result(render_env_bisection(result, verbose=ns.verbose), ns.json,
                   lambda: env_bisection_json(result), result.exit_code)


def _output_dirs(*flags: tuple[str, str | None]) -> bool:
    """Create the directories of the report files asked for, before any training: a report that
    cannot be written would lose the work. False (after saying why) when one cannot be made."""
    for flag, value in flags:
        if value:
            try:
                Path(value).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                print(f"repro: {flag} {value}: cannot create its directory ({exc.strerror}); "
                      "choose another path", file=sys.stderr)
                return False
    return True


def _result(text: str, json_path: str | None, doc: Callable[[], Any], exit_code: int) -> int:
    """Print a finished command's result and write its JSON (atomically) when asked."""
    import json

    from repro.ioutil import atomic_write_text

    print()
    print(text, end="", flush=True)
    if json_path:
        atomic_write_text(Path(json_path), json.dumps(doc(), indent=1) + "\n")
        print(f"json: {json_path}")
    return exit_code


# --- calibrate --------------------------------------------------------------------------------

def add_calibrate(sub: Sub) -> None:
    p = sub.add_parser("calibrate", help="run a spec under every variation this host can do "
                       "and compare each with the spec as pinned; --write sets measured "
                       "tolerances", description="Run SPEC as pinned (the baseline) and under "
                       "each variation this host can do — XLA ISA ceilings, core counts, compile "
                       "cache off and warm, PYTHONHASHSEED, reversed directory listings — compare "
                       "every quantity with the baseline bitwise, name the variations that break "
                       "it and propose tolerances: the largest deviation × 1.5, with a floor "
                       "(docs/calibrate.md). Exit 0 done, 2 error.")
    p.add_argument("spec", metavar="SPEC", help="one spec file")
    p.add_argument("--write", action="store_true", help="set the proposed tolerances in the "
                   "spec, keeping its comments")
    p.add_argument("-j", "--jobs", type=_positive(int), metavar="N", help="runs at a time "
                   "(default: cores // environment.cpus)")
    p.add_argument("--variations", metavar="KINDS", help="only these kinds, comma-separated: "
                   "isa, cpus, compile-cache, hash-seed, listing, gpu-ops, cpu (default: all but cpu, "
                   "whose runs on emulated CPUs are 20-50x slower)")
    p.add_argument("--meshes", metavar="SHAPES", help="instead, run the spec on each of these "
                   "meshes (sizes in environment.mesh's axis order, e.g. 8x1,4x2,2x4; same devices "
                   "and global batch); --write sets tolerance.mesh (docs/sharding.md)")
    p.add_argument("--json", metavar="F", help="write the machine-readable result")
    p.add_argument("--backend", default="local", choices=("local", "docker"))
    p.add_argument("--timeout", type=_positive(float), metavar="S", help="kill a run after S "
                   "seconds (default: the spec's timeout)")
    p.add_argument("-v", "--verbose", action="store_true", help="show every quantity of every "
                   "variation, and the output of failed runs")
    _no_progress(p)
    p.set_defaults(func=cmd_calibrate)


def cmd_calibrate(ns: argparse.Namespace) -> int:
    import json

    from repro.commands.calibrate import calibrate
    from repro.errors import RunError
    from repro.ioutil import atomic_write_text
    from repro.pipeline import Options
    from repro.report.calibrate import calibration_json, render_calibration
    from repro.report.progress import describe_variation, progress_display, variation_line

    options = Options(backend=ns.backend, timeout=ns.timeout)
    only = [k.strip() for k in ns.variations.split(",") if k.strip()] if ns.variations else None
    try:
        with progress_display(describe_variation, title=f"repro calibrate {ns.spec}",
                              line=variation_line, plain_file=sys.stderr, plain=ns.no_progress) as progress:
            cal = calibrate(ns.spec, options, jobs=ns.jobs, only=only, write=ns.write,
                            progress=progress, meshes=ns.meshes)
    except RunError as exc:  # the baseline failed: its output says why
        print(f"repro: error: {exc}", file=sys.stderr)
        if exc.detail.strip():
            print(exc.detail.rstrip(), file=sys.stderr)
        return EXIT_ERROR
    print(render_calibration(cal, verbose=ns.verbose), end="", flush=True)
    if ns.json:
        atomic_write_text(Path(ns.json), json.dumps(calibration_json(cal), indent=1,
                                                    sort_keys=True) + "\n")
        print(f"json: {ns.json}")
    if cal.write_error:
        print(f"repro: error: {cal.write_error}", file=sys.stderr)
    return cal.exit_code


# --- init -------------------------------------------------------------------------------------

def add_init(sub: Sub) -> None:
    p = sub.add_parser("init", help="write a spec for a training function with its pins filled, "
                       "record it and print what to add to CI (docs/init.md)")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--entrypoint", metavar="MODULE:FUNCTION",
                     help="the training function, train(ctx), in this git repository")
    how.add_argument("--command", metavar="'python train.py ...'", help="an unmodified script's "
                     "command line ({config.x}, {seeds.y} placeholders; docs/scripts.md)")
    p.add_argument("--metrics", metavar="PATH:FORMAT", help="with --command: the metrics file it "
                   "writes (jsonl, csv, tensorboard)")
    p.add_argument("--weights", metavar="PATH:FORMAT", help="with --command: the weights it "
                   "writes (orbax, npz, safetensors)")
    p.add_argument("--name", help="the spec's name (default: from the entrypoint)")
    p.add_argument("--spec", metavar="PATH", help="where to write it, relative to the repository "
                   "root (default: specs/NAME.yaml); never overwritten")
    p.add_argument("--data", action="append", default=[], metavar="NAME=PATH",
                   help="a data file or directory the training reads (repeatable); hashed")
    p.add_argument("--seed", action="append", default=[], metavar="NAME=INT",
                   help="a named seed (ctx.key(NAME), ctx.seed(NAME)); repeatable")
    p.add_argument("--config", action="append", default=[], metavar="KEY=VALUE",
                   help="a config entry (ctx.config[KEY]; VALUE read as YAML); repeatable")
    p.add_argument("--runs", type=_positive(int), metavar="N", help="record.runs: trainings "
                   "that must agree (default 2)")
    p.add_argument("--stream", dest="stream", action="store_true", default=None,
                   help="show the training output as it runs (default: on a terminal)")
    p.add_argument("--no-stream", dest="stream", action="store_false")
    p.set_defaults(func=cmd_init)


def cmd_init(ns: argparse.Namespace) -> int:
    import yaml

    from repro.commands.init import InitRequest, init
    from repro.pipeline import Options
    from repro.report import render

    def pairs(items: list[str], flag: str) -> dict[str, str]:
        out = {}
        for item in items:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise ReproError(f"{flag} {item!r}: expected NAME=VALUE")
            out[key] = value
        return out
    seeds = {}
    for key, value in pairs(ns.seed, "--seed").items():
        if not value.isdigit():
            raise ReproError(f"--seed {key}={value}: a seed is a non-negative integer")
        seeds[key] = int(value)
    config = {k: yaml.safe_load(v) for k, v in pairs(ns.config, "--config").items()}
    echo = ns.stream if ns.stream is not None else sys.stderr.isatty()
    import shlex

    outputs = {}
    for kind, value in (("metrics", ns.metrics), ("weights", ns.weights)):
        if value is not None:
            path, sep, fmt = value.rpartition(":")
            if not sep or not path:
                raise ReproError(f"--{kind} {value!r}: expected PATH:FORMAT (docs/scripts.md)")
            outputs[kind] = {"path": path, "format": fmt}
    request = InitRequest(entrypoint=ns.entrypoint, name=ns.name, outputs=outputs,
                          command=tuple(shlex.split(ns.command)) if ns.command else None,
                          spec_path=Path(ns.spec) if ns.spec else None,
                          data=pairs(ns.data, "--data"), seeds=seeds, config=config, runs=ns.runs)
    result = init(request, Options(echo=echo))
    print(f"repro init: {result.spec_path}")
    for c in result.choices:
        print(f"  {c.key}: {c.value}\n      {c.why}")
    assert result.record is not None
    print(render(result.record), end="")
    if not result.ok:
        print("repro init: nothing recorded, the spec was removed again; fix the cause above and "
              "run repro init again", file=sys.stderr)
        return max(result.record.exit_code, EXIT_ERROR)
    print("Next:")
    for line in result.next_steps:
        print(f"  {line}")
    return EXIT_OK


# --- import -----------------------------------------------------------------------------------

def add_import(sub: Sub) -> None:
    p = sub.add_parser("import", help="build a recorded version from a run another tool tracked "
                       "(docs/integrations.md)")
    tools = p.add_subparsers(dest="import_tool", required=True, metavar="TOOL")
    m = tools.add_parser(
        "mlflow", help="an MLflow run (or the run behind a registered model version): its "
        "metric histories, final weights from an artifact, commit and params",
        description="Import an MLflow run repro never recorded: the spec is filled and checked "
        "against the run (commit, config, record.metrics), and its record written with the "
        "run's metrics and weights, no environment fingerprint (exit 0 imported, 2 error)")
    m.add_argument("ref", metavar="RUN_ID|models:/NAME/VERSION|models:/NAME@ALIAS")
    m.add_argument("--spec", required=True, metavar="PATH", help="the spec verified against "
                   "the record (with --from-project: the new spec to write)")
    m.add_argument("--tracking-uri", metavar="URI", help="the MLflow tracking server (default "
                   "$MLFLOW_TRACKING_URI, else [tool.repro] mlflow in pyproject.toml)")
    m.add_argument("--weights", metavar="ARTIFACT_PATH", help="the artifact holding the final "
                   "weights: .npz, .safetensors or an Orbax checkpoint directory (default: the "
                   "run's one artifact in such a format)")
    m.add_argument("--from-project", action="store_true", help="write a new command-form spec "
                   "from the entry point in the run's MLproject and its params")
    m.add_argument("--metrics-file", type=_output_file, metavar="PATH:FORMAT", help="with "
                   "--from-project: the metrics file the script writes (jsonl, csv, tensorboard)")
    m.add_argument("--weights-file", type=_output_file, metavar="PATH:FORMAT", help="with "
                   "--from-project: the weights the script writes (npz, safetensors, orbax)")
    m.add_argument("--platform", default="cpu", metavar="KEY", help="the record's platform key "
                   "(default cpu)")
    m.add_argument("--records", metavar="DIR", help="records root (default "
                   "<repo>/fixtures/records)")
    m.add_argument("--overwrite", action="store_true", help="let the run's commit and params "
                   "replace the spec's where they differ, and replace an existing record")
    m.set_defaults(func=cmd_import_mlflow)


def cmd_import_mlflow(ns: argparse.Namespace) -> int:
    from repro.commands.importrun import ImportRequest, import_mlflow
    from repro.report.importrun import render_import

    request = ImportRequest(ref=ns.ref, spec=Path(ns.spec), tracking_uri=ns.tracking_uri,
                            weights=ns.weights, from_project=ns.from_project,
                            metrics_file=ns.metrics_file, weights_file=ns.weights_file,
                            platform=ns.platform, overwrite=ns.overwrite,
                            records_root=Path(ns.records) if ns.records else None)
    print(render_import(import_mlflow(request)), end="")
    return EXIT_OK


# --- hash, pin, diff, schema, env build ---------------------------------------------------------

def add_hash(sub: Sub) -> None:
    p = sub.add_parser("hash", help="sha256 of files or directories, as a spec pins them")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.set_defaults(func=cmd_hash)


def cmd_hash(ns: argparse.Namespace) -> int:
    from repro.pins.data import hash_paths

    for path, digest in hash_paths(ns.paths):
        print(f"{digest}  {path}")
    return EXIT_OK


def add_pin(sub: Sub) -> None:
    p = sub.add_parser("pin", help="rewrite specs' code commit and data hashes to the current ones")
    p.add_argument("specs", nargs="+", metavar="SPEC")
    p.add_argument("--commit", help="pin this full commit instead of HEAD")
    p.set_defaults(func=cmd_pin)


def cmd_pin(ns: argparse.Namespace) -> int:
    from repro.commands.repin import pin_spec
    from repro.discovery import expand

    for path in expand(Path(p) for p in ns.specs):
        changes, warnings = pin_spec(path, commit=ns.commit)
        for w in warnings:
            print(f"warning: {w}", file=sys.stderr)
        if not changes:
            print(f"{path}: already pinned to the current commit and data")
        for key, old, new in changes:
            print(f"{path}: {key}: {old or '(unset)'} -> {new}")
    return EXIT_OK


def add_diff(sub: Sub) -> None:
    p = sub.add_parser("diff", help="compare two recorded versions with a spec's tolerances")
    p.add_argument("record_a", metavar="RECORD_A")
    p.add_argument("record_b", metavar="RECORD_B")
    p.add_argument("--spec", help="take tolerances from this spec (default: RECORD_B's)")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_diff)


def cmd_diff(ns: argparse.Namespace) -> int:
    from repro.changes import diff_records
    from repro.report import render

    verdict = diff_records(ns.record_a, ns.record_b, ns.spec)
    print(render(verdict, verbose=ns.verbose), end="")
    return verdict.exit_code


def add_schema(sub: Sub) -> None:
    p = sub.add_parser("schema", help="print the spec's JSON Schema")
    p.set_defaults(func=cmd_schema)


def cmd_schema(ns: argparse.Namespace) -> int:
    import json

    from repro.spec import spec_json_schema
    print(json.dumps(spec_json_schema(), indent=2))
    return EXIT_OK


def add_env(sub: Sub) -> None:
    p = sub.add_parser("env", help="environment images (docker backend)")
    env_sub = p.add_subparsers(dest="env_command", required=True, metavar="ENV_COMMAND")
    p = env_sub.add_parser("build", help="build an image offline from a recipe (Dockerfile + "
                           "hashed requirements.lock + recipe.yaml); last line printed: "
                           "NAME@sha256:<64 hex>")
    p.add_argument("recipe", metavar="RECIPE_DIR")
    p.set_defaults(func=cmd_env_build)


def cmd_env_build(ns: argparse.Namespace) -> int:
    from repro.docker.build import main_build
    return main_build(ns.recipe)


# --- push, pull, store verify -----------------------------------------------------------------

def _store_flags(p: argparse.ArgumentParser, default_jobs: int | None) -> None:
    p.add_argument("specs", nargs="*", metavar="SPEC", help="spec files or directories "
                   "(default: specs/)")
    p.add_argument("--records", metavar="DIR", help="records root (default "
                   "<repo>/fixtures/records)")
    p.add_argument("-j", "--jobs", type=_positive(int), default=default_jobs, metavar="N",
                   help="transfers (or hashes) at a time")


def add_push(sub: Sub) -> None:
    p = sub.add_parser("push", help="upload the blobs the specs' records point to, and the "
                       "specs' data files (those without url: or dvc:), that the store remote "
                       "lacks (exit 0 done, 2 missing or damaged blobs)")
    _store_flags(p, 8)
    p.set_defaults(func=cmd_push)


def add_pull(sub: Sub) -> None:
    p = sub.add_parser("pull", help="download the specs' large blobs this machine lacks from the "
                       "store remote, re-hashed (exit 0 done, 2 missing or corrupt blobs)")
    _store_flags(p, 8)
    p.set_defaults(func=cmd_pull)


def add_store(sub: Sub) -> None:
    p = sub.add_parser("store", help="the blob store (docs/store.md)")
    store_sub = p.add_subparsers(dest="store_command", required=True, metavar="STORE_COMMAND")
    p = store_sub.add_parser("verify", help="re-hash the store's blobs and name missing and "
                             "corrupt ones (exit 0 all intact, 2 any missing or corrupt)")
    _store_flags(p, None)
    p.add_argument("--sample", type=_fraction, metavar="P", help="re-hash a random fraction P "
                   "of the blobs (the seed is printed)")
    p.add_argument("--seed", type=int, help="the seed of --sample (default: a random one)")
    p.add_argument("--remote", action="store_true", help="verify the remote's blobs instead "
                   "of this machine's")
    p.set_defaults(func=cmd_store_verify)


def _print_transfer(t: Any) -> int:
    for problem in t.problems:
        print(f"repro: {problem.what}: {problem.message}", file=sys.stderr)
    print(t.summary(), flush=True)
    return int(t.exit_code)


def cmd_push(ns: argparse.Namespace) -> int:
    from repro.discovery import named_or_default, projects
    from repro.store.sync import push

    code = EXIT_OK
    for proj in projects(named_or_default(ns.specs), Path(ns.records) if ns.records else None,
                         data=True):
        code = max(code, _print_transfer(push(proj, jobs=ns.jobs)))
    return code


def cmd_pull(ns: argparse.Namespace) -> int:
    from repro.discovery import named_or_default, projects
    from repro.store.sync import pull

    code = EXIT_OK
    for proj in projects(named_or_default(ns.specs), Path(ns.records) if ns.records else None):
        code = max(code, _print_transfer(pull(proj, jobs=ns.jobs)))
    return code


def cmd_store_verify(ns: argparse.Namespace) -> int:
    from repro.discovery import named_or_default, projects
    from repro.store.sync import verify

    specs = named_or_default(ns.specs, required=False)
    projs = projects(specs, Path(ns.records) if ns.records else None) if specs else []
    return _print_transfer(verify(projs, sample=ns.sample, seed=ns.seed, use_remote=ns.remote,
                                  jobs=ns.jobs))


# --- argparse types ---------------------------------------------------------------------------

def _output_file(text: str) -> Any:
    """An argparse type: PATH:FORMAT, a file a script writes (docs/scripts.md)."""
    from repro.commands.importrun import OutputFile

    path, sep, fmt = text.rpartition(":")
    if not sep or not path or not fmt:
        raise argparse.ArgumentTypeError(f"{text!r}: expected PATH:FORMAT (out/metrics.jsonl:jsonl)")
    return OutputFile(path, fmt)


def _fraction(text: str) -> float:
    """An argparse type: a fraction in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def _positive(kind: Callable[[str], N]) -> Callable[[str], N]:
    """An argparse type: a number of `kind` greater than zero."""
    def parse(text: str) -> N:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
        return value
    return parse


def _count(text: str) -> int:
    """An argparse type: a whole number, 0 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _selection(text: str) -> str:
    from repro.commands.segmentplan import parse_selection
    try:
        return parse_selection(text).text
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _resume_step(text: str) -> int:
    """An argparse type: the step of --resume-check-at, a checkpoint after 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a step number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("the step to restore from must be a checkpoint after 0")
    return value


# --- the parser and main ----------------------------------------------------------------------

COMMANDS = (add_run, add_record, add_verify, add_audit, add_calibrate, add_bisect, add_init,
            add_import, add_hash, add_pin, add_diff, add_schema, add_env, add_push, add_pull, add_store)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="repro", description="Prove JAX training results "
                                     "reproduce from their pinned code, data and environment.")
    parser.add_argument("--version", action="version", version=f"repro {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def _spelled(argv: list[str]) -> list[str]:
    """`repro verify ... --resume-check=STEP` (a flag that takes no value, given one) is
    `--resume-check-at STEP`; `--resume-check=first` is `--resume-check`."""
    if "verify" not in argv:
        return argv
    out = argv[:argv.index("verify") + 1]
    for k, arg in enumerate(argv[len(out):], start=len(out)):
        if arg == "--":
            out.extend(argv[k:])
            break
        if arg.startswith("--resume-check="):
            step = arg.partition("=")[2]
            arg = "--resume-check" if step == "first" else f"--resume-check-at={step}"
        out.append(arg)
    return out


def _version() -> str:
    import repro
    return repro.__version__


def main(argv: list[str] | None = None) -> int:
    from repro.signals import sigterm_interrupts

    parser = build_parser()
    ns = parser.parse_args(_spelled(sys.argv[1:] if argv is None else list(argv)))
    try:
        with sigterm_interrupts(), contextlib.ExitStack() as ns.closing:
            # a CI job's kill: children killed, reports written; executors closed at the end
            code: int = ns.func(ns)
        sys.stdout.flush()
        _quick_exit()
        return code
    except ReproError as exc:
        print(f"repro: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("repro: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _closed_pipe()
    except Exception:  # a bug in repro: say so, exit 2 (1 means a verified mismatch only)
        import traceback
        traceback.print_exc()
        print("repro: internal error (a bug in repro: please report it with the traceback "
              "above)", file=sys.stderr)
        return EXIT_ERROR


def _quick_exit() -> None:
    """Let the interpreter's exit skip collecting what it is about to free anyway (~0.2 s once
    ray, grpc and jax's modules are loaded): `gc.freeze` moves every object out of the
    collector's reach; files are still closed as modules are torn down. Registered to run at
    exit only, so a process that calls `main` and goes on keeps collecting as before."""
    import atexit
    import gc

    atexit.unregister(gc.freeze)   # once, however many times main runs in one process
    atexit.register(gc.freeze)


def _closed_pipe() -> int:
    """The reader went away (`repro verify … | head -1`): like other CLIs, stop quietly. stdout
    now points at /dev/null, so the interpreter's final flush cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
