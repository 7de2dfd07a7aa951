"""What `environment.isa: portable` costs: training time under portable vs native, side by side.

portable = the AVX2 ceiling, YNNPACK's consistent-arithmetic kernels and oneDNN capped at AVX2
(docs/portability.md); native = none of them (the CPU's best kernels). Each round trains each
spec once per mode, in alternating order, one core, with a warm compilation cache (a first
untimed run of each fills it), and takes the child's own training time (`train_s`). The goal:
portable <= 1.05x native on tiny-lm (400 steps) and digits-cnn.

    python bench/bench_portable.py [-n 5]
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from repro import pipeline  # noqa: E402
from repro.env.cpu import cpu_isa, cpu_model  # noqa: E402
from repro.env.isa import host_best  # noqa: E402


def spec_as(name: str, isa: str, steps: int | None):
    spec = pipeline.load_spec(ROOT / "specs" / f"{name}.yaml")
    update: dict = {"environment": spec.environment.model_copy(update={"isa": isa})}
    if steps is not None:   # shorter, without checkpoints: training time is what is measured
        update["config"] = {**spec.config, "steps": steps, "eval_every": 100, "warmup": 50}
        update["record"] = spec.record.model_copy(update={"checkpoints": None})
    out = spec.model_copy(update=update)
    out._path = ROOT / "specs" / f"{name}.yaml"
    return out


def train_s(spec) -> float:
    v = pipeline.run(spec, pipeline.Options())
    if v.status != "pass" and v.error:
        sys.exit(f"{spec.name} ({spec.environment.isa}) failed: {v.error}")
    return v.timings["train_s"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=5, help="rounds")
    args = ap.parse_args()
    print(f"host: {cpu_model()}, best ISA {host_best(cpu_isa())}; one core; {args.n} rounds")
    for name, steps in (("tiny-lm", 400), ("digits-cnn", None)):
        specs = {isa: spec_as(name, isa, steps) for isa in ("portable", "native")}
        for spec in specs.values():
            train_s(spec)   # fills the compilation cache
        times: dict[str, list[float]] = {"portable": [], "native": []}
        for i in range(args.n):
            order = ("portable", "native") if i % 2 == 0 else ("native", "portable")
            for isa in order:
                times[isa].append(train_s(specs[isa]))
        p, n = statistics.median(times["portable"]), statistics.median(times["native"])
        label = f"{name} ({steps} steps)" if steps else name
        print(f"{label:22s} portable {p:6.2f} s  native {n:6.2f} s  ratio {p / n:.3f}x  "
              f"(portable runs {', '.join(f'{t:.2f}' for t in times['portable'])}; "
              f"native {', '.join(f'{t:.2f}' for t in times['native'])})")


if __name__ == "__main__":
    main()
