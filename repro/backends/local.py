"""The local backend: the runner in a fresh Python process of this interpreter.

The child gets an explicitly built environment (nothing JAX/XLA-related leaks in from the
caller), runs in its own process group so a timeout or Ctrl-C kills everything it started, and
imports the harness through a shim directory that holds only `repro` — the code tree, put first
on sys.path by the runner, can never shadow it, and the harness checkout's other folders
(`zoo/`, `tests/`) are never importable by accident.
"""
from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from repro.backends import prestart
from repro.backends.base import ChildOutcome, Echo, KilledBy, RunDir, harness_dir, pump_output
from repro.env.devices import check_gpu
from repro.env.settings import child_environment, compile_cache_env
from repro.job import Job
from repro.proctree import kill_descendants
from repro.record import RecordMeta
from repro.spec import Spec


@dataclass(frozen=True)
class LocalEnvironment:
    """This interpreter; `notes` say what of the spec's environment it could not pin."""

    notes: tuple[str, ...] = ()
    image_ref: str | None = None


class LocalBackend:
    name = "local"

    def expected_platform(self, spec: Spec) -> str | None:
        platform = spec.environment.platform
        return None if platform == "any" else platform   # any: whatever jax finds here

    def check_host(self, spec: Spec) -> None:
        check_gpu(spec)

    def prepare(self, spec: Spec, repo_root: Path, recorded: RecordMeta | None,
                say: Callable[[str], None] | None = None) -> LocalEnvironment:
        env = spec.environment
        if not env.image:
            return LocalEnvironment()
        pinned = ("its packages were checked against this interpreter" if env.packages
                  else "nothing but the fingerprint pins the environment")
        return LocalEnvironment((f"the local backend does not use environment.image "
                                 f"({env.image[:40]}…): the image was not pinned; {pinned}",))

    def run(self, job: Job, run_dir: RunDir, env: LocalEnvironment, *, timeout: float,
            echo: Echo = False) -> ChildOutcome:
        if job.processes > 1:
            return run_processes(job, run_dir, timeout=timeout, echo=echo)
        child_env, dropped = child_environment(job.settings, [str(harness_dir(run_dir.root))],
                                               hash_seed=job.hash_seed)
        child_env.update(compile_cache_env(job.compile_cache))
        job = job.replace(parent_pid=os.getpid())
        job.write(run_dir.job)
        python = [sys.executable]
        if job.emulate_cpu:   # the same interpreter on an emulated CPU (env/emulate.py)
            from repro.env.emulate import command
            python = command(job.emulate_cpu)
        early = prestart.claim(job, python, child_env)   # started while the command loaded
        if early is not None:
            proc = early.proc
            prestart.hand_over(early, run_dir.job, run_dir.out)
        else:
            cmd = [*python, "-P", "-m", "repro.child.runner", str(run_dir.job), str(run_dir.out)]
            proc = subprocess.Popen(cmd, cwd=job.tree, env=child_env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        _LIVE.add(proc)
        assert proc.stdout is not None
        pump, tail = pump_output(proc.stdout, run_dir.log, echo)
        outcome = ChildOutcome(returncode=None, dropped_env=dropped)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            outcome.killed_by = KilledBy.TIMEOUT
            outcome.killed_reason = f"timed out after {timeout:g} s and was killed"
        except BaseException:  # Ctrl-C, SIGTERM: leave nothing running behind us
            _kill_group(proc)
            raise
        finally:
            _LIVE.discard(proc)
            _kill_group(proc)  # whatever is left in its group (the runner killed the rest)
            pump.join(timeout=5)
            if early is not None:
                early.remove()
        outcome.returncode = proc.returncode
        if proc.returncode is not None and proc.returncode < 0 and not outcome.timed_out:
            sig = -proc.returncode
            outcome.killed_by = KilledBy.SIGNAL
            outcome.killed_reason = f"was killed by signal {signal.Signals(sig).name}"
            if sig == signal.SIGKILL:
                outcome.killed_reason += " (out of memory? `dmesg` may say)"
        outcome.log_tail = list(tail)
        return outcome


_LIVE: set[subprocess.Popen[bytes]] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on now (the kernel's pick), for jax.distributed's coordinator."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def describe_exit(process_id: int, processes: int, pid: int, returncode: int) -> str:
    """How one process of a multi-process run ended, for the verdict: it follows "the run"
    ("the run ended when its process 1 of 2 (pid 4711) was killed by SIGKILL")."""
    who = f"ended when its process {process_id} of {processes} (pid {pid})"
    if returncode < 0:
        return f"{who} was killed by {signal.Signals(-returncode).name}"
    return f"{who} exited with code {returncode}"


def run_processes(job: Job, run_dir: RunDir, *, timeout: float, echo: Echo = False) -> ChildOutcome:
    """environment.processes > 1: one runner per process, joined through a coordinator on
    127.0.0.1 at a port chosen here. Process 0 writes `run_dir.out`; process k writes only its
    scratch `process-k/` and `output.k.log`. The first process to fail (by exit order) fails the
    run with its own output tail, and every other process group is killed at once: one that
    waits in a collective for a dead peer would otherwise hang until the timeout."""
    import queue
    import threading
    import time

    child_env, dropped = child_environment(job.settings, [str(harness_dir(run_dir.root))],
                                           hash_seed=job.hash_seed)
    child_env.update(compile_cache_env(job.compile_cache))
    # the coordinator given (--engine ray: the others run on other nodes): start this one only
    coordinator = job.coordinator or f"127.0.0.1:{free_port()}"
    python = [sys.executable]
    if job.emulate_cpu:   # every process on the emulated CPU, as a one-process run (env/emulate.py)
        from repro.env.emulate import command
        python = command(job.emulate_cpu)
    ids = [job.process_id] if job.coordinator else list(range(job.processes))
    procs: list[subprocess.Popen[bytes]] = []
    pumps: list[threading.Thread] = []
    tails: list[list[str] | collections.deque[str]] = []
    exits: queue.Queue[tuple[int, int]] = queue.Queue()
    outcome = ChildOutcome(returncode=None, dropped_env=dropped)

    def waiter(i: int, proc: subprocess.Popen[bytes]) -> None:
        exits.put((i, proc.wait()))

    try:
        for i, k in enumerate(ids):
            mine = job.replace(parent_pid=os.getpid(), process_id=k, coordinator=coordinator)
            job_path = run_dir.job if k == 0 else run_dir.root / f"job.{k}.json"
            mine.write(job_path)
            out = run_dir.out if k == 0 else run_dir.root / f"process-{k}"
            out.mkdir(exist_ok=True)
            cmd = [*python, "-P", "-m", "repro.child.runner", str(job_path), str(out),
                   *([str(run_dir.out)] if k else [])]
            proc = subprocess.Popen(cmd, cwd=job.tree, env=child_env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            procs.append(proc)
            _LIVE.add(proc)
            assert proc.stdout is not None
            log = run_dir.log if k == 0 else run_dir.root / f"output.{k}.log"
            pump, tail = pump_output(proc.stdout, log, _labelled(echo, k))
            pumps.append(pump)
            tails.append(tail)
            threading.Thread(target=waiter, args=(i, proc), daemon=True,
                             name=f"repro-process-{k}").start()
        deadline = time.monotonic() + timeout
        done = 0
        culprit: tuple[int, int] | None = None
        while done < len(procs):
            try:
                i, rc = exits.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                outcome.killed_by = KilledBy.TIMEOUT
                outcome.killed_reason = (f"timed out after {timeout:g} s and was killed (all "
                                         f"{len(procs)} processes)")
                break
            done += 1
            if rc != 0:
                culprit = (i, rc)
                break
    finally:
        for proc in procs:
            _LIVE.discard(proc)
            _kill_group(proc)
        for pump in pumps:
            pump.join(timeout=5)
    outcome.returncode = procs[0].returncode
    outcome.log_tail = list(tails[0])
    if culprit is not None:
        i, rc = culprit
        k = ids[i]
        outcome.returncode = rc
        outcome.log_tail = list(tails[i])
        if k != 0 or rc != 3:   # process 0's own failure is in its run.json; any other is the run's
            outcome.killed_reason = describe_exit(k, job.processes, procs[i].pid, rc)
            if rc < 0:
                outcome.killed_by = KilledBy.SIGNAL
            (run_dir.out / "run.json").unlink(missing_ok=True)   # no result of a run that lost a process
    return outcome


def _labelled(echo: Echo, process_id: int) -> Echo:
    """Echo of process k > 0: its lines prefixed with `[process k]`."""
    if process_id == 0 or not echo:
        return echo
    if echo is True:
        return lambda line: print(f"[process {process_id}] {line}", file=sys.stderr, flush=True)
    return lambda line: echo(f"[process {process_id}] {line}")


def kill_all() -> int:
    """Kill every child this process started and that still runs (an interrupted audit's
    worker threads are blocked in wait(); the children live in their own sessions, so the
    terminal's Ctrl-C never reaches them). Returns how many were killed."""
    procs = list(_LIVE)
    for proc in procs:
        _kill_group(proc)
    return len(procs)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill the runner, everything below it (in its group or in sessions of their own), and
    its process group."""
    if proc.returncode is None:
        kill_descendants(proc.pid, include_self=True)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
