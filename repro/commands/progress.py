"""The `Progress` protocol: what a long command tells its display about its jobs.

The audit, segment replay, `repro calibrate` and `repro bisect` declare their jobs (`add`), and
say when each starts and finishes; the front end decides how that looks
(`repro/report/progress.py`: a live table on a terminal, plain lines in a CI log). Library code
only calls these methods, on an object it was given, and imports no display library.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class Progress(Protocol):
    def add(self, labels: Sequence[str], *, later: int = 0) -> int:
        """Queue one job per label; returns the number of the first (jobs are numbered from 0
        in the order added). `later`: about how many more jobs are expected after these (bisect's
        next rounds), for the ETA."""
        ...

    def start(self, job: int) -> None:
        """Job `job` started (may be called from a worker thread)."""
        ...

    def done(self, job: int, result: object) -> None:
        """Job `job` finished with `result` (a Verdict, a calibrate VariationRun, a segment's
        RunResult or ReproError: the display knows how to describe each)."""
        ...
