"""What every backend returns, and the child-output pump they share."""
from __future__ import annotations

import collections
import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

LOG_TAIL_LINES = 40


@dataclass(frozen=True)
class RunDir:
    """A run's scratch directory. The parent owns `job.json` and `output.log`; the child may
    write only below `out/` (the one writable mount of a container), so nothing the sandboxed
    code creates can stand where the parent writes, or be a parent file swapped for a link."""

    root: Path

    @property
    def job(self) -> Path:
        return self.root / "job.json"

    @property
    def log(self) -> Path:
        return self.root / "output.log"

    @property
    def out(self) -> Path:
        return self.root / "out"

    @classmethod
    def create(cls, prefix: str) -> "RunDir":
        import tempfile

        run = cls(Path(tempfile.mkdtemp(prefix=prefix)))
        run.out.mkdir()
        return run


@dataclass
class ChildOutcome:
    returncode: int | None
    timed_out: bool = False
    killed_reason: str = ""
    log_tail: list[str] = field(default_factory=list)
    dropped_env: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def pump_output(stream, log_path: Path, echo) -> tuple[threading.Thread, collections.deque]:
    """Copy the child's output line by line to `log_path`, a bounded tail, and `echo`
    (True: this process's stderr; a callable: called per line; falsy: nowhere)."""
    tail: collections.deque = collections.deque(maxlen=LOG_TAIL_LINES)

    def work():
        # O_EXCL|O_NOFOLLOW: the log is a new file of the parent's, never something found there
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as log:
            for raw in iter(stream.readline, b""):
                log.write(raw)
                line = raw.decode("utf-8", errors="replace").rstrip("\n")
                tail.append(line)
                if echo is True:
                    sys.stderr.write(line + "\n")
                elif callable(echo):
                    echo(line)
        stream.close()

    thread = threading.Thread(target=work, daemon=True, name="repro-child-output")
    thread.start()
    return thread, tail
