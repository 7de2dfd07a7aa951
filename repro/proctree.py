"""Processes a run leaves behind, found and killed. Standard library only (the runner uses it).

A training function may start processes — plain children, or daemons in a session of their own
that leave the run's process group. The runner makes itself a child subreaper, so orphans of its
descendants are re-parented to it rather than to init, and kills every descendant before it
exits; the parent kills the whole tree of a runner it has to stop (timeout, Ctrl-C, SIGTERM).
Linux only (/proc); elsewhere these do nothing.
"""
from __future__ import annotations

import os
import signal
import sys
import time

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _parents() -> dict[int, int]:
    """pid -> parent pid of every live (non-zombie) process."""
    out: dict[int, int] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return out
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != b"Z":
            out[int(name)] = int(fields[1])
    return out


def descendants(pid: int) -> list[int]:
    """Every live process below `pid`, parents before children."""
    children: dict[int, list[int]] = {}
    for child, parent in _parents().items():
        children.setdefault(parent, []).append(child)
    out, todo = [], list(children.get(pid, []))
    while todo:
        p = todo.pop(0)
        out.append(p)
        todo += children.get(p, [])
    return out


def kill_descendants(pid: int, *, include_self: bool = False, reap: bool = False,
                     rounds: int = 20) -> int:
    """Stop every descendant of `pid` (so none can fork away meanwhile), then kill them all;
    repeat until none is left. Returns how many were killed. `reap`: also collect exited
    children of this process — only for the runner, whose children are all the run's (in a
    parent process it would steal the exit status of other runs' children)."""
    killed: set[int] = set()
    for _ in range(rounds):
        found = [p for p in descendants(pid) if p not in killed]
        if not found:
            break
        for p in found:
            _signal(p, signal.SIGSTOP)
        found = descendants(pid)  # what forked before it stopped
        for p in found:
            _signal(p, signal.SIGSTOP)
        for p in found:
            _signal(p, signal.SIGKILL)
        killed.update(found)
        if reap:
            _reap()
        time.sleep(0.01)
    if include_self:
        _signal(pid, signal.SIGKILL)
    return len(killed)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _reap() -> None:
    """Collect exited children of this process (a subreaper inherits them)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False
