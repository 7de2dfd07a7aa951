"""`repro audit` speed: -j 2 vs -j 1 over 4 specs, and a warm vs a cold compilation cache.

Works in a throwaway clone of this repository with 4 specs (the two zoo specs and two variants
with other data seeds), recorded once. Runs alternate so machine noise hits both sides alike.
The issue's bars: -j 2 >= 1.7x faster than -j 1; warm cache >= 1.5x faster than cold, with the
same verdicts and untouched records.

    python bench/bench_audit.py [-n 3]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sh(*cmd, cwd, env=None, ok=(0,)):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode not in ok:
        sys.exit(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def records_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted((root / "fixtures" / "records").rglob("arrays.npz")):
        h.update(p.read_bytes())
    return h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="repro-bench-audit-"))
    try:
        clone = work / "repo"
        sh("git", "clone", "-q", str(ROOT), str(clone), cwd=work)
        for extra in (clone / "specs").glob("*.yaml"):  # exactly the two local zoo specs ...
            if extra.stem not in ("digits-mlp", "digits-cnn"):
                extra.unlink()
        for name in ("digits-mlp", "digits-cnn"):  # ... and a variant of each: 4 specs
            text = (clone / "specs" / f"{name}.yaml").read_text()
            (clone / "specs" / f"{name}-b.yaml").write_text(
                text.replace(f"name: {name}", f"name: {name}-b").replace("data: 1}", "data: 2}"))
        env = {**os.environ, "REPRO_CACHE_DIR": str(work / "cache")}
        cli = [sys.executable, "-m", "repro.cli"]
        sh(*cli, "record", "--no-compile-cache", "--no-stream", "specs", cwd=clone, env=env)
        digest = records_digest(clone)

        def audit(jobs: int, out: str) -> tuple[float, dict]:
            t = time.perf_counter()
            sh(*cli, "audit", "specs", "-j", str(jobs), "--json", str(work / out), cwd=clone, env=env)
            elapsed = time.perf_counter() - t
            doc = json.loads((work / out).read_text())
            return elapsed, {r["name"]: r["status"] for r in doc["results"]}

        compile_cache = work / "cache" / "jax-compile"
        audit(2, "warmup.json")
        j1, j2, cold, warm = [], [], [], []
        verdicts = set()

        def timed(times: list, jobs: int, name: str) -> None:
            t, v = audit(jobs, name)
            times.append(t)
            verdicts.add(json.dumps(v, sort_keys=True))

        for _ in range(args.n):
            timed(j1, 1, "j1.json")
            timed(j2, 2, "j2.json")
        for _ in range(args.n):
            shutil.rmtree(compile_cache, ignore_errors=True)
            timed(cold, 2, "cold.json")
            timed(warm, 2, "warm.json")
        fmt = lambda xs: ", ".join(f"{x:.2f}" for x in xs)  # noqa: E731
        m = {k: statistics.median(v) for k, v in (("j1", j1), ("j2", j2), ("cold", cold), ("warm", warm))}
        print(f"4 specs, {os.cpu_count()} cores, median of {args.n}")
        print(f"-j 1 : {m['j1']:.2f} s  [{fmt(j1)}]   (compile cache warm)")
        print(f"-j 2 : {m['j2']:.2f} s  [{fmt(j2)}]")
        print(f"speed-up -j2 vs -j1: {m['j1'] / m['j2']:.2f}x  (bar >= 1.7x)")
        print(f"cold compile cache (-j 2): {m['cold']:.2f} s  [{fmt(cold)}]")
        print(f"warm compile cache (-j 2): {m['warm']:.2f} s  [{fmt(warm)}]")
        print(f"speed-up warm vs cold: {m['cold'] / m['warm']:.2f}x  (bar >= 1.5x)")
        print(f"verdicts identical in every audit: {len(verdicts) == 1} {sorted(verdicts)[0]}")
        print(f"records untouched: {records_digest(clone) == digest}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
