"""The `Executor` protocol — how many jobs run at once, and where — and its local version.

A backend runs one job; an executor decides how many run side by side and on which CPU slot.
The audit hands it one task per spec; segment replays, bisect probes and a cluster executor
hand it theirs. Nothing else in repro starts threads to run jobs.
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    from repro.backends.base import ChildOutcome
    from repro.errors import ReproError
    from repro.pipeline import Options
    from repro.spec import Spec

T = TypeVar("T")
R = TypeVar("R")

# One unit of work: called with its item and the CPU slot it may use (0 .. slots-1).
Work = Callable[[T, int], R]


@dataclass
class Batch(Generic[R]):
    """What an executor brings back: results by item index (an item missing was not finished:
    the batch was interrupted), and whether every item finished."""

    results: dict[int, R] = field(default_factory=dict)
    complete: bool = True
    interrupted_running: set[int] = field(default_factory=set)  # were running when stopped


@dataclass(frozen=True)
class SpecJob(Generic[R]):
    """One job about one spec: the unit an executor without a shared filesystem can ship
    (repro/engines/parcel.py). `run(spec, options)` must be a module-level function or a partial of one
    (a cluster pickles it); there it gets the spec and options as the worker sees them.
    `failed(message)` is the result when no run could finish (the worker died on every try, the
    project could not be shipped; a NeedsDevice when no node has the GPU a GPU spec needs: a
    SKIPPED verdict). `commits`: more commits the run checks out (bisect). `peer`: what process
    k > 0 of a multi-process spec runs on its node (only its run, a ChildOutcome; None:
    `pipeline.run_peer`, the peer of a whole run), so it runs what process 0's `run` runs."""

    spec: Spec
    options: Options
    run: Callable[[Spec, Options], R]
    failed: Callable[[str | ReproError], R]
    commits: tuple[str, ...] = ()
    peer: Callable[[Spec, Options], ChildOutcome] | None = None


def run_spec_job(job: SpecJob[R], slot: int) -> R:
    """The work of a batch of SpecJobs, on this machine: the job on CPU slot `slot`."""
    return job.run(job.spec, replace(job.options, cpu_slot=slot))


class Executor(Protocol):
    slots: int
    # True: the jobs run where this machine's files are not (a cluster); `map` takes SpecJobs
    # with `run_spec_job` only, so each job says which spec's project to ship with it
    ships_jobs: bool
    # the CPUs of a cluster this executor started for itself, stopped as it closes (0: none)
    started_local: int

    def map(self, work: Work[T, R], items: Sequence[T],
            on_done: Callable[[int, R], None] | None = None,
            on_start: Callable[[int], None] | None = None) -> Batch[R]:
        """Run `work` on every item; `on_start(index)` as each starts (in the thread that runs
        it: keep it short and thread-safe), `on_done(index, result)` as each finishes (in this
        thread). On KeyboardInterrupt: stop everything started, return what finished."""
        ...

    def close(self) -> None:
        """Let go of what the executor opened (a cluster connection); once a front end is done
        with it. Nothing may be mapped after."""
        ...


class LocalExecutor:
    """Up to `slots` items at a time, in threads of this process, each holding a CPU slot: the
    jobs themselves are child processes or containers pinned to their slot's cores."""

    ships_jobs = False
    started_local = 0

    def __init__(self, slots: int = 1):
        self.slots = max(1, slots)

    def close(self) -> None:
        """Nothing to let go of: each map's threads end with it."""

    def map(self, work: Work[T, R], items: Sequence[T],
            on_done: Callable[[int, R], None] | None = None,
            on_start: Callable[[int], None] | None = None) -> Batch[R]:
        batch: Batch[R] = Batch()
        if not items:
            return batch
        free: queue.Queue[int] = queue.Queue()
        for slot in range(min(self.slots, len(items))):
            free.put(slot)
        started: set[int] = set()
        lock = threading.Lock()

        def one(index: int) -> R:
            slot = free.get()
            with lock:
                started.add(index)
            try:
                if on_start:
                    on_start(index)
                return work(items[index], slot)
            finally:
                free.put(slot)

        pool = ThreadPoolExecutor(max_workers=min(self.slots, len(items)),
                                  thread_name_prefix="repro-executor")
        futures: dict[Future[R], int] = {pool.submit(one, i): i for i in range(len(items))}
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    batch.results[futures[fut]] = fut.result()
                    if on_done:
                        on_done(futures[fut], batch.results[futures[fut]])
        except KeyboardInterrupt:
            batch.complete = False
            for fut in pending:
                fut.cancel()
            with lock:
                batch.interrupted_running = {futures[f] for f in pending} & started
            from repro.backends import kill_all  # local children and docker containers
            kill_all()
            pool.shutdown(wait=True, cancel_futures=True)
            for fut, index in futures.items():  # those that ended while being stopped
                if fut.done() and not fut.cancelled() and fut.exception() is None:
                    batch.results.setdefault(index, fut.result())
        finally:
            pool.shutdown(wait=True)
        return batch
