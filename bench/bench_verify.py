"""`repro verify specs/digits-mlp.yaml` against the same training as a bare script.

Runs both alternately (so machine noise hits both alike), N times each, and prints the medians
and their ratio. The issue's bar: ratio <= 1.15.

    python bench/bench_verify.py [-n 5]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(cmd: list[str]) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    env["JAX_PLATFORMS"] = "cpu"
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=5)
    args = ap.parse_args()
    verify = [sys.executable, "-m", "repro.cli", "verify", "--no-stream", "specs/digits-mlp.yaml"]
    bare = [sys.executable, "bench/bare_mlp.py"]
    timed(verify), timed(bare)  # warm the export and hash caches and the page cache
    t_verify, t_bare = [], []
    for _ in range(args.n):
        t_verify.append(timed(verify))
        t_bare.append(timed(bare))
    mv, mb = statistics.median(t_verify), statistics.median(t_bare)
    print(f"repro verify digits-mlp: median {mv:.2f} s  {['%.2f' % t for t in t_verify]}")
    print(f"bare script            : median {mb:.2f} s  {['%.2f' % t for t in t_bare]}")
    print(f"ratio verify/bare      : {mv / mb:.3f}  (bar: <= 1.15)")


if __name__ == "__main__":
    main()
