"""The `Backend` protocol — where one job runs — and what every backend shares: the run
directory, the child's outcome, and the pump that copies the child's output.

A backend first `prepare`s the environment a spec asks for (the docker backend resolves the
pinned image there, and may rebuild it from its recipe), then `run`s one `Job` in it: a fresh
local process or a fresh container, whose result files land in `RunDir.out`.
"""
from __future__ import annotations

import collections
import fcntl
import os
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol, TypeVar

if TYPE_CHECKING:
    from repro.job import Job
    from repro.record import RecordMeta
    from repro.spec import Spec

LOG_TAIL_LINES = 40          # the output a failed run's verdict shows: the last lines ...
LOG_LINE_CHARS = 1000        # ... each cut to this many characters (a 100 MB line is one line)
_READ_CHUNK = 1 << 16        # bytes read at a time: a line without a newline is read in pieces
# Where the child's output lines go besides the log file: True (this process's stderr), a
# callable (called per line), or False (nowhere).
Echo = bool | Callable[[str], None]
IN_USE = ".in-use"           # a run directory's lock file, held by the process that made it
_HELD: dict[Path, int] = {}  # run directory -> its held lock's descriptor



def harness_dir(parent: Path) -> Path:
    """`parent/_harness`, a directory whose only entry is a link to the harness package: a
    local child's PYTHONPATH, so the code tree can never shadow repro, and nothing else of the
    harness checkout is importable."""
    import repro

    shim = parent / "_harness"
    shim.mkdir(exist_ok=True)
    link = shim / "repro"
    if not link.exists():
        link.symlink_to(Path(repro.__file__).resolve().parent, target_is_directory=True)
    return shim

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
    def create(cls, spec_name: str) -> RunDir:
        """A new run directory in the temp dir, named after this process (`repro-<pid>-…`), so
        the next repro process can remove those whose process is gone (killed with -9)."""
        cls.remove_stale()
        run = cls(Path(tempfile.mkdtemp(prefix=f"repro-{os.getpid()}-{spec_name[:40]}-")))
        fd = os.open(run.root / IN_USE, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)   # held until remove(): a live run's directory is never stale
        _HELD[run.root] = fd
        run.out.mkdir()
        return run

    def remove(self) -> None:
        """Delete the directory and let go of its in-use lock."""
        import shutil

        shutil.rmtree(self.root, ignore_errors=True)
        fd = _HELD.pop(self.root, None)
        if fd is not None:
            os.close(fd)

    @staticmethod
    def remove_stale() -> int:
        """Remove run directories left by repro processes that no longer exist (and whose
        in-use lock nobody holds)."""
        import re
        import shutil

        from repro.proctree import alive

        removed = 0
        base = Path(tempfile.gettempdir())
        try:
            names = os.listdir(base)
        except OSError:
            return 0
        for name in names:
            m = re.match(r"^repro-(\d+)-", name)
            if m and int(m.group(1)) != os.getpid() and not alive(int(m.group(1))) \
                    and not _locked(base / name / IN_USE):
                shutil.rmtree(base / name, ignore_errors=True)
                removed += 1
        return removed


def _locked(path: Path) -> bool:
    """Whether a live process holds this run directory's in-use lock: its pid may belong to
    another PID namespace (a container, a sandboxed test), where it is not visible from here."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False                     # no lock file: an older repro's, or one being removed
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


class KilledBy(StrEnum):
    """Why a child did not end by itself."""

    TIMEOUT = "timeout"        # the harness killed it at the spec's timeout
    MEMORY = "memory"          # the container exceeded its memory limit
    SIGNAL = "signal"          # a signal from outside (an interrupted audit, the OOM killer, kill)


@dataclass
class ChildOutcome:
    """How the child ended, as the parent saw it."""

    returncode: int | None
    killed_by: KilledBy | None = None
    killed_reason: str = ""                       # for people: "timed out after 5 s and …"
    log_tail: list[str] = field(default_factory=list)
    dropped_env: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def timed_out(self) -> bool:
        return self.killed_by is KilledBy.TIMEOUT


class PreparedEnvironment(Protocol):
    """What `Backend.prepare` hands to `Backend.run` and to the record."""

    @property
    def notes(self) -> tuple[str, ...]: ...     # what the verdict should say about it

    @property
    def image_ref(self) -> str | None: ...      # the image the record names (docker) or None


E = TypeVar("E", bound=PreparedEnvironment)


class Backend(Protocol[E]):
    """Where one job runs. `recorded` is the record's metadata when verifying (None otherwise):
    the docker backend accepts an image rebuilt from recipe only if its packages match it."""

    name: str

    def expected_platform(self, spec: Spec) -> str | None:
        """The platform key this backend's run of `spec` will have, when known before the run
        (so a verify finds — and checks — its record before any training)."""
        ...

    def check_host(self, spec: Spec) -> None:
        """NeedsDevice when this host cannot run `spec` at all (a GPU spec, no GPU): checked
        with the pins, before a record is read, so the verdict is SKIPPED, not an error."""
        ...

    def prepare(self, spec: Spec, repo_root: Path, recorded: RecordMeta | None,
                say: Callable[[str], None] | None = None) -> E: ...

    def run(self, job: Job, run_dir: RunDir, env: E, *, timeout: float,
            echo: Echo = False) -> ChildOutcome: ...


def progress_lines(echo: Echo) -> Callable[[str], None] | None:
    """Where the harness's own progress lines (an image rebuild) go: like the child's output."""
    if echo is True:
        return lambda line: print(line, file=sys.stderr, flush=True)
    return echo if callable(echo) else None


def pump_output(stream: IO[bytes] | _Readable, log_path: Path, echo: Echo
                ) -> tuple[threading.Thread, collections.deque[str]]:
    """Copy the child's output line by line to `log_path`, a bounded tail, and `echo`
    (True: this process's stderr; a callable: called per line; falsy: nowhere)."""
    tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)

    def work() -> None:
        # O_EXCL|O_NOFOLLOW: the log is a new file of the parent's, never something found there
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as log:
            partial = False   # the previous piece ended mid-line
            while raw := stream.readline(_READ_CHUNK):
                log.write(raw)
                line = raw.decode("utf-8", errors="replace").rstrip("\n")
                if partial:   # the rest of a long line: shown once, already cut
                    partial = not raw.endswith(b"\n")
                    continue
                partial = not raw.endswith(b"\n")
                if len(line) > LOG_LINE_CHARS or partial:
                    line = line[:LOG_LINE_CHARS] + " … [line cut: see the run's output.log]"
                tail.append(line)
                if echo is True:
                    sys.stderr.write(line + "\n")
                elif callable(echo):
                    echo(line)
        stream.close()

    thread = threading.Thread(target=work, daemon=True, name="repro-child-output")
    thread.start()
    return thread, tail


class _Readable(Protocol):
    def readline(self, size: int = -1, /) -> bytes: ...
    def close(self) -> None: ...
