"""Cost of `ctx.traced`: `repro record` (one run) of the tests' tiny project with the step
function traced (fingerprints + op-by-op hashing on the 3 kept-gradient steps of 12) against the
same project untraced, alternated in one process; and how much the record grows per traced step.

    python bench/bench_traced.py [-n 5]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import build_project  # noqa: E402
from repro import pipeline  # noqa: E402

PLAIN = "    step_fn = jax.jit(jax.value_and_grad(loss_fn))"
TRACED = "    step_fn = ctx.traced(jax.jit(jax.value_and_grad(loss_fn)))"


def size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir() if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=5)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="repro-bench-traced-"))
    os.environ.setdefault("REPRO_CACHE_DIR", str(tmp / "cache"))
    plain, traced = build_project(tmp / "plain"), build_project(tmp / "traced")
    train = traced.root / "tinyproj" / "train.py"
    train.write_text(train.read_text().replace(PLAIN, TRACED))
    traced.commit("trace the step")
    traced.repro("pin", str(traced.spec), check_rc=0)
    options = pipeline.Options(runs=1)

    def timed(project) -> float:
        t0 = time.perf_counter()
        v = pipeline.record(project.spec, options)
        assert v.status == "recorded", v.error
        return time.perf_counter() - t0

    timed(plain), timed(traced)   # warm the caches (exported trees, compilation cache)
    a, b = [], []
    for _ in range(args.n):
        a.append(timed(plain))
        b.append(timed(traced))
    ma, mb = statistics.median(a), statistics.median(b)
    print(f"record, untraced: median {ma:.3f} s  {[f'{t:.2f}' for t in a]}")
    print(f"record, traced  : median {mb:.3f} s  {[f'{t:.2f}' for t in b]}")
    print(f"ratio traced / untraced: {mb / ma:.3f}  (bar: <= 1.10)")
    sa, sb = size(plain.record_dir), size(traced.record_dir)
    import json
    steps = sum(len(f["steps"]) for f in json.loads((traced.record_dir / "record.json").read_text())
                ["traced"]["functions"])
    print(f"record size: untraced {sa} B, traced {sb} B: +{sb - sa} B for {steps} traced steps "
          f"= {(sb - sa) / max(steps, 1):.0f} B per traced step (fingerprints included)")


if __name__ == "__main__":
    main()
