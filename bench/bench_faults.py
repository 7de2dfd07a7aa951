"""The fault corpus (issue 9 part 5, "measured, not assumed"): does repro catch small real faults
on a workload it has never seen, name the right cause, and stay quiet on clean reruns?

The workload (bench/faults/workload/: a tanh MLP on the Wisconsin breast-cancer set) is copied
into a fresh git repository, pinned and recorded with the `repro` CLI. Six faults are made as a
user would make them (bench/faults/corpus.py) and verified; then the clean project is verified
under ten variations of its environment (no pin moved). Two arms:

  A  default tolerances (the spec has no tolerance block)
  B  calibrated tolerances: `repro calibrate SPEC --write`, the spec committed, everything again
     (skipped, and said so, where this checkout has no `repro calibrate`)

    PYTHONPATH=$PWD python3 bench/bench_faults.py [--json F] [--keep DIR] [--arm A|B|both]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent / "faults"))
import corpus  # noqa: E402


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _fmt_rel(x: float) -> str:
    return "0" if x == 0 else f"{x:.2e}"


def print_table(title: str, faults: list[corpus.Outcome], clean: list[corpus.Outcome]) -> None:
    print(f"\n== {title} ==")
    head = f"{'fault':<13} {'status':<6} {'caught':<6} {'cause named first':<36} {'right':<5} " \
           f"{'first diverging quantity':<26} {'step':>5} {'max rel':>9} {'time':>6}"
    print(head)
    print("-" * len(head))
    for o in faults:
        cause = o.cause or "-"
        if not o.right_cause and o.expected_cause in o.numeric_keys[1:]:
            cause += f" (then {o.expected_cause})"
        print(f"{o.name:<13} {o.status:<6} {'yes' if o.caught else 'NO':<6} {cause:<36} "
              f"{'yes' if o.right_cause else 'NO':<5} {o.first_quantity or '-':<26} "
              f"{'' if o.first_step is None else o.first_step:>5} {_fmt_rel(o.max_rel):>9} "
              f"{o.seconds:5.1f}s")
        if o.error:
            print(f"    error: {o.error.splitlines()[0][:150]}")
    head = f"{'clean rerun':<38} {'status':<6} {'compared':<9} {'first diverging quantity':<26} " \
           f"{'step':>5} {'max rel: metrics':>16} {'grads':>9} {'weights':>9} {'time':>6}"
    if clean:
        print()
        print(head)
        print("-" * len(head))
    for o in clean:
        print(f"{o.name:<38} {o.status:<6} {o.comparison or '-':<9} {o.first_quantity or '-':<26} "
              f"{'' if o.first_step is None else o.first_step:>5} "
              f"{_fmt_rel(o.max_rel_by_kind.get('metric', 0.0)):>16} "
              f"{_fmt_rel(o.max_rel_by_kind.get('grad', 0.0)):>9} "
              f"{_fmt_rel(o.max_rel_by_kind.get('weight', 0.0)):>9} {o.seconds:5.1f}s")
        if o.error:
            print(f"    error: {o.error.splitlines()[0][:150]}")
    right = sum(o.right_cause for o in faults)
    alarms = sum(o.false_alarm for o in clean)
    print(f"\nfaults caught with the right cause: {right}/{len(faults)}")
    if clean:
        print(f"false alarms: {alarms}/{len(clean)}")


def run_arm(p: corpus.Project, faults: list[corpus.Fault], variations: list[Any]
            ) -> dict[str, Any]:
    t0 = time.perf_counter()
    fo = []
    for f in faults:
        print(f"  fault {f.name} ...", flush=True)
        fo.append(corpus.run_fault(p, f))
    co = []
    for v in variations:
        print(f"  clean rerun {v.name} ...", flush=True)
        co.append(corpus.clean_rerun(p, v))
    return {"faults": fo, "clean": co, "seconds": time.perf_counter() - t0}


def calibrate_available(p: corpus.Project) -> bool:
    proc = p.repro("calibrate", "--help", check=False)
    return proc.returncode == 0


def summary(arm: dict[str, Any]) -> dict[str, Any]:
    return {"faults_caught_right_cause": sum(o.right_cause for o in arm["faults"]),
            "faults_caught": sum(o.caught for o in arm["faults"]),
            "faults": len(arm["faults"]),
            "false_alarms": sum(o.false_alarm for o in arm["clean"]),
            "clean_runs": len(arm["clean"]),
            "seconds": arm["seconds"],
            "faults_detail": [o.as_dict() for o in arm["faults"]],
            "clean_detail": [o.as_dict() for o in arm["clean"]]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", metavar="F", help="write every outcome as JSON")
    ap.add_argument("--keep", metavar="DIR", help="build the project in DIR (must not exist) and "
                    "keep it")
    ap.add_argument("--arm", choices=("A", "B", "both"), default="both")
    ap.add_argument("--faults", nargs="*", metavar="NAME", help="only these faults (default: all "
                    f"of {', '.join(f.name for f in corpus.FAULTS)})")
    ap.add_argument("--clean", type=int, metavar="N", help="only the first N clean reruns")
    args = ap.parse_args()

    t_start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="repro-faults-"))
    root = Path(args.keep).resolve() if args.keep else tmp / "project"
    # repro's machine caches (exported trees, hashes, compiled programs) private to this bench
    os.environ["REPRO_CACHE_DIR"] = str(tmp / "cache")
    faults = [corpus.fault(n) for n in args.faults] if args.faults else corpus.FAULTS
    variations = corpus.variations()[: args.clean]
    import jax

    import repro
    print(f"repro from {Path(repro.__file__).parent}; jax {jax.__version__}; {_cpu_model()}, "
          f"{os.cpu_count()} cpus")
    result: dict[str, Any] = {"host": {"cpu": _cpu_model(), "cpus": os.cpu_count(),
                                       "python": platform.python_version(),
                                       "jax": jax.__version__},
                              "project": str(root), "arms": {}}
    try:
        p = corpus.build_project(root)
        t0 = time.perf_counter()
        corpus.record(p)
        result["record_seconds"] = time.perf_counter() - t0
        print(f"project {root}: pinned and recorded ({result['record_seconds']:.1f} s, "
              f"record.runs default)")
        if args.arm in ("A", "both"):
            print("arm A: default tolerances")
            arm = run_arm(p, faults, variations)
            print_table("arm A: default tolerances (no tolerance block)", arm["faults"], arm["clean"])
            result["arms"]["A"] = summary(arm)
        if args.arm in ("B", "both"):
            if not calibrate_available(p):
                print("\ncalibrate not available: arm B skipped")
                result["arms"]["B"] = {"skipped": "calibrate not available"}
            else:
                t0 = time.perf_counter()
                proc = p.repro("calibrate", corpus.SPEC, "--write", check=False)
                cal_s = time.perf_counter() - t0
                print(proc.stdout[-4000:], proc.stderr[-2000:], sep="")
                if proc.returncode != 0:
                    print(f"repro calibrate exited {proc.returncode}: arm B not run")
                    result["arms"]["B"] = {"error": f"calibrate exited {proc.returncode}",
                                           "output": proc.stdout[-4000:] + proc.stderr[-2000:]}
                else:
                    import yaml
                    tolerance = yaml.safe_load(p.spec.read_text()).get("tolerance")
                    print(f"calibrated tolerance block ({cal_s:.1f} s): {json.dumps(tolerance)}")
                    p.clean = p.commit("calibrated tolerances")
                    arm = run_arm(p, faults, variations)
                    print_table("arm B: calibrated tolerances", arm["faults"], arm["clean"])
                    result["arms"]["B"] = {**summary(arm), "tolerance": tolerance,
                                           "calibrate_seconds": cal_s}
                    # Do tolerances wide enough for an ISA change hide a small fault when the
                    # environment changes too? The faults again, each verified under isa=AVX.
                    from repro.variation import Variation
                    env = Variation("isa-AVX", isa="AVX")
                    print("arm B, faults under isa=AVX (compared within the calibrated tolerances)")
                    t0 = time.perf_counter()
                    moved = []
                    for f in faults:
                        print(f"  fault {f.name} under isa=AVX ...", flush=True)
                        moved.append(corpus.run_fault(p, f, env))
                    print_table("arm B under isa=AVX: faults when the environment moves too",
                                moved, [])
                    result["arms"]["B_env"] = summary({"faults": moved, "clean": [],
                                                       "seconds": time.perf_counter() - t0})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)   # the caches, and the project unless --keep
        if args.keep:
            print(f"kept {root}")
    result["wall_seconds"] = time.perf_counter() - t_start
    print(f"\nwall time: {result['wall_seconds']:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"json: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
