"""What every backend returns, and the child-output pump they share."""
from __future__ import annotations

import collections
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

LOG_TAIL_LINES = 40


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
        with open(log_path, "wb") as log:
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
