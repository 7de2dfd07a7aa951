"""The local backend: the runner in a fresh Python process of this interpreter.

The child gets an explicitly built environment (nothing JAX/XLA-related leaks in from the
caller), runs in its own process group so a timeout or Ctrl-C kills everything it started, and
imports the harness through a shim directory that holds only `repro` — the code tree, put first
on sys.path by the runner, can never shadow it, and the harness checkout's other folders
(`zoo/`, `tests/`) are never importable by accident.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import repro
from repro.backends.base import ChildOutcome, Echo, KilledBy, RunDir, pump_output
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


def harness_shim(run_dir: RunDir) -> Path:
    """A directory whose only entry is a link to the harness package."""
    shim = run_dir.root / "_harness"
    shim.mkdir(exist_ok=True)
    link = shim / "repro"
    if not link.exists():
        link.symlink_to(Path(repro.__file__).resolve().parent, target_is_directory=True)
    return shim


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
        child_env, dropped = child_environment(job.settings, [str(harness_shim(run_dir))],
                                               hash_seed=job.hash_seed)
        child_env.update(compile_cache_env(job.compile_cache))
        job.replace(parent_pid=os.getpid()).write(run_dir.job)
        python = [sys.executable]
        if job.emulate_cpu:   # the same interpreter on an emulated CPU (env/emulate.py)
            from repro.env.emulate import command
            python = command(job.emulate_cpu)
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
