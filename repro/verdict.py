"""The Verdict: everything that decided one spec's outcome, in one plain object.

Front ends (pytest item, CLI, audit) only render it; every number that decides pass/fail is here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from repro.env.fingerprint import Fingerprint

if TYPE_CHECKING:
    from repro.spec import Spec

QuantityKind = Literal["metric", "grad", "weight", "state"]


@dataclass
class QuantityResult:
    kind: QuantityKind
    name: str                     # metric name or pytree leaf path
    ok: bool
    bitwise: bool                 # compared bitwise (True) or within rtol/atol (False)
    first_step: int | None = None
    max_abs: float = 0.0
    max_rel: float = 0.0
    rtol: float | None = None
    atol: float | None = None
    n_out: int = 0
    n_total: int = 0
    note: str = ""
    spread: float | None = None   # mode close: the largest difference between recorded runs
    segment: str = ""             # segment replay: the steps compared, "[300, 400)"

    @property
    def spread_multiple(self) -> float | None:
        """max_abs as a multiple of the recorded spread (None: no spread recorded)."""
        if self.spread is None:
            return None
        return self.max_abs / self.spread if self.spread else (0.0 if not self.max_abs else math.inf)

    @property
    def label(self) -> str:
        return {"metric": "metric", "grad": "grad", "weight": "weights",
                "state": "state"}[self.kind] + f" {self.name}" + \
            (f" in {self.segment}" if self.segment else "")

    @property
    def tolerance_text(self) -> str:
        return "bitwise" if self.bitwise else f"rtol={self.rtol:g} atol={self.atol:g}"


class Status(StrEnum):
    """A verdict's outcome. Exit codes: 0 pass/recorded/ran/skipped (the spec needs a device this
    host lacks), 1 fail (a verified mismatch, and nothing else), 2 error (anything else that kept
    the comparison from being made)."""

    PASS = "pass"
    FAIL = "fail"
    ERROR = "error"
    RECORDED = "recorded"
    RAN = "ran"
    SKIPPED = "skipped"

    @property
    def exit_code(self) -> int:
        return {Status.FAIL: 1, Status.ERROR: 2}.get(self, 0)


PASS, FAIL, ERROR, RECORDED, RAN = (Status.PASS, Status.FAIL, Status.ERROR, Status.RECORDED,
                                    Status.RAN)
ChangeKind = Literal["spec", "code", "data", "environment", "backend", "sharding"]


@dataclass
class Change:
    """One difference between the recorded version and now: a pin, a spec key or an env fact."""

    what: ChangeKind
    key: str
    recorded: Any
    current: Any
    numeric: bool = True   # may change the numbers (False: informational only)
    detail: str = ""       # e.g. which files differ between two commits

    def text(self) -> str:
        if isinstance(self.recorded, list) and isinstance(self.current, list):
            return f"{self.key}: {set_difference(self.recorded, self.current)}"
        more = f" ({self.detail})" if self.detail else ""
        return f"{self.key}: {_short(self.recorded)} -> {_short(self.current)}{more}"


def set_difference(recorded: list[Any], current: list[Any]) -> str:
    """What a list lost and gained, e.g. CPU flags: `-avx512bw -avx512f +none`."""
    lost = sorted(set(map(str, recorded)) - set(map(str, current)))
    gained = sorted(set(map(str, current)) - set(map(str, recorded)))
    if not lost and not gained:
        return "same items, other order"
    return " ".join([f"-{x}" for x in lost] or ["-none"]) + " " + \
        " ".join([f"+{x}" for x in gained] or ["+none"])


def _short(value: Any, limit: int = 60) -> str:
    text = "(none)" if value is None else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class Confirmation:
    """The evidence behind a failure's class, from runs made again after it failed (`--confirm`).

    `agree` False: a rerun differed from the first run (`first_difference` says where), so the
    training is nondeterministic. True: every rerun gave the first run's bits, so the training is
    deterministic and an input no pin covers changed (`candidates` names what it may be)."""

    runs: int                                  # reruns made after the failing run
    agree: bool
    first_difference: str = ""                 # nondeterministic: quantity, step, how far
    candidates: list[str] = field(default_factory=list)   # changed: unpinned inputs that moved
    unknown: list[str] = field(default_factory=list)      # read, but not known to the record


@dataclass
class Localisation:
    """The first op of a traced step that differs from the record (docs/localisation.md).

    kind "value": same program there, the op's output bits differ (max_abs/max_rel over the kept
    values: all of a small output, a strided sample of a large one). kind "structure": the
    programs' op sequences part here (difflib alignment on (primitive, shape)); `recorded` says
    what the record had at that place."""

    kind: Literal["value", "structure"]
    function: str                   # the traced function's __qualname__
    step: int                       # the call of that function (counted from 0)
    op_index: int                   # position among the step's op outputs (the run's)
    n_ops: int
    primitive: str
    shape: str                      # dtype[shape] of the output
    source: str                     # "file:line in function" ("?" when unknown)
    max_abs: float | None = None
    max_rel: float | None = None
    sampled: int = 1                # 1: every element compared; N: one in N
    recorded: str = ""              # structure: the record's op(s) at that place

    def text(self) -> str:
        head = f"{self.primitive} {self.shape} at {self.source}"
        where = f"(step {self.step} of {self.function}, op {self.op_index + 1} of {self.n_ops})"
        if self.kind == "structure":
            return f"{head} {where}: the program differs here; the record has {self.recorded or 'nothing'}"
        if self.max_abs is None:
            return f"{head} {where}: output bits differ"
        sample = f" (over one element in {self.sampled})" if self.sampled > 1 else ""
        return f"{head} {where}: max abs {self.max_abs:.3g}, max rel {self.max_rel or 0:.3g}{sample}"


@dataclass
class Stop:
    """Where fail-fast stopped a failing run (docs/failfast.md): at `step`, of the record's
    last logged step `of`, because `quantity` was out of tolerance there."""

    step: int
    of: int
    quantity: str                   # "metric loss"
    why: str = "out of tolerance"
    recorded: float | None = None
    current: float | None = None

    def text(self) -> str:
        run = "?" if self.current is None else f"{self.current:.9g}"
        values = "" if self.recorded is None else f" (recorded {self.recorded:.9g}, run {run})"
        return (f"stopped at step {self.step} of {self.of} (fail-fast): {self.quantity} {self.why}"
                f"{values}; later steps, later gradients and the final weights were not compared")


@dataclass
class SegmentOutcome:
    """One replayed segment: the run from the recorded state at `start` to the one at `end`
    (None: to the end of the run, final weights included)."""

    start: int
    end: int | None
    status: Status
    duration_s: float = 0.0
    first: str = ""                 # fail: the first diverging quantity and step; error: why
    stopped_at: int | None = None   # fail-fast stopped it at this step
    continued: bool = False         # ran on in the run of the segment before it (repro/commands/segments.py)

    @property
    def label(self) -> str:
        return f"[{self.start}, {self.end})" if self.end is not None else f"[{self.start}, end]"

    def text(self) -> str:
        stop = f", stopped at step {self.stopped_at} (fail-fast)" if self.stopped_at is not None else ""
        return f"{self.label} {self.status}" + (f": {self.first}" if self.first else "") + stop


@dataclass
class Segments:
    """What `--segments` verified (docs/segments.md): the selection as given, the seed of a
    sample, how many segments the record has, and each replayed one's outcome."""

    selection: str
    total: int
    seed: int | None = None
    outcomes: list[SegmentOutcome] = field(default_factory=list)

    def text(self) -> str:
        bad = [o for o in self.outcomes if o.status != Status.PASS]
        sample = f", sample seed {self.seed}" if self.seed is not None else ""
        head = f"segments: {len(self.outcomes)} of {self.total} replayed ({self.selection}{sample})"
        if not bad:
            return head + ", all pass"
        return head + "; diverges in " + "; ".join(o.text() for o in bad)


@dataclass
class Restart:
    """`--resume-check` (docs/checkpoints.md): a run restored from the checkpoint at `at` must
    reach the record's next checkpoint `to` bitwise. When it does not: the leaves that differ
    from an uninterrupted run at `first_step` (the first state kept after the restore), and the
    parts of the state a run restored with them nudged still reproduces (not restored)."""

    at: int
    to: int
    first_step: int | None = None
    differing: list[str] = field(default_factory=list)
    not_restored: list[str] = field(default_factory=list)

    def text(self) -> str:
        head = f"restart check: restored at step {self.at}, compared up to step {self.to}"
        if self.first_step is None:
            return head
        shown = ", ".join(self.differing[:12]) + (f" … ({len(self.differing)} in all)"
                                                   if len(self.differing) > 12 else "")
        lines = [head, f"at step {self.first_step}, the first state after the restore, "
                       f"{len(self.differing)} leaves differ from an uninterrupted run: {shown or 'none'}"]
        if self.not_restored:
            parts = ", ".join(self.not_restored)
            lines.append(f"not restored: {parts} — a run restored with {parts} nudged reaches the "
                         f"same state at step {self.first_step}, so the training function does not "
                         "take it from ctx.restore (it re-creates it): use the restored value")
        else:
            lines.append("every part of the state is taken from ctx.restore: the restored run "
                         "differs in what it computes from it (an unpinned input, a counter kept "
                         "outside the state?)")
        return "\n".join(lines)


@dataclass
class Verdict:
    name: str
    status: Status
    spec_path: str = ""
    platform: str = ""
    backend: str = "local"
    code: str = ""                            # CodePin.describe()
    bitwise: bool | None = None
    mode_reason: str = ""
    rows: list[QuantityResult] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str = ""                           # one-paragraph message for status error
    error_detail: str = ""                    # e.g. the user's trimmed traceback, the log tail
    killed_by: str = ""                       # error: the run was killed (KilledBy value)
    fail_class: str = ""                      # fail: "nondeterministic" (runs disagree) | "changed" | "mesh-dependent"
    confirmation: Confirmation | None = None  # fail: the reruns that decided fail_class
    record_path: str = ""
    spec_hash: str = ""
    commit: str = ""
    fingerprint: Fingerprint = field(default_factory=Fingerprint)
    timings: dict[str, float] = field(default_factory=dict)
    metrics_final: dict[str, Any] = field(default_factory=dict)
    pins: dict[str, Any] = field(default_factory=dict)    # commit, spec hash, data sha256s, image
    curves: dict[str, Any] = field(default_factory=dict)  # metric -> {steps, recorded, run}
    duration_s: float = 0.0                      # wall time of the whole verify/record/run
    localisation: Localisation | None = None     # fail: the first diverging op (ctx.traced)
    programs_unchanged: bool | None = None       # ctx.traced: every program's jaxpr and HLO as recorded
    stopped: Stop | None = None                  # fail: fail-fast stopped the run (repro/failfast.py)
    segments: Segments | None = None             # --segments: what was replayed (repro/commands/segments.py)
    restart: Restart | None = None               # --resume-check (repro/commands/resume.py)

    @property
    def exit_code(self) -> int:
        return Status(self.status).exit_code

    @property
    def ok(self) -> bool:
        return self.status in (PASS, RECORDED, RAN, Status.SKIPPED)

    @property
    def failures(self) -> list[QuantityResult]:
        return [r for r in self.rows if not r.ok]

    @property
    def first_divergence(self) -> QuantityResult | None:
        """The failing quantity to look at first: earliest step, metrics before grads/weights."""
        bad = self.failures
        if not bad:
            return None
        order = {"metric": 0, "grad": 1, "state": 2, "weight": 3}
        return min(bad, key=lambda r: (r.first_step if r.first_step is not None else 10**12,
                                       order[r.kind]))


def spec_verdict(spec: Spec, status: Status, backend: str) -> Verdict:
    """A verdict about `spec`, its pins filled in (the rest is the caller's)."""
    return Verdict(name=spec.name or "?", status=status, spec_path=str(spec.path or ""),
                   backend=backend, spec_hash=spec.hash, commit=spec.code.commit or "",
                   pins={"commit": spec.code.commit, "spec_hash": spec.hash,
                         "data": {n: e.sha256 for n, e in spec.data.items()},
                         "image": spec.environment.image})


def error_verdict(spec_ref: Spec | Path | str, error: BaseException | str, *,
                  spec: Spec | None = None, backend: str = "local") -> Verdict:
    """The verdict for a spec that could not be compared: a bad spec, a broken pin, a crash, a
    killed run, a duplicate name, an interrupted audit. The one constructor every front end
    uses, so an error reads the same wherever it is shown."""
    from repro.errors import NeedsDevice
    from repro.spec import Spec as _Spec

    spec = spec if spec is not None else (spec_ref if isinstance(spec_ref, _Spec) else None)
    status = Status.SKIPPED if isinstance(error, NeedsDevice) else Status.ERROR
    if spec is not None:
        v = spec_verdict(spec, status, backend)
    else:
        v = Verdict(name=Path(str(spec_ref)).stem, status=Status.ERROR,
                    spec_path=str(spec_ref), backend=backend)
    v.error = str(error)
    v.error_detail = getattr(error, "detail", "") or ""
    v.killed_by = getattr(error, "killed_by", None) or ""
    return v
