"""`repro calibrate`: the variation matrix, the tolerance rule and `--write`.

Runs are real (the tiny project of conftest.py, trained in fresh processes); training code that
depends on the directory listing order, on str hashes, or crashes under one variation is
written with `train_does`. The rule and the YAML edit are also checked on their own.
"""
from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import textwrap

import numpy as np
import pytest

from repro import pipeline
from repro.commands.calibrate import calibrate
from repro.commands.calibstats import FLOOR, Proposal, ProposedTolerance, deviations, propose_tolerance
from repro.commands.calibvariations import Host, select, unavailable, variations_for
from repro.commands.calibwrite import write_tolerances
from repro.compare import compare_arrays
from repro.env.cpu import cpu_isa
from repro.env.isa import PORTABLE, XLA_ISAS, host_best, is_x86
from repro.env.settings import determinism_settings
from repro.errors import ReproError, SpecError
from repro.spec import load_spec, parse_spec
from repro.variation import Variation
from repro.yamlio import float_text
from tests.conftest import train_does

AVX2 = ("sse4_2", "avx", "avx2", "fma")
AVX512 = AVX2 + ("avx512f", "avx512bw", "avx512dq", "avx512vl")
BASE = {"repro": 1, "code": {"commit": "a" * 40, "entrypoint": "m:f"}}


def names(variations):
    return [v.name for v in variations]


# -- what a host can vary -------------------------------------------------------------------------
def test_variations_follow_the_host_and_leave_out_the_specs_own_settings():
    spec = parse_spec(BASE, file="t.yaml")          # isa portable, cpus 1
    avx2 = Host("x86_64", AVX2, 2)
    emulated = ["cpu=Haswell-noTSX", "cpu=Skylake-Server-noTSX-IBRS", "cpu=SandyBridge"] \
        if shutil.which("qemu-x86_64") else []   # the `cpu` kind: asked for by name (select)
    assert names(variations_for(spec, avx2)) == [
        "isa=SSE4_2", "isa=AVX", "cpus=2", "compile-cache=off", "compile-cache=warm",
        "PYTHONHASHSEED=1", "PYTHONHASHSEED=2", "listing=reversed", *emulated]
    assert not [v for v in select(variations_for(spec, avx2), None) if v.emulate_cpu]
    assert [v.emulate_cpu for v in select(variations_for(spec, avx2), ["cpu"])] == [
        n.split("=", 1)[1] for n in emulated]
    assert [u for u in unavailable(spec, avx2) if not u.startswith("cpu:")] == [
        "gpu-ops: environment.platform is not gpu; XLA's GPU deterministic ops do not apply"]
    # AVX-512: native (no ceiling) now differs from portable (AVX2); 1, 2 and all cores
    wide = variations_for(spec, Host("x86_64", AVX512, 16))
    assert names(wide)[:5] == ["isa=SSE4_2", "isa=AVX", "isa=native (AVX512)", "cpus=2",
                               "cpus=16"]
    assert next(v for v in wide if v.name == "isa=native (AVX512)").isa == "native"
    # a spec that asks for AVX gets the other levels, AVX2 included
    avx = parse_spec({**BASE, "environment": {"isa": "AVX", "cpus": 2}}, file="t.yaml")
    assert [n for n in names(variations_for(avx, avx2)) if n.startswith(("isa", "cpus"))] == [
        "isa=SSE4_2", "isa=native (AVX2)", "cpus=1"]
    # no ISA variations: off x86-64, on gpu, or when the spec's own XLA flag sets the cap
    arm = Host("aarch64", ("asimd",), 4)
    assert not [v for v in variations_for(spec, arm) if v.isa]
    assert unavailable(spec, arm)[0] == "isa: aarch64 is not x86-64; XLA has no ISA ceiling there"
    flagged = parse_spec({**BASE, "environment": {"xla_flags": ["--xla_cpu_max_isa=AVX"]}},
                         file="t.yaml")
    assert not [v for v in variations_for(flagged, avx2) if v.isa]
    assert "xla_flags" in unavailable(flagged, avx2)[0]
    assert not [v for v in variations_for(spec, Host("x86_64", AVX2, 1)) if v.cpus]


def test_a_gpu_spec_varies_the_deterministic_ops_flag_and_nothing_of_the_cpu_isa():
    gpu = parse_spec({**BASE, "environment": {"platform": "gpu"}}, file="t.yaml")
    varied = variations_for(gpu, Host("x86_64", AVX2, 2))
    assert not [v for v in varied if v.isa] and names(varied)[-1] == "deterministic-ops=off"
    assert unavailable(gpu, Host("x86_64", AVX2, 2)) == [
        "isa: environment.platform is gpu; the CPU ISA ceiling does not apply",
        "cpu: environment.platform is gpu; an emulated CPU has no GPU"]
    off = varied[-1]
    # what the child gets: the flag turned off in place, the other flags kept
    settings = determinism_settings(gpu.environment)
    assert "--xla_gpu_deterministic_ops=true" in settings["XLA_FLAGS"]
    assert settings["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"   # runs side by side on one GPU
    flags = off.settings(settings)["XLA_FLAGS"].split()
    assert flags == [f for f in settings["XLA_FLAGS"].split() if "deterministic_ops" not in f] + [
        "--xla_gpu_deterministic_ops=false"]


# -- the tolerance rule -----------------------------------------------------------------------------
def _tol(t: ProposedTolerance) -> dict:
    return {"rtol": t.rtol, "atol": t.atol}


def test_proposed_tolerance_passes_every_deviation_with_margin_and_is_tight():
    rng = np.random.default_rng(0)
    ref = np.concatenate([rng.normal(size=300), np.zeros(4), rng.normal(size=30) * 1e-7])
    near_zero = np.abs(ref) < 1e-6
    runs = [ref * (1 + rng.normal(size=ref.size) * s) + near_zero * rng.normal(size=ref.size) * a
            for s, a in ((2e-5, 3e-8), (5e-6, 1e-7))]      # two variations, two kinds of noise
    observed = [deviations(("grads",), ref, run) for run in runs]
    t = propose_tolerance(("grads",), observed)
    assert t.rtol > FLOOR.rtol and t.atol > FLOOR.atol and not t.problem
    assert t.differing == sum(int(np.count_nonzero(run != ref)) for run in runs)
    for run in runs:  # every observed deviation, and 1.4 times it, passes
        for scale in (1.0, 1.4):
            row = compare_arrays("grad", "g", ref, ref + scale * (run - ref), bitwise=False,
                                 tol=_tol(t))
            assert row.ok, (scale, row)
    # tight: somewhere a deviation twice as large fails
    doubled = [compare_arrays("grad", "g", ref, ref + 2 * (run - ref), bitwise=False,
                              tol=_tol(t)) for run in runs]
    assert not all(row.ok for row in doubled)


def test_floor_when_nothing_or_little_differs_and_no_tolerance_for_a_changed_shape():
    ref = np.linspace(1.0, 2.0, 10)
    assert propose_tolerance(("weights",), [deviations(("weights",), ref, ref.copy())]).at_floor
    tiny = ref * (1 + 1e-9)
    t = propose_tolerance(("weights",), [deviations(("weights",), ref, tiny)])
    assert (t.rtol, t.atol) == (FLOOR.rtol, FLOOR.atol) and t.differing == 10
    bad = propose_tolerance(("weights",), [deviations(("weights",), ref, ref[:5])])
    assert "shape" in bad.problem
    nan = propose_tolerance(("metrics", "loss"),
                            [deviations(("metrics", "loss"), ref, np.full(10, np.nan))])
    assert "non-finite" in nan.problem


# -- writing tolerances into a spec --------------------------------------------------------------------
SPEC_TEXT = """\
# my experiment: comments must survive
repro: 1
name: w
code:
  commit: {commit}   # pinned
  entrypoint: m:f
record:
  metrics: [loss, acc]
  grads: {{every: 2}}

# the tolerances follow
tolerance:
  mode: auto      # keep this comment
  grads: {{rtol: 1.0e-3}}   # old grads
  platforms: {{gpu: {{rtol: 1.0e-2}}}}
seeds: {{params: 0}}   # unrelated
"""


def proposal(grads=(1.6e-5, 3.0e-8), weights=(2.0e-6, 1e-8), loss=(1e-6, 1e-8)):
    return Proposal((ProposedTolerance(("metrics", "loss"), *loss),
                     ProposedTolerance(("grads",), *grads),
                     ProposedTolerance(("weights",), *weights)), variations=8, platform="cpu")


def test_write_keeps_comments_and_other_keys_and_inserts_missing_blocks(tmp_path):
    path = tmp_path / "w.yaml"
    before = SPEC_TEXT.format(commit="a" * 40)
    path.write_text(before)
    written = write_tolerances(path, proposal(), dt.date(2026, 11, 28), "x86_64 AVX2, 2 cores")
    stamp = ("# calibrated by repro calibrate 2026-11-28 on x86_64 AVX2, 2 cores, 8 variations: "
             "largest deviation × 1.5, floor rtol 1e-06 atol 1e-08\n")
    assert path.read_text() == before.replace(
        "tolerance:\n", stamp + "tolerance:\n").replace(
        "  grads: {rtol: 1.0e-3}   # old grads\n",
        "  grads: {rtol: 1.6e-5, atol: 3.0e-8}   # old grads\n").replace(
        "  platforms: {gpu: {rtol: 1.0e-2}}\n",
        "  platforms: {gpu: {rtol: 1.0e-2}}\n  metrics:\n    loss: {rtol: 1.0e-6, atol: 1.0e-8}\n"
        "  weights: {rtol: 2.0e-6, atol: 1.0e-8}\n")
    spec = load_spec(path)
    assert spec.tolerance.grads is not None and spec.tolerance.grads.rtol == 1.6e-5
    assert written.warnings == ()
    assert ("grads", (1e-3, 1e-8), (1.6e-5, 3e-8)) in [
        (k, (a.rtol, a.atol), (b.rtol, b.atol)) for k, a, b in written.changes]
    # again: the values change, the stamp is replaced (not stacked)
    write_tolerances(path, proposal(grads=(2.0e-5, 4.0e-8)), dt.date(2026, 11, 29), "h")
    text = path.read_text()
    assert text.count("# calibrated by repro calibrate") == 1 and "2026-11-29 on h," in text
    assert "  grads: {rtol: 2.0e-5, atol: 4.0e-8}   # old grads\n" in text


def test_write_into_a_spec_without_tolerance_block_and_warnings(tmp_path):
    path = tmp_path / "w.yaml"
    path.write_text(f"repro: 1\ncode: {{commit: {'a' * 40}, entrypoint: m:f}}\n"
                    "record: {metrics: [loss]}\n")
    write_tolerances(path, proposal(), dt.date(2026, 11, 28), "h")
    assert path.read_text().endswith(
        "record: {metrics: [loss]}\n# calibrated by repro calibrate 2026-11-28 on h, 8 "
        "variations: largest deviation × 1.5, floor rtol 1e-06 atol 1e-08\ntolerance:\n"
        "  metrics:\n    loss: {rtol: 1.0e-6, atol: 1.0e-8}\n"
        "  grads: {rtol: 1.6e-5, atol: 3.0e-8}\n  weights: {rtol: 2.0e-6, atol: 1.0e-8}\n")
    # a platform block for the measured platform would override them: said, not hidden
    text = path.read_text().replace("tolerance:\n", "tolerance:\n  platforms: {cpu: {rtol: 0.1}}\n")
    path.write_text(text)
    written = write_tolerances(path, proposal(), dt.date(2026, 11, 28), "h")
    assert any("tolerance.platforms.cpu overrides the calibrated grads" in w
               for w in written.warnings)


def test_a_failed_write_leaves_the_file_unchanged_and_exact_mode_is_refused(tmp_path):
    path = tmp_path / "w.yaml"
    before = SPEC_TEXT.format(commit="a" * 40)
    path.write_text(before)
    unknown_metric = Proposal((ProposedTolerance(("metrics", "nope"), 1e-6, 1e-8),),
                              variations=1, platform="cpu")
    with pytest.raises(SpecError, match="invalid spec.*record.metrics does not list"):
        write_tolerances(path, unknown_metric, dt.date(2026, 11, 28), "h")
    assert path.read_text() == before
    path.write_text(before.replace("mode: auto", "mode: exact"))
    with pytest.raises(SpecError, match="mode is exact.*nothing to write"):
        write_tolerances(path, proposal(), dt.date(2026, 11, 28), "h")
    with pytest.raises(SpecError, match="mode is exact"):  # refused before anything runs
        calibrate(path, write=True)
    nothing = Proposal((ProposedTolerance(("grads",), 1e-6, 1e-8, problem="shape"),),
                       variations=1, platform="cpu")
    path.write_text(before)
    with pytest.raises(ReproError, match="nothing to write"):
        write_tolerances(path, nothing, dt.date(2026, 11, 28), "h")
    assert path.read_text() == before
    with pytest.raises(ReproError, match="unknown variation kind.*choose from isa, cpus"):
        calibrate(path, only=["isa", "colour"])


def test_float_text_reads_back_as_the_same_float():
    for x in (1e-6, 1.6e-5, 2.5e-8, 0.15, 3.0, 1.2345e-7, 2e16):
        text = float_text(x)
        assert "." in text
        assert parse_spec({**BASE, "tolerance": {"default": {"rtol": x}}},
                          file="t").tolerance.default.rtol == x
        import yaml

        from repro.yamlio import SpecLoader
        assert yaml.load(text, Loader=SpecLoader) == x  # noqa: S506 - a SafeLoader
        assert yaml.safe_load(text) == x                 # YAML 1.1 readers too


# -- real runs --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_variation_reaches_the_child(project):
    """Options(variation=...) sets the child's PYTHONHASHSEED and reverses its listings."""
    train_does(project, """\
    import os, posix
    here = os.path.dirname(os.path.abspath(__file__))
    ctx.log(0, hash_seed=float(os.environ["PYTHONHASHSEED"]),
            reversed=float(os.listdir(here) == posix.listdir(here)[::-1]))
""")
    options = pipeline.Options(variation=Variation("t", hash_seed="7", listing_order="reversed"))
    result = pipeline.execute(pipeline.prepare(project.spec, options), options).result
    assert result.metrics["hash_seed"]["values"] == [7.0]
    assert result.metrics["reversed"]["values"] == [1.0]


def _reaches_avx2() -> bool:
    best = host_best(cpu_isa())
    return is_x86() and best is not None and XLA_ISAS.index(best) >= XLA_ISAS.index(PORTABLE)


@pytest.mark.skipif(not _reaches_avx2(), reason="needs an x86-64 host with AVX2+FMA: the ISA "
                    "ceilings below it (no FMA) are what change the bits")
@pytest.mark.slow
def test_calibrate_names_the_isa_ceilings_and_nothing_else(project):
    cal = calibrate(project.spec)
    by_name = {r.name: r for r in cal.runs}
    assert not cal.failed, [(r.name, r.error) for r in cal.failed]
    assert {"isa=SSE4_2", "isa=AVX"} <= {r.name for r in cal.breaking}
    for name in ("compile-cache=off", "compile-cache=warm", "PYTHONHASHSEED=1",
                 "PYTHONHASHSEED=2", "listing=reversed"):
        assert by_name[name].bitwise, by_name[name].differing
    assert cal.quantities == 9 and cal.baseline.effective_isa == "AVX2"
    assert [t.label for t in cal.proposal.tolerances] == ["metrics.loss", "grads", "weights"]
    grads = next(t for t in cal.proposal.tolerances if t.label == "grads")
    assert grads.max_abs > 0 and grads.current == FLOOR   # the spec sets none: the fallback
    from repro.report.calibrate import render_calibration
    text = render_calibration(cal)
    # the column's padding follows the longest variation name (host-dependent: isa=native (…))
    assert re.search(r"^compile-cache=warm +bitwise on all 9 quantities", text, re.M), text
    assert re.search(r"^Breaks bitwise: .*isa=AVX", text, re.M)


def _with_parts(project) -> None:
    """A data directory of three files, pinned in the spec."""
    parts = project.root / "data" / "parts"
    parts.mkdir()
    for i, name in enumerate(("a.npy", "b.npy", "c.npy")):
        np.save(parts / name, np.float32(i + 1))
    project.edit_spec("seeds:", "  parts: {path: data/parts}\nseeds:")


@pytest.mark.slow
def test_training_that_trusts_the_listing_order_is_named(project):
    _with_parts(project)
    train_does(project, """\
    global LR_SCALE
    import os
    parts = ctx.data["parts"]
    vals = [float(np.load(os.path.join(parts, f))) for f in os.listdir(parts)]
    LR_SCALE = 1.0 + sum(v * 0.1 ** i for i, v in enumerate(vals)) / 100
""")
    cal = calibrate(project.spec, only=["listing", "hash-seed"])
    assert [r.name for r in cal.breaking] == ["listing=reversed"]
    assert {r.name for r in cal.runs} == {"listing=reversed", "PYTHONHASHSEED=1",
                                          "PYTHONHASHSEED=2"}
    # named, to be fixed, and not absorbed into tolerances
    assert any(n.startswith("listing=reversed: the training depends on the order directory "
                            "listings come back in") for n in cal.notes), cal.notes
    assert cal.proposal.tolerances == () and cal.proposal.variations == 0


@pytest.mark.slow
def test_training_that_hashes_a_str_is_named_under_pythonhashseed(project):
    train_does(project, """\
    global LR_SCALE
    LR_SCALE = 1.0 + (hash("repro calibrate") % 1000) / 1e5
""")
    cal = calibrate(project.spec, only=["hash-seed", "listing"])
    assert {r.name for r in cal.breaking} == {"PYTHONHASHSEED=1", "PYTHONHASHSEED=2"}
    assert next(r for r in cal.runs if r.name == "listing=reversed").bitwise
    assert any("depends on PYTHONHASHSEED" in n and "Not absorbed" in n for n in cal.notes)


@pytest.mark.slow
def test_write_from_the_command_line_keeps_the_spec_and_its_record_valid(project):
    p = project
    p.write("specs/tiny.yaml", p.spec.read_text() + textwrap.dedent("""\
        tolerance:
          mode: auto   # keep this comment
          default: {rtol: 1.0e-4, atol: 1.0e-6}
          grads: {rtol: 1.0e-3, atol: 1.0e-5}   # grads were noisy
    """))
    p.commit("tolerances")
    p.repro("record", "specs/tiny.yaml", "--runs", "1", check_rc=0)
    before = p.spec.read_text()
    proc = p.repro("calibrate", "specs/tiny.yaml", "--write", "--variations", "isa,compile-cache",
                   "--json", "cal.json", check_rc=0)
    assert f"wrote tolerances to {p.spec}" in proc.stdout, proc.stdout + proc.stderr
    doc = json.loads((p.root / "cal.json").read_text())
    tol = {t["key"]: t for t in doc["proposal"]["tolerances"]}
    assert set(tol) == {"metrics.loss", "grads", "weights"}

    def flow(key):
        return f"{{rtol: {float_text(tol[key]['rtol'])}, atol: {float_text(tol[key]['atol'])}}}"
    after = p.spec.read_text()
    stamp = re.search(r"^# calibrated by repro calibrate \d{4}-\d\d-\d\d on .*, "
                      r"\d+ variations: largest deviation × 1\.5.*\n", after, re.M)
    assert stamp, after
    assert after == before.replace("tolerance:\n", stamp.group(0) + "tolerance:\n").replace(
        "  grads: {rtol: 1.0e-3, atol: 1.0e-5}   # grads were noisy\n",
        f"  grads: {flow('grads')}   # grads were noisy\n"
        f"  metrics:\n    loss: {flow('metrics.loss')}\n  weights: {flow('weights')}\n")
    spec = load_spec(p.spec)
    assert spec.tolerance.grads is not None and spec.tolerance.grads.rtol == tol["grads"]["rtol"]
    verify = p.repro("verify", "specs/tiny.yaml", "-v", check_rc=0)
    assert verify.stdout.startswith("PASS tiny [cpu] bitwise identical"), verify.stdout


@pytest.mark.slow
def test_a_crash_under_one_variation_is_reported_for_it(project):
    train_does(project, """\
    import os
    if os.environ.get("PYTHONHASHSEED") == "1":
        raise RuntimeError("boom under seed 1")
""")
    proc = project.repro("calibrate", "specs/tiny.yaml", "--variations", "hash-seed",
                         "--json", "cal.json", check_rc=0)
    assert re.search(r"^PYTHONHASHSEED=1\s+error: the training function raised: RuntimeError: "
                     r"boom under seed 1", proc.stdout, re.M), proc.stdout
    assert re.search(r"^PYTHONHASHSEED=2\s+bitwise on all 9 quantities", proc.stdout, re.M)
    assert "Failed: PYTHONHASHSEED=1" in proc.stdout and "Traceback" not in proc.stdout
    doc = json.loads((project.root / "cal.json").read_text())
    assert doc["failed"] == ["PYTHONHASHSEED=1"] and doc["proposal"]["variations"] == 0


def test_a_failed_baseline_is_an_error(project):
    train_does(project, '    raise RuntimeError("broken everywhere")\n')
    proc = project.repro("calibrate", "specs/tiny.yaml", "--variations", "listing", check_rc=2)
    assert "repro: error: the baseline run (the spec as pinned, no variation) failed" in proc.stderr
    assert "broken everywhere" in proc.stderr and proc.stdout == ""
