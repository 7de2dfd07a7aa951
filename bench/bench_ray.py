"""`repro audit --engine ray` vs `--engine local -j 2`: the overhead per spec of running each
spec as a Ray task on a two-node cluster of this machine (tests/raycluster.py: 1 CPU a node, so
2 at a time on both sides), its inputs shipped by hash through a real S3 server (rclone's,
tests/s3server.py).

4 small specs (the tests' tiny workload with 4 seeds), recorded once; warm-up audits on each
side (node caches: exported trees, compile cache), then runs alternate so machine noise hits
both sides alike, with a pause after each run on both sides (PAUSE_S). Two phases:

- cold: every Ray audit starts its workers (REPRO_RAY_KEEP_WARM_S=0: none left for the next);
- warm (the default): each Ray audit leaves a worker bound to no job on each node it used, which
  the next audit takes (docs/ray.md, "Workers left warm"); the pause lets them start before the
  next timed run, as they would between two CI runs.

The issue's bar: overhead <= 0.5 s per spec.

    python bench/bench_ray.py [-n 3]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from tests.conftest import build_project  # noqa: E402
from tests.raycluster import two_nodes  # noqa: E402
from tests.s3server import ACCESS_KEY, SECRET_KEY, serve  # noqa: E402

SPECS = 4
PAUSE_S = 2.0
KEEP_WARM_ENV = "REPRO_RAY_KEEP_WARM_S"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="repro-bench-ray-"))
    stack = contextlib.ExitStack()
    server = stack.enter_context(serve("rclone"))
    os.environ.update(AWS_ENDPOINT_URL=server.endpoint, AWS_ACCESS_KEY_ID=ACCESS_KEY,
                      AWS_SECRET_ACCESS_KEY=SECRET_KEY, AWS_DEFAULT_REGION="us-east-1",
                      REPRO_CACHE_DIR=str(work / "cache"))
    try:
        import s3fs
        s3fs.S3FileSystem().mkdir("bench")
        p = build_project(work / "projects" / "proj")
        p.write("pyproject.toml", '[tool.repro]\nstore = "s3://bench/ray"\n')
        for k in range(1, SPECS):
            text = p.spec.read_text().replace("name: tiny", f"name: tiny-{k}").replace(
                "seeds: {params: 0}", f"seeds: {{params: {k}}}")
            p.write(f"specs/tiny-{k}.yaml", text)
        p.commit("4 specs and a store")
        p.repro("record", "specs", "--runs", "1", check_rc=0)
        p.commit("records")
        with two_nodes(work / "projects") as cluster:
            def audit(engine: str) -> tuple[float, str]:
                out = work / f"{engine}.json"
                extra = ["--engine", "ray", "--address", cluster.address] if engine == "ray" else ["-j", "2"]
                t = time.perf_counter()
                p.repro("audit", "specs", "--json", str(out), *extra, check_rc=0)
                elapsed = time.perf_counter() - t
                doc = json.loads(out.read_text())
                return elapsed, json.dumps({r["name"]: r["status"] for r in doc["results"]}, sort_keys=True)

            # warm-up: caches on both sides. Ray places a spec on either node, and a node fetches
            # the blobs it lacks from the store (opening the remote: s3fs's import, ~0.7 s of
            # CPU); three audits leave each node holding them all, as a long-lived cluster does
            os.environ[KEEP_WARM_ENV] = "0"
            audit("local")
            for _ in range(3):
                audit("ray")
            times: dict[str, list[float]] = {"local": [], "ray": [], "local-cold": [], "ray-cold": [],
                                             "local-lib": [], "ray-lib": []}
            verdicts = set()

            def rounds(suffix: str) -> None:
                for _ in range(args.n):
                    for engine in ("local", "ray"):
                        t, v = audit(engine)
                        times[engine + suffix].append(t)
                        verdicts.add(v)
                        time.sleep(PAUSE_S)

            rounds("-cold")
            del os.environ[KEEP_WARM_ENV]
            audit("ray")   # untimed: it leaves the first workers warm
            time.sleep(PAUSE_S)
            rounds("")
            # the same audits from a process already connected, its Ray workers started: what
            # each spec costs, without the per-audit start (import ray, connect, the new job's
            # workers)
            from repro import pipeline
            from repro.commands.audit import run_audit
            from repro.engines.executor import LocalExecutor
            from repro.engines.rayexec import RayExecutor
            connected = RayExecutor(cluster.address)
            run_audit(p.root / "specs", pipeline.Options(), executor=connected)
            for _ in range(args.n):
                for name, ex in (("local-lib", LocalExecutor(2)), ("ray-lib", connected)):
                    t = time.perf_counter()
                    a = run_audit(p.root / "specs", pipeline.Options(), executor=ex)
                    times[name].append(time.perf_counter() - t)
                    verdicts.add(json.dumps({v.name: str(v.status) for v in a.verdicts}, sort_keys=True))
        m = {k: statistics.median(v) for k, v in times.items()}
        fmt = lambda xs: ", ".join(f"{x:.2f}" for x in xs)  # noqa: E731
        print(f"{SPECS} specs, {os.cpu_count()} cores, two 1-CPU Ray nodes, median of {args.n}")
        for title, suffix in (("workers left warm by the audit before (the default)", ""),
                              (f"cold: every audit starts its workers ({KEEP_WARM_ENV}=0)", "-cold")):
            local, ray = m["local" + suffix], m["ray" + suffix]
            print(title + ":")
            print(f"  local -j 2 : {local:.2f} s  [{fmt(times['local' + suffix])}]")
            print(f"  ray        : {ray:.2f} s  [{fmt(times['ray' + suffix])}]")
            print(f"  ray / local: {ray / local:.2f}x")
            print(f"  overhead per spec: {(ray - local) / SPECS:.2f} s  (bar <= 0.5 s)")
        print("connected driver, workers started (run_audit in this process):")
        print(f"  local -j 2 : {m['local-lib']:.2f} s  [{fmt(times['local-lib'])}]")
        print(f"  ray        : {m['ray-lib']:.2f} s  [{fmt(times['ray-lib'])}]")
        print(f"  overhead per spec: {(m['ray-lib'] - m['local-lib']) / SPECS:.2f} s")
        print(f"verdicts identical in every audit: {len(verdicts) == 1} {sorted(verdicts)[0]}")
    finally:
        stack.close()
        import shutil
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
