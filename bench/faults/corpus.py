"""The fault corpus (issue 9 part 5): small real faults and clean reruns on a user's workload.

The workload is `workload/` beside this file: a project as a user would write it (the `wdbc`
package, `specs/cancer-mlp.yaml`, the data in `data/wdbc/`, `make_data.py`), not one of repro's
own zoo models. `build_project` copies it into a fresh git repository, commits it and pins the
spec with `repro pin`; `record` records it with `repro record` and commits the record. Each
fault is then made as a user would make it (edit a file, commit, `repro pin`, commit) and
verified through the library (`repro.pipeline.verify`); `restore` puts the clean commit back
before the next one. A clean rerun verifies the untouched project under one
`repro.variation.Variation` (another ISA ceiling, core count, no compile cache, PYTHONHASHSEED,
reversed directory listings).

A fault is *caught with the right cause* when the verdict fails and the first entry of
`verdict.changes` that may change the numbers names the pin the fault moved (`code.commit`,
`data.wdbc.sha256`, `config.lr`). A clean rerun that does not pass is a false alarm.

Used by `bench/bench_faults.py` (the whole corpus, both tolerance arms) and
`tests/test_fault_corpus.py` (two faults and one clean rerun); both load this file by path.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

WORKLOAD = Path(__file__).resolve().parent / "workload"
SPEC = "specs/cancer-mlp.yaml"
TRAIN = "wdbc/train.py"
SHARD = "data/wdbc/train-1.csv"
GIT_ENV = {"GIT_AUTHOR_NAME": "fault corpus", "GIT_AUTHOR_EMAIL": "faults@example.com",
           "GIT_COMMITTER_NAME": "fault corpus", "GIT_COMMITTER_EMAIL": "faults@example.com"}


class Project:
    """The workload in a real git repository (a temp dir)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.spec = self.root / SPEC
        self.clean: str = ""   # the commit every fault starts from

    def git(self, *args: str) -> str:
        return subprocess.run(["git", *args], cwd=self.root, env={**os.environ, **GIT_ENV},
                              check=True, text=True, capture_output=True).stdout.strip()

    def commit(self, message: str) -> str:
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)
        return self.git("rev-parse", "HEAD")

    def repro(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """The `repro` command line, for real, in a subprocess (os.environ: PYTHONPATH and
        REPRO_CACHE_DIR carry over)."""
        proc = subprocess.run([sys.executable, "-m", "repro.cli", *args], cwd=self.root,
                              text=True, capture_output=True, env=os.environ.copy())
        if check and proc.returncode != 0:
            raise RuntimeError(f"repro {' '.join(args)} exited {proc.returncode}:\n"
                               f"{proc.stdout}{proc.stderr}")
        return proc

    def pin_and_commit(self, message: str) -> str:
        """Commit the change, `repro pin` the spec to it, commit the spec."""
        self.commit(message)
        self.repro("pin", SPEC)
        return self.commit(f"pin: {message}")

    def replace(self, rel: str, old: str, new: str) -> None:
        path = self.root / rel
        text = path.read_text()
        if text.count(old) != 1:
            raise AssertionError(f"{old!r} occurs {text.count(old)} times in {rel}")
        path.write_text(text.replace(old, new))

    def restore(self) -> None:
        """Back to the clean, recorded commit (code, data, spec and record)."""
        self.git("reset", "-q", "--hard", self.clean)
        self.git("clean", "-q", "-fdx")


def build_project(root: Path) -> Project:
    """Copy the workload into `root`, git init, commit, `repro pin`, commit (not recorded)."""
    root = Path(root)
    shutil.copytree(WORKLOAD, root, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    p = Project(root)
    p.git("init", "-q", "-b", "main")
    p.pin_and_commit("wdbc: a tumour classifier and its data")
    return p


def record(p: Project, runs: int | None = None) -> str:
    """`repro record` the spec (its default runs, or `runs`), commit the record: the clean state."""
    p.repro("record", "--no-stream", *(["--runs", str(runs)] if runs else []), SPEC)
    p.clean = p.commit("record cancer-mlp")
    return p.clean


# -- the faults ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Fault:
    name: str
    what: str                       # what the user changed
    cause: str                      # the key the verdict must name first
    make: Callable[[Project], None]


def _lr(p: Project) -> None:
    import yaml

    lr = yaml.safe_load(p.spec.read_text())["config"]["lr"]
    p.replace(SPEC, f"lr: {lr}\n", f"lr: {lr * (1 + 1e-3)!r}\n")
    p.commit("lr x (1 + 1e-3)")


def _swap_rows(p: Project, a: int = 10, b: int = 90) -> None:
    path = p.root / SHARD
    lines = path.read_text().split("\n")           # lines[0] is the header
    assert lines[a] != lines[b] and lines[a] and lines[b]
    lines[a], lines[b] = lines[b], lines[a]
    path.write_text("\n".join(lines))
    p.pin_and_commit(f"swap rows {a} and {b} of {SHARD}")


def _code(message: str, old: str, new: str) -> Callable[[Project], None]:
    def make(p: Project) -> None:
        p.replace(TRAIN, old, new)
        p.pin_and_commit(message)
    return make


FAULTS: list[Fault] = [
    Fault("lr", "config.lr x (1 + 1e-3) in the spec", "config.lr", _lr),
    Fault("swapped-row", f"rows 10 and 90 of {SHARD} exchanged", "data.wdbc.sha256", _swap_rows),
    Fault("key-name", 'the hidden layer\'s key folded in from "hidden_0", not "hidden"',
          "code.commit", _code("rename the hidden layer's key", 'layer_key(root, "hidden")',
                               'layer_key(root, "hidden_0")')),
    Fault("prng-impl", "jax_default_prng_impl switched to rbg in train()", "code.commit",
          _code("PRNG: rbg", "    cfg = ctx.config\n",
                '    jax.config.update("jax_default_prng_impl", "rbg")\n    cfg = ctx.config\n')),
    Fault("reduction", "the batch mean of the per-example losses as two partial sums",
          "code.commit",
          _code("loss as two partial sums", "    data = jnp.mean(per_example)\n",
                "    half = per_example.shape[0] // 2\n"
                "    data = (jnp.sum(per_example[:half]) + jnp.sum(per_example[half:])) / "
                "per_example.shape[0]\n")),
    Fault("flipped-bit", "lowest mantissa bit of initial hidden.w[0, 0] flipped", "code.commit",
          _code("one initial weight one bit off",
                "    w_out = jax.random.normal(",
                "    bits = jax.lax.bitcast_convert_type(w_hidden[0, 0], jnp.uint32) ^ jnp.uint32(1)\n"
                "    w_hidden = w_hidden.at[0, 0].set(jax.lax.bitcast_convert_type(bits, jnp.float32))\n"
                "    w_out = jax.random.normal(")),
]


def fault(name: str) -> Fault:
    return next(f for f in FAULTS if f.name == name)


# -- clean reruns ----------------------------------------------------------------------------------
def variations() -> list[Any]:
    """Ten ways to rerun the clean project without moving a pin: each of calibrate's kinds of
    variation alone, and combinations of them (not the same as any single one)."""
    from repro.variation import Variation

    return [
        Variation("isa-AVX", isa="AVX"),
        Variation("isa-SSE4_2", isa="SSE4_2"),
        Variation("cpus-2", cpus=2),
        Variation("no-compile-cache", compile_cache=False),
        Variation("hash-seed-1", hash_seed="1"),
        Variation("hash-seed-4242", hash_seed="4242"),
        Variation("listing-reversed", listing_order="reversed"),
        Variation("AVX+cpus-2+hash-seed-7", isa="AVX", cpus=2, hash_seed="7"),
        Variation("SSE4_2+no-cache+reversed", isa="SSE4_2", compile_cache=False,
                  listing_order="reversed"),
        Variation("cpus-2+no-cache+reversed+hash-seed-99", cpus=2, compile_cache=False,
                  listing_order="reversed", hash_seed="99"),
    ]


# -- outcomes --------------------------------------------------------------------------------------
@dataclass
class Outcome:
    """One verify: what was done, what the verdict said."""

    name: str
    what: str
    expected_cause: str | None      # None: a clean rerun (it should pass)
    status: str = ""
    comparison: str = ""            # bitwise | tolerance
    mode_reason: str = ""
    cause: str | None = None        # first change that may move the numbers
    numeric_keys: list[str] = field(default_factory=list)   # every such change, in order
    changes: list[str] = field(default_factory=list)        # every change, as the verdict says it
    first_quantity: str | None = None
    first_step: int | None = None
    max_rel: float = 0.0
    max_abs: float = 0.0
    failed_quantities: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)   # each failing quantity's numbers
    max_rel_by_kind: dict[str, float] = field(default_factory=dict)  # metric/grad/weight
    error: str = ""
    seconds: float = 0.0

    @property
    def caught(self) -> bool:
        return self.status == "fail"

    @property
    def right_cause(self) -> bool:
        return self.caught and self.cause == self.expected_cause

    @property
    def false_alarm(self) -> bool:
        return self.expected_cause is None and self.status != "pass"

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(caught=self.caught, right_cause=self.right_cause, false_alarm=self.false_alarm)
        return out


def outcome(name: str, what: str, expected: str | None, verdict: Any, seconds: float) -> Outcome:
    o = Outcome(name, what, expected, status=str(verdict.status), seconds=seconds,
                error=verdict.error)
    o.comparison = "" if verdict.bitwise is None else ("bitwise" if verdict.bitwise else "tolerance")
    o.mode_reason = verdict.mode_reason
    numeric = [c for c in verdict.changes if c.numeric]
    o.cause = numeric[0].key if numeric else None
    o.numeric_keys = [c.key for c in numeric]
    o.changes = [c.text() + ("" if c.numeric else " (informational)") for c in verdict.changes]
    first = verdict.first_divergence
    if first is not None:
        o.first_quantity, o.first_step = first.label, first.first_step
    o.failed_quantities = len(verdict.failures)
    o.failed = [{"quantity": r.label, "first_step": r.first_step, "max_rel": r.max_rel,
                 "max_abs": r.max_abs, "out": f"{r.n_out}/{r.n_total}", "tolerance": r.tolerance_text,
                 "note": r.note} for r in verdict.failures]
    for r in verdict.rows:
        o.max_rel_by_kind[r.kind] = max(o.max_rel_by_kind.get(r.kind, 0.0), r.max_rel)
    if verdict.rows:
        o.max_rel = max(r.max_rel for r in verdict.rows)
        o.max_abs = max(r.max_abs for r in verdict.rows)
    return o


def verify(p: Project, variation: Any = None) -> Any:
    from repro.pipeline import Options, verify
    from repro.variation import BASELINE

    return verify(p.spec, Options(variation=variation or BASELINE))


def run_fault(p: Project, f: Fault, variation: Any = None) -> Outcome:
    """Make the fault, verify (under `variation`: the environment moves too), restore the
    clean state."""
    try:
        f.make(p)
        t0 = time.perf_counter()
        v = verify(p, variation)
        return outcome(f.name, f.what, f.cause, v, time.perf_counter() - t0)
    finally:
        p.restore()


def clean_rerun(p: Project, variation: Any) -> Outcome:
    t0 = time.perf_counter()
    v = verify(p, variation)
    return outcome(variation.name, _describe(variation), None, v, time.perf_counter() - t0)


def _describe(v: Any) -> str:
    parts = []
    if v.isa is not None:
        parts.append(f"isa {v.isa}")
    if v.cpus is not None:
        parts.append(f"cpus {v.cpus}")
    if v.compile_cache is False:
        parts.append("compile cache off")
    if v.hash_seed != "0":
        parts.append(f"PYTHONHASHSEED={v.hash_seed}")
    if v.listing_order != "native":
        parts.append(f"listings {v.listing_order}")
    return ", ".join(parts) or "as recorded"
