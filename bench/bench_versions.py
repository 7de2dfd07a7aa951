"""`repro verify specs/digits-mlp.yaml` with this checkout against another checkout of repro
(say the commit before a refactor), interleaved so machine noise hits both alike.

    git worktree add /tmp/repro-old <commit>
    python bench/bench_versions.py /tmp/repro-old [-n 7]
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_verify  # noqa: E402  (the same timing helper)

ROOT = Path(__file__).resolve().parents[1]


def timed(tree: Path, extra: list[str]) -> float:
    """One verify with the checkout at `tree` (its `repro` first on PYTHONPATH, run there)."""
    cmd = [sys.executable, "-m", "repro.cli", "verify", "--no-stream", *extra,
           "specs/digits-mlp.yaml"]
    return bench_verify.timed(cmd, {"PYTHONPATH": str(tree)}, cwd=tree)


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
