"""Child side of checkpoints (docs/checkpoints.md): what `ctx.checkpoint` keeps, what
`ctx.restore` gives back, and the end of a replayed segment.

Each kept state is written as it is reached (`out/checkpoints/<step>.npz`, one array per leaf,
keyed by leaf path), so a long run holds no checkpoint in memory; the leaf kinds go into run.json
(`Checkpoints.layout`). A replayed segment restores the state the parent put in `restore.npz`
and ends at `ctx.checkpoint(stop_at)` by raising `SegmentEnd` once that state is written.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from repro.child.state import LeafKind, decode_state, encode_state
from repro.job import RestorePoint

if TYPE_CHECKING:
    from repro.child.expect import ArrayExpectation


class SegmentEnd(BaseException):
    """Raised by `ctx.checkpoint` at the end of a replayed segment, once its state is kept; the
    runner catches it (a BaseException so a training loop's `except Exception` lets it pass)."""

    def __init__(self, step: int):
        super().__init__(f"segment ends at step {step}")
        self.step = step


class Checkpoints:
    """The checkpoint schedule and replay instructions of one run.

    keeps: which steps' states are kept (record.checkpoints, plus any the parent asks for).
    restore: None, or (step, npz path, [LeafKind]) — the state `ctx.restore` returns.
    stop_at: end the run at the first state offered at or after this step, once it is kept (a
      segment's end; the restart check's first step after a restore).
    """

    def __init__(self, out: Path | None, keeps: Callable[[int], bool],
                 restore: tuple[int, str, list[LeafKind]] | None = None,
                 stop_at: int | None = None):
        self._out = out
        self._keeps = keeps
        self._restore = restore
        self.stop_at = stop_at
        self.layout: dict[str, list[list[Any]]] = {}   # step -> [[path, kind, weak], ...]
        self.restored_at: int | None = None
        self.seconds = 0.0   # spent keeping states (waiting for them, encoding, writing)
        self._last: int | None = None
        self.on_restore: Callable[[int], None] | None = None   # ctx.traced's step offset
        self.expect: ArrayExpectation | None = None   # fail-fast: the record's states (expect.py)
        self.mesh: Callable[[], Any] = lambda: None   # the spec's mesh, where sharded leaves go back

    @property
    def replaying(self) -> bool:
        return self._restore is not None

    def require_restore(self, what: str) -> None:
        """A replay whose training function never called ctx.restore would train from step 0
        and pass slowly, or compare the wrong steps: an error, named."""
        if self._restore is not None and self.restored_at is None:
            raise RuntimeError(
                f"{what} before ctx.restore: this run replays from the checkpoint at step "
                f"{self._restore[0]}, and the training function must start from it. Call "
                "`start, state = ctx.restore(state)` before the training loop and loop from "
                "`start` (docs/checkpoints.md)")

    def restore(self, template: object) -> tuple[int, object]:
        if self._restore is None:
            self.restored_at = 0
            return 0, template
        step, path, kinds = self._restore
        import numpy as np

        with np.load(path, allow_pickle=False) as f:
            leaves = {k.path: (k, np.asarray(f[k.path])) for k in kinds}
        try:
            state = decode_state(template, leaves, step, self.mesh())
        except ValueError as exc:
            raise ValueError(f"ctx.restore: {exc}") from None
        self.restored_at = step
        if self.on_restore is not None:
            self.on_restore(step)
        return step, state

    def checkpoint(self, step: int, state: object) -> None:
        self.require_restore(f"ctx.checkpoint({step}, ...)")
        if self._last is not None and step <= self._last:
            raise ValueError(f"ctx.checkpoint: step {step} does not follow step {self._last}; "
                             "steps must increase")
        self._last = step
        end = self.stop_at is not None and step >= self.stop_at
        if not (end or self._keeps(step)) or self._out is None:
            return
        import time

        from repro.ioutil import write_npz_atomic

        t0 = time.perf_counter()
        encoded = encode_state(state, f"ctx.checkpoint at step {step}")
        self._out.mkdir(exist_ok=True)
        write_npz_atomic(self._out / f"{step}.npz", {k.path: a for k, a in encoded})
        self.layout[str(step)] = [k.as_list() for k, _ in encoded]
        self.seconds += time.perf_counter() - t0
        if self.expect is not None:   # kept (the parent compares it), then checked
            stop = self.expect.check("state", step, {k.path: a for k, a in encoded})
            if stop is not None:
                from repro.child.expect import Stopped
                raise Stopped(stop)
        if end:
            raise SegmentEnd(step)


def restore_spec(point: RestorePoint | None, out: Path) -> tuple[int, str, list[LeafKind]] | None:
    """The job's `restore` point (its file a name in the run's out/) as Checkpoints takes it."""
    if point is None:
        return None
    return (point.step, str(out / Path(point.file).name), [LeafKind.from_list(x) for x in point.layout])
