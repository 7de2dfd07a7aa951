"""Fail-fast: time to verdict for a run that diverges at 10% of its steps, fail-fast vs a full
run, and a passing verify with fail-fast on vs off (docs/failfast.md).

Builds the tests' tiny project (tests/conftest.py) in a temp dir with `--steps` steps (default
20000, ~1 ms each), records it, and adds a commit that raises the lr by 1% from step steps/10 on.
Runs each pair alternately (machine noise hits both alike), N times, and prints the medians side
by side and their ratios. The issue's bars: diverging, fail-fast / full <= 0.15; passing, on / off
<= 1.02.

    python bench/bench_failfast.py [-n 5] [--steps 20000]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from conftest import Project, build_project  # noqa: E402

UPDATE = "params = jax.tree_util.tree_map(lambda a, b: a - lr * b, params, g)"


def timed(p: Project, *args: str, rc: int) -> float:
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "repro.cli", *args], cwd=p.root, text=True,
                          capture_output=True, env=os.environ.copy())
    elapsed = time.perf_counter() - t
    if proc.returncode != rc:
        sys.exit(f"repro {' '.join(args)}: exit {proc.returncode}, expected {rc}:\n{proc.stdout}\n{proc.stderr}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20000)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-failfast-"))
    os.environ.setdefault("REPRO_CACHE_DIR", str(tmp / "cache"))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    try:
        clean = build_project(tmp / "clean")
        clean.edit_spec("steps: 12", f"steps: {args.steps}")
        clean.edit_spec("grads: {every: 4}", f"grads: {{every: {max(1, args.steps // 20)}}}")
        clean.commit("long run")
        timed(clean, "record", "--runs", "1", "specs/tiny.yaml", rc=0)
        clean.commit("record")
        bad = Project(tmp / "bad")
        shutil.copytree(clean.root, bad.root)
        train = bad.root / "tinyproj" / "train.py"
        at = args.steps // 10
        train.write_text(train.read_text().replace(
            UPDATE, UPDATE.replace("lr * b", f"lr * (1 + 1e-2 * (step >= {at})) * b")))
        bad.commit("lr up from 10%")
        timed(bad, "pin", "specs/tiny.yaml", rc=0)
        bad.commit("pin")
        verify = ("verify", "--no-stream", "specs/tiny.yaml")
        timed(clean, *verify, rc=0), timed(bad, *verify, rc=1)   # warm caches
        fast, full, on, off = [], [], [], []
        for i in range(args.n):   # each pair alternates which goes first (no order bias)
            for which in ((0, 1) if i % 2 == 0 else (1, 0)):
                if which == 0:
                    fast.append(timed(bad, *verify, rc=1))
                    on.append(timed(clean, *verify, rc=0))
                else:
                    full.append(timed(bad, *verify, "--no-fail-fast", rc=1))
                    off.append(timed(clean, *verify, "--no-fail-fast", rc=0))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    m = {k: statistics.median(v) for k, v in dict(fast=fast, full=full, on=on, off=off).items()}
    show = lambda ts: " ".join(f"{t:.2f}" for t in ts)
    print(f"{args.steps} steps, divergence at step {at} (10%), median of {args.n}")
    print(f"diverging verify, fail-fast     : median {m['fast']:.2f} s  [{show(fast)}]")
    print(f"diverging verify, --no-fail-fast: median {m['full']:.2f} s  [{show(full)}]")
    print(f"passing verify, fail-fast on    : median {m['on']:.2f} s  [{show(on)}]")
    print(f"passing verify, fail-fast off   : median {m['off']:.2f} s  [{show(off)}]")
    print(f"ratio diverging fail-fast / full: {m['fast'] / m['full']:.3f}  (bar: <= 0.15)")
    print(f"ratio passing on / off          : {m['on'] / m['off']:.3f}  (bar: <= 1.02)")


if __name__ == "__main__":
    main()
