"""The Verdict: everything that decided one spec's outcome, in one plain object.

Front ends (pytest item, CLI, audit) only render it; every number that decides pass/fail is here.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class QuantityResult:
    kind: str                     # "metric" | "grad" | "weight"
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

    @property
    def label(self) -> str:
        return {"metric": "metric", "grad": "grad", "weight": "weights"}[self.kind] + f" {self.name}"

    @property
    def tolerance_text(self) -> str:
        return "bitwise" if self.bitwise else f"rtol={self.rtol:g} atol={self.atol:g}"


PASS, FAIL, ERROR, RECORDED, RAN = "pass", "fail", "error", "recorded", "ran"
EXIT_CODES = {PASS: 0, RECORDED: 0, RAN: 0, FAIL: 1, ERROR: 2}


@dataclass
class Change:
    """One difference between the recorded version and now: a pin, a spec key or an env fact."""

    what: str          # "spec" | "code" | "data" | "environment" | "backend"
    key: str
    recorded: object
    current: object
    numeric: bool = True   # may change the numbers (False: informational only)

    def text(self) -> str:
        return f"{self.key}: {_short(self.recorded)} -> {_short(self.current)}"


def _short(value, limit: int = 60) -> str:
    text = "(none)" if value is None else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class Verdict:
    name: str
    status: str                               # pass | fail | error | recorded | ran
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
    record_path: str = ""
    spec_hash: str = ""
    commit: str = ""
    fingerprint: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    metrics_final: dict = field(default_factory=dict)
    pins: dict = field(default_factory=dict)    # commit, spec hash, data sha256s, image
    curves: dict = field(default_factory=dict)  # metric -> {steps, recorded, run} (verify only)
    duration_s: float = 0.0                      # wall time of the whole verify/record/run

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]

    @property
    def ok(self) -> bool:
        return self.status in (PASS, RECORDED, RAN)

    @property
    def failures(self) -> list[QuantityResult]:
        return [r for r in self.rows if not r.ok]

    @property
    def first_divergence(self) -> QuantityResult | None:
        """The failing quantity to look at first: earliest step, metrics before grads/weights."""
        bad = self.failures
        if not bad:
            return None
        order = {"metric": 0, "grad": 1, "weight": 2}
        return min(bad, key=lambda r: (r.first_step if r.first_step is not None else 10**12,
                                       order[r.kind]))
