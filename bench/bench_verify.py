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


def timed(cmd: list[str], extra_env: dict | None = None, cwd: Path = ROOT) -> float:
    """Wall seconds of one command, without inherited JAX_/XLA_ variables; exits on failure."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    env["JAX_PLATFORMS"] = "cpu"
    env.update(extra_env or {})
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=5)
    args = ap.parse_args()
    verify = [sys.executable, "-m", "repro.cli", "verify", "--no-stream", "specs/digits-mlp.yaml"]
    # The fair comparison: the bare script compiles from scratch, so does this verify.
    verify_cold = verify[:4] + ["--no-compile-cache"] + verify[4:]
    bare = [sys.executable, "bench/bare_mlp.py"]
    # the bare script with JAX's persistent compilation cache, as repro's default uses it
    import tempfile
    cache = {"JAX_COMPILATION_CACHE_DIR": tempfile.mkdtemp(prefix="bare-jax-cache-"),
             "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
             "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"}
    timed(verify), timed(bare), timed(bare, cache)  # warm caches (export, hashes, page, jax)
    t_cold, t_verify, t_bare, t_bare_cached = [], [], [], []
    for _ in range(args.n):
        t_cold.append(timed(verify_cold))
        t_bare.append(timed(bare))
        t_verify.append(timed(verify))
        t_bare_cached.append(timed(bare, cache))
    mc, mv, mb, mbc = (statistics.median(t) for t in (t_cold, t_verify, t_bare, t_bare_cached))
    show = lambda ts: [f"{t:.2f}" for t in ts]
    print(f"repro verify digits-mlp --no-compile-cache: median {mc:.2f} s  {show(t_cold)}")
    print(f"bare script                               : median {mb:.2f} s  {show(t_bare)}")
    print(f"repro verify digits-mlp (default)         : median {mv:.2f} s  {show(t_verify)}")
    print(f"bare script, JAX compilation cache warm   : median {mbc:.2f} s  {show(t_bare_cached)}")
    print(f"ratio verify/bare, both compiling         : {mc / mb:.3f}  (bar: <= 1.15)")
    print(f"ratio verify/bare, both with warm cache   : {mv / mbc:.3f}  (bar: <= 1.15)")
    print(f"ratio default verify / plain bare script  : {mv / mb:.3f}")


if __name__ == "__main__":
    main()
