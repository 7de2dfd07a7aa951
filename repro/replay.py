"""Parent side of a run that starts from a checkpoint or ends at one (docs/checkpoints.md).

A `Replay` says where a run starts (the state `ctx.restore` returns: a recorded checkpoint) and
where it ends (`ctx.checkpoint(stop_at)` keeps that state and ends the run), and which extra
states to keep on the way. Segment replay (`repro.commands.segments`) and the restart check
(`repro.commands.resume`) build one per run; `pipeline.make_job` applies it to the job and
`pipeline.execute` writes the restored state next to it.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from repro.child.state import LeafKind
from repro.errors import SpecError
from repro.job import Job, RestorePoint

if TYPE_CHECKING:
    from repro.spec import Spec

RESTORE_FILE = "restore.npz"   # in the run's out/ directory, written before the child starts


@dataclass(frozen=True)
class Replay:
    start: int = 0                                          # 0: a fresh run, no restore
    state: Mapping[str, np.ndarray] = field(default_factory=dict)   # leaf path -> array
    layout: tuple[LeafKind, ...] = ()                      # the leaves' kinds, in pytree order
    stop_at: int | None = None                              # end once this state is kept
    keep: tuple[int, ...] = ()                              # extra steps whose state is kept

    @property
    def restores(self) -> bool:
        return self.start > 0


def checkpoint_job(job: Job, spec: Spec, replay: Replay | None) -> Job:
    """`job` keeping the states the spec's `record.checkpoints` asks for, and starting and
    ending where `replay` says."""
    ck = spec.record.checkpoints
    every, steps = (ck.every, tuple(ck.steps)) if ck else (None, ())
    if replay is None:
        return job.replace(checkpoints_every=every, checkpoints_steps=steps)
    if spec.code.command is not None:
        raise SpecError("segment replay and restarts need a train(ctx) entrypoint that keeps "
                        "its state with ctx.checkpoint; an unmodified script (code.command) is "
                        "only run whole", file=str(spec.path or ""), key_path="code.command")
    restore = None
    if replay.restores:
        restore = RestorePoint(replay.start, RESTORE_FILE,
                               tuple(tuple(k.as_list()) for k in replay.layout))
    return job.replace(checkpoints_every=every, checkpoints_steps=tuple(sorted({*steps, *replay.keep})),
                       restore=restore, stop_at=replay.stop_at)


def write_restore(out: Path, replay: Replay | None) -> None:
    """The restored state, where the child's `ctx.restore` reads it (out/restore.npz)."""
    if replay is not None and replay.restores:
        from repro.ioutil import write_npz_atomic

        write_npz_atomic(Path(out) / RESTORE_FILE, dict(replay.state))
