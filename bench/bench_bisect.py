"""`repro bisect` on the 30-commit history of tests/test_bisect.py: rounds, verifies and wall
time at -j 1, 2, 3 (issue 10 part 3, "128 commits in ≤ 4 rounds at -j 3").

The history: the tiny project recorded at the good commit, then 30 commits of which one sets an
epsilon inside the loss (position 17) and one does not import (position 15, fixed by 16). Each
-j runs the real CLI once, in that order, on one fresh cache (the first run also exports the
trees and fills JAX's compilation cache; `--cold` gives each -j a fresh cache instead).

    PYTHONPATH=$PWD python3 bench/bench_bisect.py [--jobs 1,2,3] [--confirm N] [--cold] [--json F]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.test_bisect import EPS, N, make_history  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", default="1,2,3")
    ap.add_argument("--confirm", default="1")
    ap.add_argument("--cold", action="store_true", help="a fresh cache for every -j")
    ap.add_argument("--json", metavar="F")
    ns = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-bisect-") as tmp:
        os.environ["REPRO_CACHE_DIR"] = str(Path(tmp) / "cache")
        t0 = time.perf_counter()
        h = make_history(Path(tmp) / "proj")
        print(f"history: {N} commits, epsilon at {EPS}, built and recorded in "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
        for k in (int(x) for x in ns.jobs.split(",")):
            if ns.cold:
                os.environ["REPRO_CACHE_DIR"] = str(Path(tmp) / f"cache-{k}")
            out = Path(tmp) / f"bisect-{k}.json"
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "repro.cli", "bisect", "specs/tiny.yaml",
                                   "--good", h.good, "--bad", h.bad, "-j", str(k), "--confirm",
                                   ns.confirm, "--json", str(out)],
                                  cwd=h.project.root, text=True, capture_output=True)
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                print(proc.stdout + proc.stderr)
                return 1
            doc = json.loads(out.read_text())
            verifies = sum(len(r["probes"]) for r in doc["rounds"])
            row = {"jobs": k, "found": doc["found"] == h.eps, "rounds": doc["search_rounds"],
                   "bound": doc["rounds_bound"], "verifies": verifies,
                   "skipped": len(doc["skipped"]), "wall_s": round(wall, 1),
                   "round_s": [r["duration_s"] for r in doc["rounds"]]}
            rows.append(row)
            print(f"-j {k}: found={row['found']} rounds={row['rounds']} (bound {row['bound']}) "
                  f"verifies={verifies} skipped={row['skipped']} wall={wall:.1f} s "
                  f"rounds(s)={[round(x, 1) for x in row['round_s']]}", flush=True)
    if ns.json:
        Path(ns.json).write_text(json.dumps({"cpus": os.cpu_count(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
