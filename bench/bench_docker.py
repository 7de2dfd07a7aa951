"""The docker backend's cost: `repro verify` of the digits MLP on the docker backend vs the local
backend (interleaved, median of N each), and `repro env build envs/cpu` cold and warm.

The issue's bars: docker adds <= 1.5 s per spec; a build with the wheels already downloaded
takes <= 60 s.

    python bench/bench_docker.py verify [-n 5]
    python bench/bench_docker.py build            # removes repro-jax-cpu:latest's layers first
                                                  # (cold: no layer cache; wheels downloaded)

`verify` runs specs/digits-mlp-docker.yaml on both backends (its record verifies bitwise on
both) and needs the pinned image, or a recipe rebuild that the first, untimed, run does.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = "specs/digits-mlp-docker.yaml"


def timed(cmd: list[str]) -> tuple[float, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return elapsed, proc.stdout


def bench_verify(n: int) -> None:
    base = [sys.executable, "-m", "repro.cli", "verify", "--no-stream", SPEC]
    local, docker = base + ["--backend", "local"], base + ["--backend", "docker"]
    timed(local), timed(docker)  # warm: tree export, hash cache, compile caches, image rebuild
    t_local, t_docker = [], []
    for _ in range(n):
        t_local.append(timed(local)[0])
        dt, out = timed(docker)
        t_docker.append(dt)
        assert "bitwise identical" in out, out
    ml, md = statistics.median(t_local), statistics.median(t_docker)
    print(f"repro verify {SPEC} --backend local : median {ml:.2f} s  "
          f"{[f'{t:.2f}' for t in t_local]}")
    print(f"repro verify {SPEC} --backend docker: median {md:.2f} s  "
          f"{[f'{t:.2f}' for t in t_docker]}")
    print(f"added by docker: {md - ml:+.2f} s per spec  (bar: <= 1.5 s)")


def bench_build() -> None:
    import docker

    client = docker.from_env()
    build = [sys.executable, "-m", "repro.cli", "env", "build", "envs/cpu"]
    timed(build)  # wheels downloaded, base present
    try:
        client.images.remove("repro-jax-cpu:latest", force=True)  # drops the layer cache
    except docker.errors.ImageNotFound:
        pass
    cold, out = timed(build)
    warm, out2 = timed(build)
    ref = out2.strip().splitlines()[-1]
    assert re.fullmatch(r"repro-jax-cpu@sha256:[0-9a-f]{64}", ref), ref
    print(f"repro env build envs/cpu, wheels downloaded, no layer cache (cold): {cold:.1f} s")
    print(f"repro env build envs/cpu, layer cache warm                  (warm): {warm:.1f} s")
    print(f"-> {ref}   (bar: <= 60 s)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=("verify", "build"))
    ap.add_argument("-n", type=int, default=5)
    args = ap.parse_args()
    bench_verify(args.n) if args.what == "verify" else bench_build()


if __name__ == "__main__":
    main()
