"""Which segments `--segments` replays, and which of them share a run (docs/segments.md).

Pure planning, no runs: the selection syntax (`all`, `sample:K[:SEED]`, `A-B`), the record's
segments between its checkpoints, the seeded choice, and `plan_units`, which groups consecutive
chosen segments into as many runs as there are slots. repro/commands/segments.py runs and judges them.
"""
from __future__ import annotations

import dataclasses
import random
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from repro.errors import SpecError
from repro.record import RecordMeta


@dataclass(frozen=True)
class Selection:
    """Which segments `--segments` replays: all, a seeded sample of `count`, or those that
    overlap steps [low, high)."""

    text: str
    kind: Literal["all", "sample", "range"]
    count: int = 0
    seed: int | None = None
    low: int = 0
    high: int | None = None


def parse_selection(text: str) -> Selection:
    """`all`, `sample:K[:SEED]` or `A-B` (steps, B may be empty: to the end); ValueError
    saying what is accepted."""
    t = text.strip()
    usage = f"--segments {text!r}: expected all, sample:K[:SEED] or A-B (steps, A < B)"
    if t == "all":
        return Selection(t, "all")
    if t.startswith("sample:"):
        parts = t.split(":")
        try:
            count = int(parts[1])
            seed = int(parts[2]) if len(parts) == 3 else None
        except (IndexError, ValueError):
            raise ValueError(usage) from None
        if len(parts) > 3 or count < 1 or (seed is not None and seed < 0):
            raise ValueError(usage)
        return Selection(t, "sample", count=count, seed=seed)
    low, sep, high = t.partition("-")
    try:
        lo, hi = int(low), (int(high) if high else None)
    except ValueError:
        raise ValueError(usage) from None
    if not sep or lo < 0 or (hi is not None and hi <= lo):
        raise ValueError(usage)
    return Selection(t, "range", low=lo, high=hi)


@dataclass(frozen=True)
class Segment:
    """Steps [start, end) of the run. `final`: the run goes on to its end (no stop at `end`;
    end None when the run logs steps after its last checkpoint) and its weights are compared."""

    start: int
    end: int | None
    final: bool = False

    @property
    def label(self) -> str:
        return f"[{self.start}, {self.end})" if self.end is not None else f"[{self.start}, end]"

    @property
    def stop_at(self) -> int | None:
        return None if self.final else self.end

    def has_step(self, step: int) -> bool:
        return step >= self.start and (self.end is None or step < self.end)

    def keeps_state(self, step: int) -> bool:
        """The states this segment reaches: after its start, up to its end."""
        return step > self.start and (self.end is None or step <= self.end)


class NoCheckpoints(SpecError):
    """The record kept no state after step 0, so it has no segments."""


def segments_of(meta: RecordMeta, spec_name: str, script: bool = False) -> list[Segment]:
    """The record's segments; NoCheckpoints when it kept no state after step 0 (`script`: the
    spec runs an unmodified script, which cannot keep states)."""
    if meta.checkpoints is None or not [s for s in meta.checkpoints.steps if s > 0]:
        if script:
            raise NoCheckpoints(f"{spec_name} runs an unmodified script (code.command), which "
                                "keeps no checkpoint, so its record has no segments; only a "
                                "training function (ctx.checkpoint) can be replayed in parts")
        raise NoCheckpoints(f"the record of {spec_name} keeps no checkpoint, so it has no "
                            "segments: add `record.checkpoints: {every: K}` to the spec, call "
                            "ctx.restore and ctx.checkpoint in the training function "
                            "(docs/checkpoints.md), and record again")
    bounds = [0, *sorted(s for s in meta.checkpoints.steps if s > 0)]
    out = [Segment(a, b) for a, b in zip(bounds, bounds[1:])]
    logged = [s for series in meta.metrics.values() for s in series["steps"]] + list(meta.grad_steps)
    if any(s >= bounds[-1] for s in logged):
        out.append(Segment(bounds[-1], None, final=True))
    else:   # the last checkpoint is the end of the run: its segment runs to the end
        out[-1] = dataclasses.replace(out[-1], final=True)
    return out


def choose(segments: list[Segment], selection: Selection) -> tuple[list[Segment], int | None]:
    """The segments a selection replays, in step order, and the seed of a sample."""
    if selection.kind == "all":
        return segments, None
    if selection.kind == "sample":
        seed = selection.seed if selection.seed is not None else secrets.randbelow(2**31)
        picked = random.Random(seed).sample(range(len(segments)), min(selection.count, len(segments)))
        return [segments[i] for i in sorted(picked)], seed
    hi = selection.high
    chosen = [s for s in segments if (hi is None or s.start < hi)
              and (s.end is None or s.end > selection.low)]
    if not chosen:
        raise SpecError(f"--segments {selection.text}: no segment overlaps those steps (the "
                        f"record's segments: {', '.join(s.label for s in segments)})")
    return chosen, None


def plan_units(chosen: Sequence[Segment], slots: int, last_step: int) -> list[list[int]]:
    """Which of the chosen segments run together (indexes, in step order): one run a segment
    when the slots allow, else consecutive segments share runs, cut where the runs come out
    most even in steps, as many runs as there are slots (or gaps between chosen segments)."""
    if slots >= len(chosen):
        return [[i] for i in range(len(chosen))]

    def steps(unit: list[int]) -> int:
        return sum((s.end if s.end is not None else max(last_step + 1, s.start + 1)) - s.start
                   for s in (chosen[i] for i in unit))
    units: list[list[int]] = []
    for i, seg in enumerate(chosen):
        if units and chosen[units[-1][-1]].end == seg.start:
            units[-1].append(i)
        else:
            units.append([i])
    while len(units) < slots and any(len(u) > 1 for u in units):
        at, unit = max(((k, u) for k, u in enumerate(units) if len(u) > 1), key=lambda x: steps(x[1]))
        cut = min(range(1, len(unit)), key=lambda k: max(steps(unit[:k]), steps(unit[k:])))
        units[at:at + 1] = [unit[:cut], unit[cut:]]
    return units
