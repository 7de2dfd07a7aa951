"""`repro verify specs/digits-mlp.yaml` with this checkout against another checkout of repro
(say the commit before a refactor), interleaved so machine noise hits both alike.

    git worktree add /tmp/repro-old <commit>
    python bench/bench_versions.py /tmp/repro-old [-n 7]
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


def timed(tree: Path, extra: list[str]) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    env["PYTHONPATH"] = str(tree)   # that checkout's `repro`, whatever is installed
    cmd = [sys.executable, "-m", "repro.cli", "verify", "--no-stream", *extra,
           "specs/digits-mlp.yaml"]
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(f"{tree}: {' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("other", type=Path, help="another checkout of repro")
    ap.add_argument("-n", type=int, default=7)
    args = ap.parse_args()
    for extra, label in (([], "default (warm compile cache)"), (["--no-compile-cache"], "cold")):
        timed(ROOT, extra), timed(args.other, extra)  # warm the caches of both
        new, old = [], []
        for _ in range(args.n):
            new.append(timed(ROOT, extra))
            old.append(timed(args.other, extra))
        mn, mo = statistics.median(new), statistics.median(old)
        print(f"{label:30s} this checkout {mn:.2f} s, {args.other}: {mo:.2f} s, "
              f"ratio {mn / mo:.3f}")


if __name__ == "__main__":
    main()
