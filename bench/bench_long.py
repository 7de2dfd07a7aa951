"""Long runs (docs/segments.md): the cost of a verdict on the long reference workload
(specs/tiny-lm.yaml: a transformer LM, 3000 steps, checkpoints every 750), measured side by side.

Arms, each run `-n` times in an order that rotates per repetition (machine noise hits all alike):
  full      a full verify, run to the end (`--no-fail-fast`)
  all-j2    `--segments all -j 2` (four segments, two at a time on two cores)
  sample1   `--segments sample:1:<i>` (one segment; the seed varies per repetition)
  failfast  a commit that changes the weights from step 300 (10 % of the run) on: a default
            verify (fail-fast) of it — the time to verdict for a divergence at 10 %
and, from the full verifies, the time the run spent keeping its states (`checkpoint_s`, which
includes waiting for the step that produced the state: an upper bound) over its training time;
from the passing segments (fail-fast on), the time its checks took (`failfast_s`) over it.

Works on a temporary clone of this repository (the record is the committed one); prints the
medians, the ratios against `full`, and the issue's bars:
  all-j2 / full <= 0.55;  sample1 <= full / 4 + fixed overhead;  failfast / full <= 0.15;
  checkpoint_s / train_s <= 0.05;  failfast_s / train_s <= 0.02.

    python bench/bench_long.py [-n 3]
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from repro import pipeline  # noqa: E402
from repro.commands.check import check  # noqa: E402
from repro.verdict import Verdict  # noqa: E402

SPEC = "specs/tiny-lm.yaml"
STEP = "        params, opt_state, loss, grads = update(params, opt_state, xb, yb)\n"
CHANGED = STEP + ("        if step >= 300:   # the bench's divergence at 10 % of the run\n"
                  "            params = jax.tree_util.tree_map(lambda p: p * (1 + 1e-4), params)\n")


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, text=True, capture_output=True).stdout


def clone(to: Path) -> Path:
    git(ROOT.parent, "clone", "-q", str(ROOT), str(to))
    for name in ("user.email", "user.name"):
        git(to, "config", name, "bench@repro")
    return to


def verdict(root: Path, expect: str, **options: object) -> Verdict:
    base = pipeline.Options(echo=False)
    v = check(root / SPEC, dataclasses.replace(base, **options))  # type: ignore[arg-type]
    if str(v.status) != expect:
        sys.exit(f"{root}: {options}: {v.status}, expected {expect}: {v.error or v.mode_reason}")
    return v


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-long-"))
    try:
        clean = clone(tmp / "clean")
        bad = clone(tmp / "bad")
        lm = bad / "zoo" / "lm.py"
        text = lm.read_text()
        assert STEP in text, "zoo/lm.py changed: update the bench's divergence"
        lm.write_text(text.replace(STEP, CHANGED))
        git(bad, "commit", "-qam", "bench: weights scaled from step 300")
        subprocess.run([sys.executable, "-m", "repro.cli", "pin", SPEC], cwd=bad, check=True,
                       capture_output=True)
        git(bad, "commit", "-qam", "pin")
        arms = {
            "full": lambda i: verdict(clean, "pass", fail_fast=False),
            "all-j2": lambda i: verdict(clean, "pass", segments="all", jobs=2, fail_fast=True),
            "sample1": lambda i: verdict(clean, "pass", segments=f"sample:1:{i}", fail_fast=True),
            "failfast": lambda i: verdict(bad, "fail", fail_fast=True),
        }
        times: dict[str, list[float]] = {k: [] for k in arms}
        ck: list[float] = []
        ff: list[float] = []
        names = list(arms)
        for i in range(args.n):
            for name in names[i % len(names):] + names[:i % len(names)]:
                t = time.perf_counter()
                v = arms[name](i)
                times[name].append(time.perf_counter() - t)
                if name == "full":
                    ck.append(v.timings.get("checkpoint_s", 0.0) / v.timings["train_s"])
                if name == "sample1":   # a passing run with fail-fast on: its checks' own time
                    ff.append(v.timings.get("failfast_s", 0.0) / v.timings["train_s"])
                print(f"  {name:<9} {times[name][-1]:7.1f} s  {v.status}"
                      + (f"  ({v.segments.text()})" if v.segments else ""), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\nmedians of {args.n} (s): " + ", ".join(f"{k} {v:.1f}" for k, v in med.items()))
    print(f"all-j2 / full   = {med['all-j2'] / med['full']:.3f}   (bar 0.55)")
    print(f"sample1 / full  = {med['sample1'] / med['full']:.3f}   (1/4 = 0.25, plus the fixed "
          f"overhead: sample1 - full/4 = {med['sample1'] - med['full'] / 4:.1f} s)")
    print(f"failfast / full = {med['failfast'] / med['full']:.3f}   (bar 0.15)")
    print(f"checkpoint_s / train_s = {statistics.median(ck):.4f} (median; bar 0.05)")
    print(f"failfast_s / train_s = {statistics.median(ff):.5f} (a passing segment, fail-fast on; "
          "bar 0.02)")
    print(f"machine: {os.cpu_count()} cores; raw: {times}")


if __name__ == "__main__":
    main()
