"""`repro calibrate SPEC`: how far a spec's numbers move when only the environment moves.

A variation matrix for training, in the spirit of reprotest: the spec runs once as pinned (the
baseline) and once under each variation this host can do — every XLA ISA ceiling below the
host's best, other core counts, the compile cache off and warm, other PYTHONHASHSEEDs, reversed
directory listings — and every quantity of every variation is compared with the baseline,
bitwise. What breaks bitwise is named; what the arithmetic variations (ISA, cores, compile
cache) moved gives measured tolerances: per quantity kind (grads, weights) and per metric, the
smallest (rtol, atol) that lets every observed deviation pass with a margin of 1.5, never
below repro's built-in fallback (the rule of Megatron-LM's golden-value statistics: largest
deviation × 1.5, with a floor). PYTHONHASHSEED and listing order are not tolerated: code that
depends on them computes something else, and is named. `--write` puts the tolerances in the
spec, keeping the user's comments. Tolerance keys never change a spec's numbers, so
records stay valid.

Runs go through the `Executor`: the baseline first (it also fills the compile cache the
`compile-cache=warm` variation loads from), then the variations `-j` at a time on their own CPU
slots. A variation that changes the core count runs alone after the others, on the first cores,
so that it gets every core it asks for and shares none.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import platform
import shutil
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal
from pathlib import Path

import numpy as np

from repro import pipeline
from repro.commands.progress import Progress
from repro.compare import FALLBACK, metric_array, resolve_tolerance
from repro.engines.executor import LocalExecutor
from repro.env.cpu import cpu_isa, cpu_model
from repro.env.isa import XLA_ISAS, cap_in, ceiling, effective, host_best, is_x86
from repro.errors import ReproError, RunError, SpecError
from repro.ioutil import atomic_write_text
from repro.noise import compare_runs
from repro.result import RunResult, check_recordable
from repro.spec import EnvironmentSpec, Spec, ToleranceSpec, load_spec, parse_spec
from repro.variation import BASELINE, Variation
from repro.verdict import QuantityKind, QuantityResult
from repro.yamlio import load_with_lines, set_value

KINDS = ("isa", "cpus", "compile-cache", "hash-seed", "listing", "gpu-ops", "cpu")
# The kinds whose deviations the proposed tolerances absorb: rounding that differs between
# environments a verify can meet (another host's ISA, a cold or warm cache, another core count
# once environment.cpus is changed: a numeric fingerprint field, so compared within tolerance). The
# others change *what* is computed, not how it is rounded: code that depends on them is named,
# and is to be fixed, not tolerated. PYTHONHASHSEED is 0 in every repro run, so a verify never
# meets another one; a listing order that matters means data read in another order; repro's GPU
# runs always set --xla_gpu_deterministic_ops=true, so a verify never meets it off (gpu-ops).
TOLERATED = ("isa", "cpus", "compile-cache", "cpu")
HASH_SEEDS = ("1", "2")      # the baseline runs under PYTHONHASHSEED=0 (repro's default)
MARGIN = 1.5                 # every observed deviation passes at this multiple of itself
NEGLIGIBLE = 1e-3            # |value| below this fraction of its quantity's largest: atol's domain
STAMP = "# calibrated by repro calibrate"

TolKey = tuple[str, ...]     # a tolerance block under `tolerance:`: (grads,) (weights,) (metrics, NAME)


@dataclass(frozen=True)
class Bounds:
    """An elementwise tolerance: |run - record| <= atol + rtol * |record|."""

    rtol: float
    atol: float


FLOOR = Bounds(FALLBACK["rtol"], FALLBACK["atol"])   # what repro applies when a spec sets nothing


# -- what this host can vary ------------------------------------------------------------------
@dataclass(frozen=True)
class Host:
    """The machine calibrate runs on: what it can vary (ISA levels, cores) and its name."""

    machine: str
    cpu_flags: tuple[str, ...]
    cores: int
    model: str = ""

    @classmethod
    def here(cls) -> Host:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
            os.cpu_count() or 1)
        return cls(platform.machine(), tuple(cpu_isa()), cores, cpu_model())

    @property
    def best_isa(self) -> str | None:
        """The highest XLA ISA level this CPU reaches (None off x86-64)."""
        return host_best(self.cpu_flags) if is_x86(self.machine) else None

    def summary(self) -> str:
        model = f" ({self.model})" if self.model else ""
        return f"{self.machine} {self.best_isa or ''}{model}, {self.cores} cores".replace("  ", " ")


def effective_isa(env: EnvironmentSpec, host: Host) -> str:
    """The ISA XLA's code generation may use for runs of `env` on `host` (env/isa.py)."""
    cap = cap_in(" ".join(env.xla_flags)) or ceiling(env.isa, host.cpu_flags, host.machine)
    return effective(f"--xla_cpu_max_isa={cap}" if cap else "", host.cpu_flags, host.machine)


def variation_kind(variation: Variation) -> str:
    """Which of KINDS a variation belongs to ('baseline' for the plain run)."""
    if variation.emulate_cpu is not None:
        return "cpu"
    if variation.isa is not None:
        return "isa"
    if variation.cpus is not None:
        return "cpus"
    if variation.compile_cache is not None:
        return "compile-cache"
    if variation.hash_seed != BASELINE.hash_seed:
        return "hash-seed"
    if variation.listing_order != BASELINE.listing_order:
        return "listing"
    if variation.deterministic_ops is not None:
        return "gpu-ops"
    return "baseline"


def _isa_variations(spec: Spec, host: Host) -> tuple[list[Variation], str | None]:
    env = spec.environment
    if not is_x86(host.machine):
        return [], f"isa: {host.machine} is not x86-64; XLA has no ISA ceiling there"
    if env.platform == "gpu":
        return [], "isa: environment.platform is gpu; the CPU ISA ceiling does not apply"
    if cap_in(" ".join(env.xla_flags)):
        return [], "isa: environment.xla_flags sets --xla_cpu_max_isa, which no variation overrides"
    best = host.best_isa
    if best is None:
        return [], "isa: this CPU does not reach SSE4_2, the lowest XLA ISA level"
    own = effective_isa(env, host)
    out = []
    for level in XLA_ISAS[: XLA_ISAS.index(best) + 1]:
        if level == own:
            continue
        if level == best:  # the host's best: no ceiling at all, as `isa: native` runs
            out.append(Variation(f"isa=native ({level})", isa="native"))
        else:
            out.append(Variation(f"isa={level}", isa=level))
    return out, None


def _cpu_variations(spec: Spec, host: Host) -> tuple[list[Variation], str | None]:
    """Other CPUs, emulated (env/emulate.py): what a CI runner of that kind would compute."""
    from repro.env.emulate import CALIBRATE_MODELS, INSTALL, QEMU

    if not is_x86(host.machine):
        return [], f"cpu: {host.machine} is not x86-64; qemu-user emulates x86-64 CPUs on x86-64 hosts"
    if spec.environment.platform == "gpu":
        return [], "cpu: environment.platform is gpu; an emulated CPU has no GPU"
    if not shutil.which(QEMU):
        return [], f"cpu: {QEMU} is not installed: {INSTALL}"
    return [Variation(f"cpu={m}", emulate_cpu=m) for m in CALIBRATE_MODELS], None


def variations_for(spec: Spec, host: Host) -> list[Variation]:
    """Every variation this host can run the spec under (none is the spec's own setting):
    each XLA ISA level up to the host's best other than the spec's effective one (the best as
    `native`), 1, 2 and all cores, the compile cache off and warm, two other PYTHONHASHSEEDs,
    and directory listings reversed."""
    out, _ = _isa_variations(spec, host)
    own = spec.environment.cpus
    out += [Variation(f"cpus={n}", cpus=n) for n in sorted({1, 2, host.cores})
            if n != own and n <= host.cores]
    out += [Variation("compile-cache=off", compile_cache=False),
            Variation("compile-cache=warm", compile_cache=True)]
    out += [Variation(f"PYTHONHASHSEED={s}", hash_seed=s) for s in HASH_SEEDS]
    out.append(Variation("listing=reversed", listing_order="reversed"))
    if spec.environment.platform == "gpu":
        out.append(Variation("deterministic-ops=off", deterministic_ops=False))
    out += _cpu_variations(spec, host)[0]
    return out


def unavailable(spec: Spec, host: Host) -> list[str]:
    """What variations_for leaves out on this host, and why."""
    _, why = _isa_variations(spec, host)
    out = [why] if why else []
    _, why = _cpu_variations(spec, host)
    out += [why] if why else []
    if host.cores == 1:
        out.append("cpus: this host lets runs use one core only")
    if spec.environment.platform != "gpu":
        out.append("gpu-ops: environment.platform is not gpu; XLA's GPU deterministic ops do "
                   "not apply")
    return out


def select(variations: Sequence[Variation], only: Collection[str] | None) -> list[Variation]:
    """The variations of the kinds in `only` (when None: all but `cpu`, whose emulated runs are
    20-50x slower and are asked for by name); unknown kinds are an error."""
    if only is None:
        return [v for v in variations if variation_kind(v) != "cpu"]
    unknown = sorted(set(only) - set(KINDS))
    if unknown:
        raise ReproError(f"unknown variation kind(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(KINDS)}")
    return [v for v in variations if variation_kind(v) in only]


# -- one run and its comparison with the baseline ------------------------------------------------
@dataclass
class VariationRun:
    """One run under one variation, compared with the baseline quantity by quantity (bitwise:
    `ok` means the same bits). A run that failed has `error` and no rows."""

    variation: Variation
    rows: list[QuantityResult] = field(default_factory=list)
    error: str | None = None
    error_detail: str = ""
    duration_s: float = 0.0
    effective_isa: str | None = None     # from the run's fingerprint

    @property
    def name(self) -> str:
        return self.variation.name

    @property
    def kind(self) -> str:
        return variation_kind(self.variation)

    @property
    def differing(self) -> list[QuantityResult]:
        return [r for r in self.rows if not r.ok]

    @property
    def bitwise(self) -> bool:
        return self.error is None and not self.differing


@dataclass(frozen=True)
class Deviations:
    """Where one quantity of a variation's run differs from the baseline: the elements that
    differ, their absolute error, the baseline's magnitude there, and which of them are
    negligible (|baseline| under NEGLIGIBLE × the quantity's largest: relative error means
    nothing there). `problem` says why no tolerance can cover it (shape, missing, non-finite)."""

    key: TolKey
    abs_err: np.ndarray
    magnitude: np.ndarray
    negligible: np.ndarray
    problem: str = ""


def deviations(key: TolKey, recorded: np.ndarray, current: np.ndarray,
               where: str = "") -> Deviations:
    """The deviations of `current` from `recorded` (the baseline), element by element."""
    empty = np.zeros(0)
    if recorded.shape != current.shape:
        return Deviations(key, empty, empty, empty.astype(bool),
                          f"shape {current.shape} != baseline {recorded.shape}{where}")
    a = np.asarray(recorded).astype(np.complex128 if recorded.dtype.kind == "c" else np.float64)
    b = np.asarray(current).astype(a.dtype)
    with np.errstate(invalid="ignore", over="ignore"):
        same = (np.isnan(a) & np.isnan(b)) | (np.isinf(a) & (a == b))
        err = np.where(same, 0.0, np.abs(b - a)).ravel()
        mag = np.abs(a).ravel()
    if not np.all(np.isfinite(err)):
        return Deviations(key, empty, empty, empty.astype(bool),
                          f"non-finite where the baseline is not (or the reverse){where}")
    finite = mag[np.isfinite(mag)]
    scale = float(finite.max()) if finite.size else 0.0
    neg = (mag < NEGLIGIBLE * scale) | (mag == 0)
    differ = err > 0
    return Deviations(key, err[differ], mag[differ], neg[differ])


def _tolerance_key(kind: QuantityKind, name: str) -> TolKey:
    return ("metrics", name) if kind == "metric" else ("grads",) if kind == "grad" else ("weights",)


def _quantities(result: RunResult, metric_names: Sequence[str]
                ) -> dict[tuple[QuantityKind, str], np.ndarray]:
    """Each compared quantity as one array, grouped as repro.compare groups them (a metric's
    trajectory; a gradient leaf over all kept steps; a final-weight leaf)."""
    out: dict[tuple[QuantityKind, str], np.ndarray] = {}
    for name in metric_names:
        if name in result.metrics:
            out[("metric", name)] = metric_array(result.metrics[name])
    grads: dict[str, list[tuple[int, np.ndarray]]] = {}
    for key, value in result.arrays.items():
        if key.startswith("grads/"):
            _, step, *path = key.split("/", 2)
            grads.setdefault(path[0] if path else "(root)", []).append((int(step), value))
        elif key == "weights" or key.startswith("weights/"):
            out[("weight", key[len("weights/"):] if key != "weights" else "(root)")] = value
    for leaf, steps in grads.items():
        out[("grad", leaf)] = np.concatenate([np.ravel(v) for _, v in sorted(steps, key=lambda s: s[0])])
    return out


def _all_deviations(base: RunResult, run: RunResult, metric_names: Sequence[str],
                    name: str) -> list[Deviations]:
    a, b = _quantities(base, metric_names), _quantities(run, metric_names)
    out = []
    for q in list(a) + [q for q in b if q not in a]:
        key = _tolerance_key(*q)
        if q not in a or q not in b:
            empty = np.zeros(0)
            what = "not in the baseline" if q not in a else "not logged"
            out.append(Deviations(key, empty, empty, empty.astype(bool),
                                  f"{q[0]} {q[1]} {what} under {name}"))
        else:
            out.append(deviations(key, a[q], b[q], f" ({q[0]} {q[1]} under {name})"))
    return out


# -- tolerances from what was observed -----------------------------------------------------------
@dataclass(frozen=True)
class ProposedTolerance:
    """The tolerance one block gets: every observed deviation passes at MARGIN × itself.
    `current` is what the spec applies now on the measured platform."""

    key: TolKey
    rtol: float
    atol: float
    max_abs: float = 0.0        # largest absolute deviation seen
    max_rel: float = 0.0        # largest relative deviation among non-negligible elements
    differing: int = 0          # elements that differed, over every variation
    problem: str = ""           # why no tolerance covers what was seen: not written
    current: Bounds | None = None

    @property
    def label(self) -> str:
        return ".".join(self.key)

    @property
    def at_floor(self) -> bool:
        return self.rtol == FLOOR.rtol and self.atol == FLOOR.atol


def round_up(x: float, digits: int = 2) -> float:
    """`x` rounded up to `digits` significant digits (a proposal never shrinks when written)."""
    if x <= 0:
        return x
    d = Decimal(repr(x))
    quantum = Decimal(1).scaleb(d.adjusted() - digits + 1)
    return float((d / quantum).to_integral_value(ROUND_CEILING) * quantum)


def propose_tolerance(key: TolKey, observed: Sequence[Deviations], floor: Bounds = FLOOR,
                      margin: float = MARGIN) -> ProposedTolerance:
    """The (rtol, atol) for one block from the deviations observed in it.

    atol first: `margin` × the largest deviation of the negligible elements (near zero, only an
    absolute bound makes sense there). Then rtol: the smallest that covers every other element
    at `margin` × its deviation given that atol, i.e. max((margin·|d| - atol) / |baseline|).
    Each is at least the floor and rounded up to two significant digits. Above the floor the
    tolerance is tight: at the element that set it, a deviation twice as large fails."""
    problem = next((o.problem for o in observed if o.problem), "")
    d = np.concatenate([o.abs_err for o in observed]) if observed else np.zeros(0)
    r = np.concatenate([o.magnitude for o in observed]) if observed else np.zeros(0)
    neg = np.concatenate([o.negligible for o in observed]).astype(bool) if observed else \
        np.zeros(0, dtype=bool)
    max_abs = float(d.max()) if d.size else 0.0
    rel = d[~neg] / r[~neg]
    max_rel = float(rel.max()) if rel.size else 0.0
    if problem:
        return ProposedTolerance(key, floor.rtol, floor.atol, max_abs, max_rel, int(d.size),
                                 problem)
    atol = max(floor.atol, margin * float(d[neg].max()) if neg.any() else 0.0)
    need = (margin * d[~neg] - atol) / r[~neg]
    rtol = max(floor.rtol, float(need.max()) if need.size else 0.0)
    return ProposedTolerance(key, round_up(rtol), round_up(atol), max_abs, max_rel, int(d.size))


@dataclass(frozen=True)
class Proposal:
    """The tolerances calibrate proposes, and what they were measured from."""

    tolerances: tuple[ProposedTolerance, ...]
    variations: int          # variation runs they cover (those that finished)
    platform: str            # the record platform key the runs had
    floor: Bounds = FLOOR
    margin: float = MARGIN
    negligible: float = NEGLIGIBLE
    kinds: tuple[str, ...] = TOLERATED    # the variation kinds they absorb


def _resolved(tolerance: ToleranceSpec, key: TolKey, platform_key: str) -> Bounds:
    kind: QuantityKind = "metric" if key[0] == "metrics" else "grad" if key[0] == "grads" else \
        "weight"
    tol = resolve_tolerance(tolerance, kind, key[1] if len(key) > 1 else None, platform_key)
    return Bounds(tol["rtol"], tol["atol"])


# -- writing them into the spec --------------------------------------------------------------------
@dataclass(frozen=True)
class Written:
    """What `--write` changed: per block, the tolerance that applied before and after."""

    path: Path
    changes: tuple[tuple[str, Bounds, Bounds], ...]
    warnings: tuple[str, ...] = ()


def check_writable(spec: Spec) -> None:
    """SpecError when tolerances cannot be written into this spec (checked before any run)."""
    if spec.path is None:
        raise SpecError("--write needs a spec file; this spec was not loaded from one")
    if spec.tolerance.mode == "exact":
        raise SpecError("tolerance.mode is exact: every comparison is bitwise and tolerances "
                        "never apply, so there is nothing to write. Set mode to auto (bitwise on "
                        "an identical environment, else within tolerance) or close, or run "
                        "calibrate without --write", file=str(spec.path), key_path="tolerance.mode")


def _without_tolerance(spec: Spec) -> dict[str, object]:
    return {k: v for k, v in spec.canonical.items() if k != "tolerance"}


def write_tolerances(spec_path: str | Path, proposal: Proposal, when: _dt.date,
                     host_summary: str) -> Written:
    """Set the spec's tolerance blocks to the proposal, in place: comments, key order and other
    keys stay byte for byte, missing blocks are inserted, and a comment above `tolerance:` says
    they were calibrated, when and where. The edited text is validated before it is written
    (atomically); a failed edit leaves the file as it was."""
    path = Path(spec_path)
    spec = load_spec(path)
    check_writable(spec)
    text = path.read_text(encoding="utf-8")
    blocks = [t for t in proposal.tolerances if not t.problem]
    if not blocks:
        raise ReproError("nothing to write: no variation finished with a quantity a tolerance "
                         "could cover")
    for t in blocks:
        text = set_value(text, ("tolerance",) + t.key, {"rtol": t.rtol, "atol": t.atol}, str(path))
    comment = (f"{STAMP} {when.isoformat()} on {host_summary}, {proposal.variations} "
               f"variations: largest deviation × {proposal.margin:g}, floor rtol {proposal.floor.rtol:g} "
               f"atol {proposal.floor.atol:g}")
    try:
        text = _stamp(text, comment, str(path))
        data, lines = load_with_lines(text, str(path))
        edited = parse_spec(data, file=str(path), lines=lines, default_name=spec.name)
    except SpecError as exc:
        raise SpecError(f"writing tolerances produced an invalid spec (a bug in repro; the file "
                        f"is unchanged): {exc.reason}", file=str(path), line=exc.line) from None
    if _without_tolerance(edited) != _without_tolerance(spec):
        raise SpecError("writing tolerances changed more than the tolerance block (a bug in "
                        "repro; the file is unchanged)", file=str(path))
    before, after = spec.tolerance, edited.tolerance
    changes, warnings = [], []
    for t in blocks:
        old = _resolved(before, t.key, proposal.platform)
        new = _resolved(after, t.key, proposal.platform)
        changes.append((t.label, old, new))
        if new != Bounds(t.rtol, t.atol):
            warnings.append(f"tolerance.platforms.{proposal.platform} overrides the calibrated "
                            f"{t.label} on {proposal.platform} (rtol {new.rtol:g}, atol "
                            f"{new.atol:g} apply); remove its keys there to use the calibration")
    atomic_write_text(path, text)
    return Written(path, tuple(changes), tuple(warnings))


def _stamp(text: str, comment: str, file: str) -> str:
    """`comment` on its own line above the top-level `tolerance:` key, replacing an earlier
    calibrate comment there."""
    _, lines = load_with_lines(text, file)
    line = lines.get(("tolerance",))
    if line is None:
        raise SpecError("no tolerance block after writing it", file=file)
    rows = text.splitlines(keepends=True)
    indent = rows[line - 1][: len(rows[line - 1]) - len(rows[line - 1].lstrip())]
    if line >= 2 and rows[line - 2].lstrip().startswith(STAMP):
        rows[line - 2] = f"{indent}{comment}\n"
    else:
        rows.insert(line - 1, f"{indent}{comment}\n")
    return "".join(rows)


# -- the whole calibration ------------------------------------------------------------------------
@dataclass
class Calibration:
    """A spec's variation matrix: the baseline, each variation's comparison with it, the
    tolerances they imply, and what --write did (or why it did not)."""

    spec: str
    spec_path: str
    host: Host
    platform: str
    jobs: int
    mode: str                          # the spec's tolerance.mode
    baseline: VariationRun
    runs: list[VariationRun]
    proposal: Proposal
    unavailable: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    written: Written | None = None
    write_error: str | None = None     # --write was asked for and refused or failed
    duration_s: float = 0.0

    @property
    def quantities(self) -> int:
        return max((len(r.rows) for r in self.runs), default=0)

    @property
    def breaking(self) -> list[VariationRun]:
        """Variations that finished and changed at least one bit."""
        return [r for r in self.runs if r.error is None and r.differing]

    @property
    def failed(self) -> list[VariationRun]:
        return [r for r in self.runs if r.error is not None]

    @property
    def exit_code(self) -> int:
        return 2 if self.write_error else 0


@dataclass
class _Outcome:
    run: VariationRun
    result: RunResult | None = None
    deviations: list[Deviations] = field(default_factory=list)


def _execute(prep: pipeline.Prepared, options: pipeline.Options, variation: Variation,
             slot: int, baseline: RunResult | None) -> _Outcome:
    """One run under `variation`; compared with `baseline` when given. Errors are kept."""
    t0 = time.perf_counter()
    run = VariationRun(variation)
    try:
        result = pipeline.execute(prep, dataclasses.replace(options, variation=variation,
                                                            cpu_slot=slot)).result
    except ReproError as exc:
        run.error, run.error_detail = str(exc), getattr(exc, "detail", "")
        run.duration_s = time.perf_counter() - t0
        return _Outcome(run)
    except Exception as exc:  # a bug in repro: reported for this variation, not a lost matrix
        import traceback
        run.error = f"internal error in repro (a bug: please report it): {type(exc).__name__}: {exc}"
        run.error_detail = traceback.format_exc()
        run.duration_s = time.perf_counter() - t0
        return _Outcome(run)
    run.effective_isa = result.fingerprint.get("effective_isa")
    if baseline is None:  # the baseline's arrays are kept for the comparisons
        run.duration_s = time.perf_counter() - t0
        return _Outcome(run, result)
    # a variation keeps only its rows and the elements that differ, not its arrays
    names = prep.spec.record.metrics
    run.rows = compare_runs(baseline, result, prep.spec).rows
    metric_names = names if names is not None else sorted(set(baseline.metrics) |
                                                          set(result.metrics))
    found = _all_deviations(baseline, result, metric_names, variation.name)
    run.duration_s = time.perf_counter() - t0
    return _Outcome(run, deviations=found)


OnDone = Callable[[VariationRun, int, int], None]


def calibrate(spec_ref: pipeline.SpecRef, options: pipeline.Options | None = None, *,
              jobs: int | None = None, only: Collection[str] | None = None,
              write: bool = False, host: Host | None = None, on_done: OnDone | None = None,
              today: _dt.date | None = None, progress: Progress | None = None) -> Calibration:
    """Run the spec as pinned and under each variation this host can do (`only`: those kinds,
    of KINDS), compare each with the baseline, propose tolerances from the TOLERATED kinds and,
    with `write`, set them in the spec. `jobs` runs at a time (default: cores // environment.cpus); `on_done(run,
    finished, total)` as each run ends; `progress` sees every run queued, started and finished
    (the result: its VariationRun). Raises ReproError for a bad spec, a broken pin or a
    failed baseline (RunError, with the run's detail); a failed variation is reported in the
    result. KeyboardInterrupt kills every run."""
    t0 = time.perf_counter()
    # the baseline always fills the compile cache: compile-cache=warm loads from it
    options = dataclasses.replace(options or pipeline.Options(), compile_cache=True, echo=False,
                                  variation=BASELINE)
    spec = pipeline.as_spec(spec_ref)
    if write:
        check_writable(spec)
    host = host or Host.here()
    planned = select(variations_for(spec, host), only)
    prep = pipeline.prepare(spec, options)
    slots = jobs or max(1, host.cores // spec.environment.cpus)
    total = len(planned) + 1
    finished = 0
    # core-count variations run alone, after the others: each gets the cores it asks for
    together = [v for v in planned if v.cpus is None]
    alone = [v for v in planned if v.cpus is not None]
    first_job = progress.add([v.name for v in [BASELINE, *together, *alone]]) if progress else 0

    def tracked(offset: int) -> tuple[Callable[[int, _Outcome], None],
                                      Callable[[int], None] | None]:
        """The executor callbacks of one batch whose first run is job `offset` of `progress`."""
        def done(index: int, outcome: _Outcome) -> None:
            nonlocal finished
            finished += 1
            if on_done:
                on_done(outcome.run, finished, total)
            if progress:
                progress.done(first_job + offset + index, outcome.run)
        start = (lambda index: progress.start(first_job + offset + index)) if progress else None
        return done, start

    first = LocalExecutor(1).map(lambda v, slot: _execute(prep, options, v, slot, None),
                                 [BASELINE], *tracked(0))
    if not first.complete:
        raise KeyboardInterrupt
    base = first.results[0]
    if base.result is None:
        raise RunError(f"the baseline run (the spec as pinned, no variation) failed, so there is "
                       f"nothing to compare with: {base.run.error}", detail=base.run.error_detail)
    check_recordable(spec, base.result)
    baseline = base.result

    outcomes: dict[str, _Outcome] = {}
    for executor, batch_items, offset in ((LocalExecutor(slots), together, 1),
                                          (LocalExecutor(1), alone, 1 + len(together))):
        batch = executor.map(lambda v, slot: _execute(prep, options, v, slot, baseline),
                             batch_items, *tracked(offset))
        outcomes.update({batch_items[i].name: o for i, o in batch.results.items()})
        if not batch.complete:
            raise KeyboardInterrupt
    runs = [outcomes[v.name].run for v in planned]
    tolerated = [v for v in planned if variation_kind(v) in TOLERATED]
    observed = [d for v in tolerated for d in outcomes[v.name].deviations]
    order = {"metrics": 0, "grads": 1, "weights": 2}
    keys = sorted(dict.fromkeys(d.key for d in observed), key=lambda k: order[k[0]])  # stable
    tolerance = spec.tolerance
    proposed = tuple(dataclasses.replace(
        propose_tolerance(k, [d for d in observed if d.key == k]),
        current=_resolved(tolerance, k, baseline.platform_key)) for k in keys)
    cal = Calibration(
        spec=spec.name or "spec", spec_path=str(spec.path or ""), host=host,
        platform=baseline.platform_key, jobs=slots, mode=spec.tolerance.mode,
        baseline=base.run, runs=runs,
        proposal=Proposal(proposed, sum(outcomes[v.name].run.error is None for v in tolerated),
                          baseline.platform_key),
        unavailable=unavailable(spec, host) + (
            ["cpu: emulated CPUs (qemu-user) are not run unless asked: --variations cpu"]
            if only is None and _cpu_variations(spec, host)[0] else []))
    cal.notes = _notes(cal)
    if write:
        _write(cal, spec, today or _dt.datetime.now(_dt.UTC).date())
    cal.duration_s = time.perf_counter() - t0
    return cal


def _notes(cal: Calibration) -> list[str]:
    notes = []
    warm = next((r for r in cal.runs if r.name == "compile-cache=warm"), None)
    if warm is not None and warm.error is None and warm.differing:
        notes.append("compile-cache=warm differs from the baseline although only the cache's "
                     "state changed: the training itself may not be deterministic (`repro "
                     "record` checks: its runs must agree)")
    named = {"hash-seed": "the training depends on PYTHONHASHSEED (hash() of a str or bytes, "
                          "set iteration order); repro runs always use 0, other runners do not",
             "listing": "the training depends on the order directory listings come back in, "
                        "which differs between filesystems: sort what it lists",
             "gpu-ops": "XLA's non-deterministic GPU ops (atomic reductions, scatter) change "
                        "this training's bits; repro runs always set "
                        "--xla_gpu_deterministic_ops=true, runs outside repro must too"}
    for kind, why in named.items():
        broken = [r.name for r in cal.breaking if r.kind == kind]
        if broken:
            fix = "keep the flag" if kind == "gpu-ops" else "fix the code"
            notes.append(f"{', '.join(broken)}: {why}. Not absorbed into the tolerances: {fix}")
    ops = [r for r in cal.runs if r.kind == "gpu-ops" and r.bitwise]
    if ops:
        notes.append(f"{ops[0].name} changed no bit: this training's ops are deterministic on "
                     "this GPU even without --xla_gpu_deterministic_ops")
    if any(r.kind in TOLERATED for r in cal.failed):
        notes.append(f"{len(cal.failed)} variation(s) failed; the proposed tolerances cover the "
                     f"{cal.proposal.variations} of kinds {', '.join(TOLERATED)} that finished")
    if cal.mode == "exact":
        notes.append("tolerance.mode is exact: these tolerances would never apply")
    return notes


def _write(cal: Calibration, spec: Spec, today: _dt.date) -> None:
    assert spec.path is not None  # check_writable
    try:
        now = load_spec(spec.path)
        if _without_tolerance(now) != _without_tolerance(spec):
            raise SpecError("the spec changed while calibrate ran (beyond its tolerance block); "
                            "these measurements are of the old one: run calibrate again",
                            file=str(spec.path))
        cal.written = write_tolerances(spec.path, cal.proposal, today, cal.host.summary())
    except ReproError as exc:
        cal.write_error = f"tolerances not written: {exc}"
