"""Error types. Each carries a message written for the user: what was wrong, where, what to do.

Everything repro raises on bad input derives from `ReproError`, so front ends can print the
message and exit 2 instead of showing a traceback from deep inside.
"""
from __future__ import annotations


class ReproError(Exception):
    """Base of every error repro reports to a user (exit code 2 on the command line)."""


class SpecError(ReproError):
    """A spec file that cannot be loaded: malformed YAML, unknown keys, wrong types, bad pins.

    Attributes name where: `file`, `key_path` (dotted, e.g. ``code.commit``) and `line` (1-based,
    where YAML gives it).
    """

    def __init__(self, message: str, *, file: str | None = None, key_path: str | None = None,
                 line: int | None = None):
        self.file, self.key_path, self.line, self.reason = file, key_path, line, message
        where = file or "<spec>"
        if line is not None:
            where += f":{line}"
        if key_path:
            where += f": {key_path}"
        super().__init__(f"{where}: {message}")


class PinError(ReproError):
    """A pin that does not hold: a missing commit, a changed data file, an absent image."""


class CodePinError(PinError):
    """The pinned code cannot be found or exported."""


class DataPinError(PinError):
    """A data file or directory is missing, leaves the repo, or does not match its sha256."""


class NeedsDevice(ReproError):
    """The spec needs a device this host does not have (a GPU): its verdict is SKIPPED, as a
    pytest item that cannot run here is skipped, so `repro verify specs/` on a CPU host checks the
    CPU specs and says which it left out."""


class RecordError(ReproError):
    """A recorded version is missing, unreadable or corrupted."""


class RunError(ReproError):
    """The child run failed or did not produce a usable result. `detail` holds what explains
    it: the user's traceback trimmed to their own frames, or the last lines of the output;
    `killed_by` (a `repro.backends.base.KilledBy`) says when the child did not end by itself."""

    def __init__(self, message: str, *, detail: str = "", killed_by: str | None = None):
        super().__init__(message)
        self.detail = detail
        self.killed_by = killed_by


class StoreError(ReproError):
    """A blob store or its remote cannot be used: no remote configured, a blob missing there,
    a corrupt blob (never used), an unreachable or read-only remote."""
