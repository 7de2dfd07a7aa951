"""The progress display of long commands (audit, segment replay, calibrate, bisect): a live
table from `rich` on a terminal — each job queued, running, pass, fail or error, its time, the
count, the elapsed time and an ETA — or plain lines, one per finished job, when the output is a
file or a CI log (or `--no-progress`). Both implement `repro.commands.progress.Progress`; the library
calls them, this module only renders.

The ETA: the median time of the jobs finished so far × the jobs left (queued, running and those
a bisection still expects) ÷ the jobs seen running at once.
"""
from __future__ import annotations

import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Self, cast

from repro.errors import ReproError
from repro.report.text import progress_line, verdict_detail
from repro.verdict import Verdict

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.live import Live

    from repro.commands.calibrate import VariationRun

QUEUED, RUNNING = "queued", "running"
STYLE = {QUEUED: "dim", RUNNING: "cyan", "pass": "green", "bitwise": "green", "done": "green",
         "fail": "bold red", "differs": "yellow", "error": "bold magenta"}


@dataclass
class Job:
    """One job as the display sees it; `status` is queued, running, or how it ended."""

    label: str
    status: str = QUEUED
    detail: str = ""
    started: float | None = None
    duration_s: float | None = None
    result: object = None

    @property
    def finished(self) -> bool:
        return self.status not in (QUEUED, RUNNING)


# -- what a result says: (status, one-line detail) ---------------------------------------------
Describe = Callable[[object], tuple[str, str]]


def describe_verdict(result: object) -> tuple[str, str]:
    """An audited spec or a bisect probe: its verdict's status and the audit's detail."""
    assert isinstance(result, Verdict)
    return str(result.status), verdict_detail(result)


def describe_variation(result: object) -> tuple[str, str]:
    """A calibrate run (a `VariationRun`): bitwise with the baseline, differs, done or error."""
    error = getattr(result, "error", None)
    if error is not None:
        return "error", (str(error).splitlines() or [""])[0][:100]
    rows, differing = getattr(result, "rows", []), getattr(result, "differing", [])
    if not rows:
        return "done", ""
    if differing:
        return "differs", f"{len(differing)} of {len(rows)} quantities"
    return "bitwise", ""


def describe_replay(result: object) -> tuple[str, str]:
    """A replayed segment: it ran (compared with the record once all have), or an error."""
    if isinstance(result, ReproError):
        return "error", (str(result).splitlines() or [""])[0][:100]
    return "done", ""


# -- plain lines -------------------------------------------------------------------------------
PlainLine = Callable[[Job, int, int], str]


def job_line(job: Job, done: int, total: int) -> str:
    """`[3/8] segment [4, 8) DONE (1.2 s)`: a finished job with no line of its own."""
    detail = f" {job.detail}" if job.detail else ""
    return f"[{done}/{total}] {job.label} {job.status.upper()} ({job.duration_s or 0:.1f} s){detail}"


def verdict_line(job: Job, done: int, total: int) -> str:
    """An audited spec: the audit's line as it always was (`report.text.progress_line`)."""
    assert isinstance(job.result, Verdict)
    return progress_line(job.result, done, total)


def variation_line(job: Job, done: int, total: int) -> str:
    """A calibrate run: calibrate's line as it always was."""
    from repro.report.calibrate import progress_line as calibrate_line
    return calibrate_line(cast("VariationRun", job.result), done, total)


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class _Jobs:
    """The jobs and their states, safe to update from worker threads."""

    def __init__(self, describe: Describe, clock: Callable[[], float] = time.monotonic):
        self.describe, self.clock = describe, clock
        self.jobs: list[Job] = []
        self.later = 0
        self.slots = 1            # the most jobs seen running at once
        self.t0 = clock()
        self.lock = threading.RLock()

    def add(self, labels: Sequence[str], *, later: int = 0) -> int:
        with self.lock:
            first = len(self.jobs)
            self.jobs += [Job(label) for label in labels]
            self.later = later
            return first

    def start(self, job: int) -> None:
        with self.lock:
            self.jobs[job].status, self.jobs[job].started = RUNNING, self.clock()
            self.slots = max(self.slots, sum(j.status == RUNNING for j in self.jobs))

    def done(self, job: int, result: object) -> None:
        with self.lock:
            j = self.jobs[job]
            j.status, j.detail = self.describe(result)
            j.result = result
            j.duration_s = self.clock() - j.started if j.started is not None else 0.0
            self.finished(j)

    def finished(self, job: Job) -> None:
        """A job just ended (the lock held)."""

    def counts(self) -> tuple[int, int, int]:
        """(finished, running, queued)."""
        done = sum(j.finished for j in self.jobs)
        running = sum(j.status == RUNNING for j in self.jobs)
        return done, running, len(self.jobs) - done - running

    def eta(self) -> float | None:
        """Seconds left: the median finished job's time × jobs left ÷ jobs at once; None before
        any job that ran has finished."""
        times = [j.duration_s for j in self.jobs if j.finished and j.started is not None
                 and j.duration_s is not None]
        if not times:
            return None
        done, running, queued = self.counts()
        return statistics.median(times) * (running + queued + self.later) / self.slots

    def print(self, text: str) -> None:
        """A line of the command's own (bisect's round lines), kept above a live display."""
        print(text, flush=True)

    def close(self) -> None:
        pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PlainProgress(_Jobs):
    """One line per finished job (`line`; none when it is None), for logs that are grepped."""

    def __init__(self, describe: Describe, line: PlainLine | None = job_line,
                 file: IO[str] | None = None, clock: Callable[[], float] = time.monotonic):
        super().__init__(describe, clock)
        self.line, self.file = line, file

    def finished(self, job: Job) -> None:
        if self.line is not None:
            done = sum(j.finished for j in self.jobs)
            print(self.line(job, done, len(self.jobs)), file=self.file or sys.stdout, flush=True)


class LiveProgress(_Jobs):
    """A live table on a terminal (rich), redrawn four times a second; gone when closed, so the
    command's own output follows as it always did. Starts with the first jobs added."""

    def __init__(self, describe: Describe, console: Console, *, title: str = "",
                 max_rows: int = 20, clock: Callable[[], float] = time.monotonic,
                 auto_refresh: bool = True):
        super().__init__(describe, clock)
        self.console, self.title, self.max_rows = console, title, max_rows
        self.auto_refresh = auto_refresh
        self.live: Live | None = None

    def add(self, labels: Sequence[str], *, later: int = 0) -> int:
        first = super().add(labels, later=later)
        if self.live is None:
            from rich.live import Live
            self.live = Live(get_renderable=self.render, console=self.console, transient=True,
                             refresh_per_second=4, auto_refresh=self.auto_refresh,
                             redirect_stdout=True, redirect_stderr=True)
            self.live.start()
        return first

    def start(self, job: int) -> None:
        super().start(job)
        self.finished(self.jobs[job])

    def finished(self, job: Job) -> None:
        if self.live is not None and not self.auto_refresh:   # else: four times a second
            self.live.refresh()

    def print(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    def shown(self) -> tuple[list[Job], int]:
        """The rows that fit: failures and errors, running jobs, the last finished, the next
        queued; and how many are not shown."""
        if len(self.jobs) <= self.max_rows:
            return list(self.jobs), 0
        rank = {RUNNING: 0, "fail": 1, "error": 1, "differs": 1, QUEUED: 3}
        order = sorted(range(len(self.jobs)), key=lambda i: (
            rank.get(self.jobs[i].status, 2), -i if self.jobs[i].finished else i))
        keep = sorted(order[: self.max_rows])
        return [self.jobs[i] for i in keep], len(self.jobs) - len(keep)

    def render(self) -> RenderableType:
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        with self.lock:
            done, running, queued = self.counts()
            total = len(self.jobs)
            eta = self.eta()
            now = self.clock()
            counts = Text.assemble(
                f"{done}/{total} done", f" · {running} running", f" · {queued} queued",
                f" · elapsed {_clock(now - self.t0)}",
                " · ETA " + ("?" if eta is None else _clock(eta)),
                *([(f" (+{self.later} expected)", "dim")] if self.later else []))
            head = Table.grid(padding=(0, 2, 0, 0))
            head.add_row(*([Text(self.title, style="bold")] if self.title else []),
                         ProgressBar(total=max(total, 1), completed=done, width=30), counts)
            rows, hidden = self.shown()
            cells = []
            for j in rows:
                seconds = (j.duration_s if j.finished else
                           now - j.started if j.started is not None else None)
                cells.append((Text(j.status.upper() if j.finished else j.status,
                                   style=STYLE.get(j.status, "")),
                              j.label, "" if seconds is None else f"{seconds:.1f} s", j.detail))
            # status, job and time are never cut; the detail gets the rest of the line
            widths = [max((len(str(c[i])) for c in cells), default=0) for i in range(3)]
            room = max(10, self.console.width - sum(widths) - 3 * 2 - 1)
            table = Table.grid(padding=(0, 2, 0, 0))
            for w in widths:
                table.add_column(no_wrap=True, min_width=w)
            table.add_column(no_wrap=True)
            for status, label, secs, detail in cells:
                cut = Text(detail)
                cut.truncate(room, overflow="ellipsis")
                table.add_row(status, label, secs, cut)
            parts: list[RenderableType] = [head, table]
            if hidden:
                parts.append(Text(f"… {hidden} more not shown", style="dim"))
        return Group(*parts)


AnyProgress = PlainProgress | LiveProgress


def progress_display(describe: Describe, *, title: str = "", line: PlainLine | None = job_line,
                     plain_file: IO[str] | None = None, plain: bool = False) -> AnyProgress:
    """The display a command gets: live on a terminal (stdout and stderr both one, TERM not
    dumb), else — or with `plain` (`--no-progress`) — plain lines to `plain_file` (stdout)."""
    if not plain and sys.stdout.isatty() and sys.stderr.isatty():
        from rich.console import Console
        console = Console(stderr=True)
        if console.is_terminal and not console.is_dumb_terminal:
            return LiveProgress(describe, console, title=title)
    return PlainProgress(describe, line, file=plain_file)
