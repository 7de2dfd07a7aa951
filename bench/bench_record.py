"""`repro record specs/digits-mlp.yaml` with its default two runs (the noise floor) against one
run, alternated. The issue's bar: two runs <= 2.05x one run (the second reuses the caches).

    python bench/bench_record.py [-n 5]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_verify  # noqa: E402  (the same timing helper)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=5)
    args = ap.parse_args()
    records = tempfile.mkdtemp(prefix="repro-bench-records-")
    base = [sys.executable, "-m", "repro.cli", "record", "--no-stream", "--records", records]
    one_cmd = [*base, "--runs", "1", "specs/digits-mlp.yaml"]
    two_cmd = [*base, "specs/digits-mlp.yaml"]
    bench_verify.timed(two_cmd), bench_verify.timed(one_cmd)   # warm every cache
    one, two = [], []
    for _ in range(args.n):
        one.append(bench_verify.timed(one_cmd))
        two.append(bench_verify.timed(two_cmd))
    m1, m2 = statistics.median(one), statistics.median(two)
    print(f"record, 1 run : median {m1:.2f} s  {[f'{t:.2f}' for t in one]}")
    print(f"record, 2 runs: median {m2:.2f} s  {[f'{t:.2f}' for t in two]}")
    print(f"ratio 2 runs / 1 run: {m2 / m1:.3f}  (bar: <= 2.05)")


if __name__ == "__main__":
    main()
