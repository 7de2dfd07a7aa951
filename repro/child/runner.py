"""The child side of a run: `python -P -m repro.child.runner JOB_JSON OUT_DIR [INPUT_DIR]`.

Runs in a fresh process (or container) whose environment the parent built explicitly. It pins the
CPU affinity, imports jax (the determinism settings are already in the environment), takes the
fingerprint, imports the training entrypoint from the code tree, calls `train(ctx)` and writes
`run.json` + `arrays.npz` into OUT_DIR. User code and jax state live only here.

Exit status: 0 ok (or stopped by fail-fast: run.json status "stopped"), 3 the run failed
(run.json says why); anything else is a crash before run.json could be written (the parent
shows the output).

A multi-process run (`environment.processes` > 1, docs/sharding.md) starts this runner once per
process, each with its own job (`process_id`, `coordinator`); they join with
`jax.distributed.initialize` and run the same code, so every collective (a gather of a value
spread over processes) is entered by all of them. Only process 0 writes OUT_DIR; the others get
a scratch OUT_DIR and read the parent's inputs (fail-fast arrays, a restored state) from
INPUT_DIR, and print a failure to stderr, since nobody reads their run.json.
"""
from __future__ import annotations

import importlib
import math
import os
import sys
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import repro  # the harness, imported before the code tree is put on sys.path
from repro.ioutil import write_json_atomic, write_npz_atomic
from repro.job import EarlyStart, Job, Outputs

EXIT_FAILED = 3


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    t_start = time.perf_counter()
    from repro.proctree import become_subreaper, kill_descendants
    become_subreaper()  # orphans of what the training starts come back to this process
    early: EarlyStart | None = None
    started: _Started | _Failure | None = None
    waited = 0.0
    if argv and argv[0] == "--early":   # started ahead of its job (repro/backends/prestart.py)
        early = EarlyStart.read(Path(argv[1]))
        try:
            started = _start(early.parent_pid, False, early.cpus, early.cpu_slot, None, early.isa,
                             dict(early.settings), early.xla_flags)
        except _Failure as f:   # said in the run's run.json, once there is a run
            started = f
        t_wait = time.perf_counter()
        line = sys.stdin.readline()   # "JOB<TAB>OUT_DIR": the job is ready
        if not line.strip():   # the repro command did not need this run, or is gone
            os._exit(0)
        waited = time.perf_counter() - t_wait
        argv = line.rstrip("\n").split("\t")
    job = Job.read(Path(argv[0]))
    run_dir = Path(argv[1])
    inputs = Path(argv[2]) if len(argv) > 2 else run_dir
    result: dict[str, Any] = {"status": "error", "timings": {}, "harness": repro.__version__}
    if early is not None:
        result["timings"]["waited_for_job_s"] = waited
    try:
        if early is not None:
            if EarlyStart.of(job) != early:   # the parent checks this before handing it over
                raise _Failure(kind="harness", message=f"the job handed to a runner started "
                               f"early does not match its start ({EarlyStart.of(job)} != {early})")
            os.chdir(job.tree)   # where a runner started for this job would have started
        _run(job, run_dir, inputs, result, started)
    except _Failure as f:
        result.update(status="error", error=f.info)
    except BaseException as exc:  # a bug in the harness itself: report, never hide
        result.update(status="error", error={"kind": "harness", "type": type(exc).__name__,
                                             "message": str(exc),
                                             "traceback": traceback.format_exc()})
    left = kill_descendants(os.getpid(), reap=True)  # nothing the training started outlives the run
    if left:
        result["leftover_processes"] = left
    result["timings"]["total_s"] = time.perf_counter() - t_start - waited
    write_json_atomic(run_dir / "run.json", result)
    ok = result["status"] in ("ok", "stopped")
    if job.processes > 1:
        _leave_distributed(job, ok, result)
    return 0 if ok else EXIT_FAILED


def _leave_distributed(job: Job, ok: bool, result: dict[str, Any]) -> None:
    """A process of a multi-process run: a failure goes to stderr (the parent shows this
    process's output tail; its run.json is scratch unless it is process 0). A success waits in
    jax.distributed.shutdown's barrier for the others, so process 0, which holds the
    coordinator, outlives every process still talking to it."""
    if not ok:
        err = result.get("error") or {}
        print(f"repro: process {job.process_id} of {job.processes} failed: "
              f"{err.get('message', '')}\n{err.get('traceback') or ''}", file=sys.stderr, flush=True)
        return
    try:
        import jax
        jax.distributed.shutdown()
    except Exception as exc:   # the others are gone already: the parent judges by exit codes
        print(f"repro: process {job.process_id}: jax.distributed.shutdown: {exc}", file=sys.stderr)


class _Failure(Exception):
    def __init__(self, **info):
        super().__init__(info.get("message"))
        self.info = info


def _die_with_parent(parent_pid: int | None) -> None:
    """Ask Linux to SIGKILL this process when the repro process that started it dies: the child
    runs in its own session (so a Ctrl-C is the parent's to handle), and a SIGKILLed parent
    must not leave a training run behind."""
    if not parent_pid or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(EXIT_FAILED)


def _die_on_stdin_eof() -> None:
    """The docker backend's version of _die_with_parent: the repro process holds the
    container's stdin open (StdinOnce), so EOF on stdin means it died (even by SIGKILL)."""
    import threading

    def watch():
        try:
            while sys.stdin.buffer.read(4096):
                pass
        except (OSError, ValueError):
            pass
        os._exit(EXIT_FAILED)

    threading.Thread(target=watch, daemon=True, name="repro-parent-watch").start()


def _reverse_listings() -> None:
    """calibrate's listing-order variation: os.listdir and os.scandir (so pathlib, glob and
    os.walk) return entries in the reverse of the filesystem's order. Code that sorts what it
    lists is unaffected; code that trusts the order shows it here."""
    listdir, scandir = os.listdir, os.scandir

    class _Reversed:
        def __init__(self, entries: list[Any]):
            self._it = iter(entries)

        def __iter__(self) -> _Reversed:
            return self

        def __next__(self) -> Any:
            return next(self._it)

        def __enter__(self) -> _Reversed:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def close(self) -> None:
            return None

    def reversed_listdir(path: Any = ".") -> list[Any]:
        return listdir(path)[::-1]

    def reversed_scandir(path: Any = ".") -> _Reversed:
        with scandir(path) as it:
            return _Reversed(list(it)[::-1])

    os.listdir, os.scandir = reversed_listdir, reversed_scandir  # type: ignore[assignment]


def _join(job: Job) -> None:
    """Join the run's other processes (environment.processes > 1) before any jax computation:
    CPU collectives over gloo, the coordinator at the address the parent chose."""
    import jax

    if job.command is not None:
        raise _Failure(kind="environment", message="environment.processes > 1 runs a train(ctx) "
                       "entrypoint; an unmodified script (code.command) starts its own processes: "
                       "set processes to 1")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator_address=job.coordinator, num_processes=job.processes,
                                   process_id=job.process_id)
    except Exception as exc:
        raise _Failure(kind="environment", message=f"process {job.process_id} of {job.processes} "
                       f"could not join the coordinator at {job.coordinator}: "
                       f"{type(exc).__name__}: {exc}") from None


@dataclass
class _Started:
    """What the runner did before its training could start: the cores it is pinned to, the
    compilation-cache entries it seeded, the settings in force and jax imported."""

    cpus: list[int]
    seeded: set[str]
    settings: dict[str, str]
    isa_notes: list[str]
    import_s: float   # seconds jax's import took


def _start(parent_pid: int | None, watch_stdin: bool, cpus_wanted: int, cpu_slot: int | None,
           cache_seed: str | None, isa: str, settings: Mapping[str, str],
           xla_flags: tuple[str, ...]) -> _Started:
    """Everything before the training that needs only the environment: die with the parent,
    pin the cores, put environment.isa's recipe into os.environ, import jax."""
    from repro.child.fingerprint import pick_cpus

    _die_with_parent(parent_pid)
    if watch_stdin:
        _die_on_stdin_eof()

    try:
        cpus = pick_cpus(cpus_wanted, cpu_slot)
    except RuntimeError as exc:
        raise _Failure(kind="environment", message=str(exc)) from None
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cpus)

    seeded = _seed_compile_cache(cache_seed)
    from repro.child.portable import UnknownFlag, apply
    try:   # environment.isa for this CPU and this jaxlib, put into os.environ before jax loads
        in_force, isa_notes = apply(isa, settings, xla_flags)
    except UnknownFlag as exc:
        raise _Failure(kind="environment", message=f"environment.xla_flags: {exc} is not a flag of "
                       "this jaxlib (XLA would abort on it); remove it, or pin a jax that has it") from None
    t0 = time.perf_counter()
    import jax  # noqa: F401  (settings come from the environment)
    import numpy  # noqa: F401
    return _Started(cpus, seeded, in_force, isa_notes, time.perf_counter() - t0)


def _run(job: Job, run_dir: Path, inputs: Path, result: dict[str, Any],
         started: _Started | _Failure | None = None) -> None:
    from repro.child.fingerprint import check_packages, fingerprint

    if started is None:
        started = _start(job.parent_pid, job.watch_stdin, job.cpus, job.cpu_slot,
                         job.compile_cache_seed, job.isa, job.settings, job.xla_flags)
    if isinstance(started, _Failure):
        raise started
    cpus, seeded, settings = started.cpus, started.seeded, started.settings
    t0 = time.perf_counter() - started.import_s   # import_jax_s: the import and what follows
    if started.isa_notes:
        result.setdefault("notes", []).extend(started.isa_notes)
    import jax
    import numpy as np

    if job.processes > 1:
        _join(job)

    from repro.child.kernels import ProgramWatch
    programs = ProgramWatch()
    programs.start()   # every program compiled or loaded from the cache: its library kernels

    from repro.child.context import Context, GradSchedule
    from repro.child.treepath import numeric_leaves
    result["timings"]["import_jax_s"] = time.perf_counter() - t0

    if job.list_packages:  # docker: the image's package fingerprint, from inside it
        from repro.child.fingerprint import installed_packages
        result["packages"] = installed_packages()
    problems = check_packages(dict(job.packages))
    if problems:
        raise _Failure(kind="packages", message="environment.packages do not match this "
                       "interpreter: " + "; ".join(problems), problems=problems)
    tree = str(Path(job.tree).resolve())
    if job.listing_order == "reversed":
        _reverse_listings()
    from repro.child.inputs import InputWatch, installation_roots
    watch = InputWatch([tree, str(run_dir), str(inputs), os.environ.get("JAX_COMPILATION_CACHE_DIR", ""),
                        *job.data.values(), *installation_roots()])
    watch.start()   # files the training reads that no pin covers (repro/child/inputs.py)
    train = None if job.command is not None else _load_entrypoint(job, tree)

    from repro.child.checkpoint import Checkpoints, SegmentEnd, restore_spec
    from repro.child.expect import ArrayExpectation, Expectation, Stopped
    expect = None if job.expect is None else Expectation(job.expect)
    arr = job.expect_arrays
    expect_arrays = None if arr is None else ArrayExpectation(
        str(inputs / Path(arr.file).name), list(arr.grad_steps), list(arr.state_steps),
        {"grad": (arr.grad_limit.rtol, arr.grad_limit.atol),
         "state": (arr.state_limit.rtol, arr.state_limit.atol)})
    if (expect is not None or expect_arrays is not None) and job.command is not None:
        expect = expect_arrays = None   # a script's outputs exist only at its end
        result.setdefault("notes", []).append(
            "fail-fast does not apply to an unmodified script (code.command): it ran to its end, "
            "then its outputs were compared")
    checkpoints = Checkpoints(run_dir / "checkpoints",
                              GradSchedule(job.checkpoints_every, list(job.checkpoints_steps)).keeps,
                              restore_spec(job.restore, inputs), job.stop_at)
    checkpoints.expect = expect_arrays
    if len(jax.devices()) < job.devices:
        raise _Failure(kind="environment", message=f"environment.devices is {job.devices}, but "
                       f"jax shows {len(jax.devices())} {jax.default_backend()} device(s) here; run "
                       "it where that many are visible")
    ctx = Context(seeds=job.seeds, data=job.data, config=job.config,
                  grad_steps=GradSchedule(job.grads_every, list(job.grads_steps)),
                  trace_steps=None if job.trace_steps is None else GradSchedule(None, list(job.trace_steps)),
                  tree=tree, expect=expect, checkpoints=checkpoints, expect_arrays=expect_arrays,
                  devices=job.devices * job.processes, mesh_axes=job.mesh)
    checkpoints.mesh = lambda: ctx.mesh_or_none
    t0 = time.perf_counter()
    stopped: dict[str, Any] | None = None
    ended_at: int | None = None
    try:
        params = train(ctx) if train is not None else _run_script(
            job, tree, run_dir, ctx, result.setdefault("notes", []))
        params = jax.block_until_ready(params)
    except _Failure:
        raise
    except Stopped as stop:   # fail-fast: a sure failure; what was logged so far is the result
        params, stopped = None, stop.info
    except SegmentEnd as end:   # a replayed segment reached its last checkpoint
        params, ended_at = None, end.step
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise _Failure(kind="user", type=type(exc).__name__, message=f"{type(exc).__name__}: {exc}",
                       traceback=_user_traceback(exc, tree)) from None
    result["timings"]["train_s"] = time.perf_counter() - t0
    if expect is not None or expect_arrays is not None:
        result["timings"]["failfast_s"] = sum(e.seconds for e in (expect, expect_arrays) if e is not None)
    result["inputs"] = watch.report()
    # Taken after training: the fingerprint describes the process the result came from, and
    # the canary's compile (when not cached) finds the compiler warm.
    modules = list(programs.modules)   # the training's programs, not the canary's
    result["fingerprint"] = fingerprint(settings, cpus, modules, programs.error, job.mesh,
                                        job.processes).to_json()

    arrays: dict[str, np.ndarray] = {}
    if job.weights == "final" and stopped is None and ended_at is None:
        if params is None:
            raise _Failure(kind="user", type="ValueError",
                           message=f"{job.entrypoint} returned None; return the final params "
                                   "pytree, or set `record.weights: none` in the spec")
        source = f"the params {job.entrypoint} returned" if job.command is None else \
            f"the weights in {job.outputs.weights.path if job.outputs and job.outputs.weights else None}"
        try:
            weights = numeric_leaves(params, source)
        except (TypeError, ValueError) as exc:
            raise _Failure(kind="user", type=type(exc).__name__, message=str(exc)) from None
        for path, leaf in weights:
            arrays[f"weights/{path}" if path else "weights"] = leaf
        from repro.child.treepath import tree_specs
        ctx.shardings.update(tree_specs(params, "weights"))
    for step, grads in sorted(ctx.grads.items()):
        for path, leaf in grads.items():
            arrays[f"grads/{step}/{path}" if path else f"grads/{step}"] = leaf
    if ctx.tracer is not None:  # ctx.traced: fingerprints, op traces and kept op values
        result["traced"] = ctx.tracer.report()
        arrays.update(ctx.tracer.values)
    write_npz_atomic(run_dir / "arrays.npz", arrays)
    _leave_new_cache_entries(job, seeded)
    for series in ctx.metrics.values():  # JSON has no NaN/inf: keep them as strings
        series["values"] = [v if math.isfinite(v) else repr(v) for v in series["values"]]
    if stopped is not None:
        result.update(stopped=stopped)
    if checkpoints.layout:
        result["checkpoints"] = checkpoints.layout
        result["timings"]["checkpoint_s"] = checkpoints.seconds
    if checkpoints.restored_at:
        result["restored_at"] = checkpoints.restored_at
    if ended_at is not None:
        result["ended_at"] = ended_at
    if ctx.shardings:   # sharded weights and gradients: their PartitionSpecs (child/sharding.py)
        result["shardings"] = dict(sorted(ctx.shardings.items()))
    result.update(status="ok" if stopped is None else "stopped", metrics=ctx.metrics,
                  nonfinite=[{"metric": m, "step": s, "value": repr(v)} for m, s, v in ctx.nonfinite],
                  grad_steps=sorted(ctx.grads))


def _load_entrypoint(job: Job, tree: str) -> Any:
    sys.path.insert(0, tree)
    module_name, func_name = job.entrypoint.split(":")
    _entrypoint_inside(module_name, tree, job.entrypoint)
    try:
        module = importlib.import_module(module_name)
        _entrypoint_inside(module_name, tree, job.entrypoint, module)
        return getattr(module, func_name)
    except _Failure:
        raise
    except BaseException as exc:
        raise _Failure(kind="entrypoint", type=type(exc).__name__,
                       message=f"cannot load entrypoint {job.entrypoint!r} from {tree}: "
                               f"{type(exc).__name__}: {exc}",
                       traceback=_user_traceback(exc, tree)) from None


def _run_script(job: Job, tree: str, run_dir: Path, ctx: Any, notes: list[str]) -> Any:
    """code.command (docs/scripts.md): run the unmodified script in a writable copy of the tree,
    then log the metrics it wrote into `ctx` and return the weights it wrote, as if a
    train(ctx) had: everything after this is the same for both."""
    from repro.child.command import ScriptError, clear_outputs, run_script, script_environment, substitute, working_copy
    from repro.child.outputs import OutputError, read_metrics, read_weights, resolve

    assert job.command is not None
    workdir = working_copy(tree, run_dir / "script")
    outputs = job.outputs or Outputs()
    stale = clear_outputs(workdir, outputs)
    if stale:
        notes.append(f"code.outputs: {', '.join(stale)} {'is' if len(stale) == 1 else 'are'} in the "
                     "pinned tree; removed from the run's copy before the script ran, so only what "
                     "this run wrote is read")
    args = substitute(job.command, job.seeds, job.config, job.data)
    try:
        run = run_script(args, workdir, script_environment(os.environ, job.seeds, job.config, job.data))
    except ScriptError as exc:
        raise _Failure(kind="script", type="ScriptError", message=str(exc), traceback=exc.detail) from None
    wanted = [(k, out) for k, out in (("metrics", outputs.metrics), ("weights", outputs.weights))
              if out is not None and (k == "metrics" or job.weights == "final")]
    found: dict[str, Any] = {}
    for kind, out in wanted:
        try:
            path = resolve(workdir, out.path)
            if not path.exists():
                raise _Failure(kind="outputs", type="FileNotFoundError", traceback="\n".join(run.tail),
                               message=f"code.outputs.{kind}: {out.path} was not written by the "
                                       f"script: it does not exist after {run.describe()} (its last "
                                       "lines are below); does the script write it there, relative "
                                       "to the code tree's root?")
            if kind == "metrics":
                for where, step, values in read_metrics(path, out.format, out.path):
                    try:
                        ctx.log(step, **values)
                    except (ValueError, TypeError) as exc:
                        raise OutputError(f"{where}: {exc}".replace("ctx.log(", "(")) from None
            else:
                found[kind] = read_weights(path, out.format, out.path)
        except OutputError as exc:
            raise _Failure(kind="outputs", type="OutputError", message=f"code.outputs.{kind}: {exc}") from None
    return found.get("weights")


def _seed_compile_cache(seed: str | None) -> set[str]:
    """Sandbox: copy the read-only compilation cache `seed` into the writable one JAX is pointed
    at (JAX_COMPILATION_CACHE_DIR, a tmpfs). Returns the names copied."""
    target = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if not seed or not target:
        return set()
    import shutil

    os.makedirs(target, exist_ok=True)
    copied: set[str] = set()
    try:
        names = os.listdir(seed)
    except OSError:
        return copied
    for name in names:
        src = os.path.join(seed, name)
        if os.path.isfile(src) and not os.path.islink(src):
            shutil.copyfile(src, os.path.join(target, name))
            copied.add(name)
    return copied


def _leave_new_cache_entries(job: Job, seeded: set[str]) -> None:
    """Sandbox: the entries this run compiled, for the harness to add to the shared cache."""
    source = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if not job.compile_cache_new or not source:
        return
    import shutil

    try:
        names = [n for n in os.listdir(source) if n not in seeded]
        if names:
            os.makedirs(job.compile_cache_new, exist_ok=True)
        for name in names:
            shutil.copyfile(os.path.join(source, name), os.path.join(job.compile_cache_new, name))
    except OSError:
        pass  # a cache is an optimisation: never fail a run over it


def _entrypoint_inside(module_name: str, tree: str, entrypoint: str,
                       module: Any = None) -> None:
    """The entrypoint must be code of the pinned tree: a module found elsewhere (the standard
    library, site-packages, one Python loaded at start-up) would run unpinned code under a
    verdict that says "code at pinned commit". Checked before the import (the top-level name,
    without running anything) and after it (the module's own file)."""
    import importlib.util

    if module is None:
        top = module_name.split(".")[0]
        loaded = sys.modules.get(top)
        try:
            spec = loaded.__spec__ if loaded is not None else importlib.util.find_spec(top)
        except (ImportError, ValueError):
            return  # not found: the import reports it
        if spec is None:
            return
        places = [spec.origin] if spec.origin and spec.origin not in ("built-in", "frozen") \
            else list(spec.submodule_search_locations or [])
        where = places[0] if places else (spec.origin or "built into Python")
    else:
        where = getattr(module, "__file__", None) or "built into Python"
        places = [where] if getattr(module, "__file__", None) else \
            list(getattr(module, "__path__", []) or [])
    if places and all(_inside(p, tree) for p in places):
        return
    raise _Failure(kind="entrypoint", type="ImportError",
                   message=f"entrypoint {entrypoint!r}: module {module_name!r} resolves to "
                           f"{where}, outside the pinned code tree {tree}; the entrypoint must "
                           "be a module of the pinned commit (a module of the same name as one "
                           "from the standard library or site-packages cannot be one: rename it)")


def _inside(path: str, tree: str) -> bool:
    real = os.path.realpath(path)
    return real == tree or real.startswith(tree.rstrip(os.sep) + os.sep)


def _user_traceback(exc: BaseException, tree: str) -> str:
    """The traceback trimmed to the user's own frames (those under the code tree)."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if os.path.abspath(f.filename).startswith(tree + os.sep)]
    lines = ["Traceback (most recent call last, your frames only):\n"]
    lines += traceback.format_list(frames)
    lines += traceback.format_exception_only(type(exc), exc)
    return "".join(lines)


if __name__ == "__main__":
    code = main()
    # Everything that matters is written (atomically, fsynced). Skip the interpreter's teardown:
    # unloading jax/XLA takes ~0.25 s, a tenth of a small training run.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
