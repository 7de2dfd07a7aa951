"""Inputs no pin covers, as the child saw them: files the training read outside its code tree and
its `data:` entries, and the environment facts outside the fingerprint.

When a verify fails, the runs agree with each other and no pin changed, something the spec does
not pin changed. The record keeps what the recorded run read (path → sha256) and these facts,
so the verdict can name the file whose content moved, or the variable whose value did.

Child side: standard library only. The watch is a `sys.addaudithook` on "open" events, started
just before the user's module is imported; what Python's own import system, the interpreter's
installation and the harness read is left out.
"""
from __future__ import annotations

import hashlib
import os
import socket
import sys
from collections.abc import Iterable

MAX_FILES = 200                    # paths kept (the first ones read)
MAX_HASH_BYTES = 256 * 1024 * 1024  # larger files are described by size only
# Variables passed through to the child that may reach the numbers without being pinned.
ENV_FACTS = ("LANG", "LC_ALL", "TZ", "HOME", "USER", "TMPDIR", "PATH", "LD_LIBRARY_PATH",
             "CUDA_VISIBLE_DEVICES", "OPENBLAS_CORETYPE", "PYTHONHASHSEED")
_SYSTEM = ("/proc/", "/sys/", "/dev/")


class InputWatch:
    """Collects the paths the training opens for reading (and those it writes, to leave out)."""

    def __init__(self, exclude: Iterable[str]):
        roots = {os.path.realpath(p) for p in exclude if p}
        self.exact = roots
        self.exclude = tuple(os.path.join(r, "") for r in roots if len(r) > 1)
        self.read: dict[str, None] = {}
        self.written: set[str] = set()
        self.active = False

    def start(self) -> None:
        self.active = True
        sys.addaudithook(self._hook)

    def stop(self) -> None:
        self.active = False   # audit hooks cannot be removed; this one goes quiet

    def _hook(self, event: str, args: tuple[object, ...]) -> None:
        if not self.active or event != "open" or not args:
            return
        path = args[0]
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if not isinstance(path, str):
            return   # a file descriptor
        mode, flags = (args[1] if len(args) > 1 else None), (args[2] if len(args) > 2 else 0)
        writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            mode is None and isinstance(flags, int) and flags & os.O_ACCMODE != os.O_RDONLY)
        self.active = False    # realpath below must not re-enter
        try:
            real = os.path.realpath(path)
        finally:
            self.active = True
        if writes:
            self.written.add(real)
        elif real not in self.read and len(self.read) < MAX_FILES and not self._covered(real):
            self.read[real] = None   # what a pin covers is left out here, so it takes no place

    def _covered(self, path: str) -> bool:
        """A path a pin or the installation accounts for: never an unpinned input."""
        return path in self.exact or path.startswith(_SYSTEM) or path.startswith(self.exclude)

    def report(self) -> dict[str, object]:
        """{"files": {path: "sha256:<hex>" | "size:<n>" | "gone"}, "env": {...}} for run.json."""
        self.stop()
        files = {}
        for path in self.read:
            if path in self.written or os.path.isdir(path):
                continue
            files[path] = _describe(path)
        env = {k: os.environ[k] for k in ENV_FACTS if k in os.environ}
        env["hostname"] = socket.gethostname()
        return {"files": files, "env": env}


def _describe(path: str) -> str:
    try:
        size = os.path.getsize(path)
        if size > MAX_HASH_BYTES:
            return f"size:{size}"
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return "sha256:" + h.hexdigest()
    except OSError:
        return "gone"


def installation_roots() -> list[str]:
    """Where the interpreter, its packages and the harness live: reading them is the
    environment's business (packages, fingerprint), not an unpinned input."""
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    roots.update(p for p in sys.path if p and os.path.isdir(p))
    # the harness itself, wherever it is installed from (an editable checkout, a mounted tree,
    # the local backend's shim link): repro's code is pinned by repro's version
    roots.add(os.path.dirname(os.path.realpath(__file__)).rsplit(os.sep, 1)[0])
    return sorted(roots)
