"""Portable CPU numerics (`environment.isa`, docs/portability.md).

Records made on other hosts live beside the project, in `../shared/fixtures/cross-host/` (their
README says how each was made); they are never rewritten here. These tests need bitwise equality
with another host's record on purpose: that is what `portable` promises. The emulated-CPU tests
run the same interpreter under `qemu-x86_64 -cpu MODEL` (qemu-user, installed by .ci/run): on an
AVX-512 host that is the real AVX-512 vs AVX2 check; on an AVX2 host it still checks another CPU
model's CPUID and caches.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

from repro import pipeline
from repro.env.cpu import cpu_isa
from repro.env.fingerprint import Fingerprint
from repro.env.isa import PORTABLE, XLA_ISAS, ceiling, effective, effective_of, host_best, is_x86
from repro.spec import parse_spec
from repro.variation import Variation

ROOT = Path(__file__).resolve().parents[1]
CROSS_HOST = ROOT.parent / "shared" / "fixtures" / "cross-host"
AVX2_HOST = CROSS_HOST / "digits-mlp-avx2-host"
AVX512_HOST = CROSS_HOST / "avx512-host"
IN_CI = os.environ.get("CI") == "true"


def _host_reaches_avx2() -> bool:
    best = host_best(cpu_isa())
    return is_x86() and best is not None and XLA_ISAS.index(best) >= XLA_ISAS.index(PORTABLE)


needs_avx2 = pytest.mark.skipif(not _host_reaches_avx2(), reason="this host has no AVX2+FMA: the "
                                "portable recipe cannot be applied, a comparison with an AVX2 "
                                "record is within tolerance by design")


def _needs_qemu() -> None:
    if shutil.which("qemu-x86_64") and is_x86():
        return
    if IN_CI and is_x86():
        pytest.fail("qemu-x86_64 is missing: .ci/run installs qemu-user")
    pytest.skip("needs qemu-x86_64 (apt-get install qemu-user) on an x86-64 host")


def _fixture_spec(directory: Path, portable: bool = True, epochs: int | None = None):
    """The spec a fixture was recorded from, as the project's spec file would hold it; with
    `portable`, its environment block as `isa: portable` (the default) with no flags of its own;
    with `epochs`, that many (the same programs and kernels over fewer steps: what an emulated
    CPU runs 20-50x slower)."""
    data = yaml.safe_load((directory / "spec.yaml").read_text())
    if epochs is not None:
        data["config"]["epochs"] = epochs
    if portable:
        data["environment"].pop("isa", None)
        data["environment"].pop("xla_flags", None)
    spec = parse_spec(data, file=str(directory / "spec.yaml"))
    spec._path = ROOT / "specs" / "digits-mlp.yaml"   # code.repo "." is this repository
    return spec


# in the quick loop (`-m "not slow"`): one record of each host kind, and the L1-sliced CNN
QUICK_FIXTURES = {("avx512-host", "digits-mlp"), ("avx512-l1d32k", "digits-mlp"), ("avx512-l1d32k", "digits-cnn")}
FIXTURES = [pytest.param(root / n, id=f"{root.name}/{n}",
                         marks=[] if (root.name, n) in QUICK_FIXTURES else [pytest.mark.slow])
            for root in (AVX512_HOST, ROOT / "fixtures" / "cross-host" / "avx512-l1d32k")
            for n in ("digits-mlp", "digits-cnn", "flax-digits-mlp", "tiny-lm")]


@needs_avx2
@pytest.mark.parametrize("directory", FIXTURES)
def test_records_from_an_avx512_host_reproduce_bitwise_here_under_portable(directory, tmp_path):
    """Made on AVX-512 EPYCs with the recipe (../shared/fixtures/cross-host/README.md and
    fixtures/cross-host/avx512-l1d32k/README.md): under `portable` this host computes the same
    bits, every quantity, and the verdict says bitwise. The one exception is measured, and the
    verdict must name it: programs that sum contractions longer than 256 in slices sized by the
    L1 data cache (digits-cnn, tiny-lm) give the record's bits only on a CPU with the record's L1
    size; the shared records do not say theirs (they were made before repro read it), so there
    a run with such programs compares within tolerance and says why."""
    if not (directory / "record.json").exists():
        pytest.fail(f"the cross-host fixture is missing: {directory}")
    spec = _fixture_spec(directory)
    records = tmp_path / "records"
    shutil.copytree(directory, records / spec.name / "cpu")
    v = pipeline.verify(spec, pipeline.Options(records_root=records))
    from repro.record import read_record
    recorded_l1d = read_record(records / spec.name / "cpu").meta.fingerprint.l1d_cache
    if v.fingerprint.l1d_cache is None or v.fingerprint.l1d_cache == recorded_l1d:
        assert v.status == "pass", v.error or [r for r in v.rows if not r.ok]
        assert v.bitwise is True, v.mode_reason
        assert all(r.max_abs == 0 for r in v.rows), [r.label for r in v.rows if r.max_abs]
    else:
        assert v.status in ("pass", "fail"), v.error
        assert v.bitwise is False and "L1 data cache" in v.mode_reason, v.mode_reason
        assert "effective ISA" not in v.mode_reason and "settings" not in v.mode_reason, v.mode_reason
        numeric = [c.key for c in v.changes if c.numeric and c.what == "environment"]
        assert numeric == ["environment.l1d_cache"], numeric   # of the fingerprint: the L1 only
        assert v.status == "pass" or v.fail_class == "changed"
    assert v.fingerprint.effective_isa == "AVX2"
    assert v.fingerprint.settings["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    assert "--xla_cpu_enable_platform_dependent_math=false" in v.fingerprint.xla_flags
    assert all(k.pinned for k in v.fingerprint.kernels or ()), v.fingerprint.kernels


@needs_avx2
@pytest.mark.slow
def test_a_record_of_the_old_recipe_compares_within_tolerance_and_says_why(tmp_path):
    """The AVX2-host record was made with the ISA ceiling alone (before YNNPACK's consistent
    kernels and oneDNN's cap were part of `portable`): its settings differ from today's, so it
    is compared within tolerance, and the verdict names the settings that differ."""
    if not (AVX2_HOST / "record.json").exists():
        pytest.fail(f"the cross-host fixture is missing: {AVX2_HOST}")
    records = tmp_path / "records"
    shutil.copytree(AVX2_HOST, records / "isa-avx2" / "cpu")
    spec = pipeline.load_spec(ROOT / "specs" / "digits-mlp.yaml")
    spec = spec.model_copy(update={"name": "isa-avx2"})
    spec._path = ROOT / "specs" / "digits-mlp.yaml"
    v = pipeline.verify(spec, pipeline.Options(records_root=records))
    assert v.status == "pass", v.error or [r for r in v.rows if not r.ok]
    assert v.bitwise is False
    assert "settings ONEDNN_MAX_CPU_ISA, XLA_FLAGS" in v.mode_reason, v.mode_reason


EMULATED_EPOCHS = 2   # 44 steps of digits-mlp under qemu, not 220: the kernels are the same


def _record_here(spec, records: Path, isa: str = "portable"):
    if isa != "portable":
        spec = spec.model_copy(update={"environment": spec.environment.model_copy(update={"isa": isa})})
        spec._path = ROOT / "specs" / "digits-mlp.yaml"
    v = pipeline.record(spec, pipeline.Options(records_root=records, runs=1))
    assert v.status == "recorded", v.error
    return spec


@pytest.mark.slow
@needs_avx2
def test_a_portable_record_verifies_bitwise_on_an_emulated_haswell(tmp_path):
    """CI's cross-CPU check: recorded natively, verified under `qemu-x86_64 -cpu Haswell-noTSX`
    (AVX2+FMA, no AVX-512), bitwise, with the emulated CPU in the fingerprint."""
    _needs_qemu()
    spec = _fixture_spec(AVX512_HOST / "digits-mlp", epochs=EMULATED_EPOCHS)
    spec = _record_here(spec, tmp_path)
    v = pipeline.verify(spec, pipeline.Options(records_root=tmp_path,
                                               variation=Variation("cpu", emulate_cpu="Haswell-noTSX")))
    assert v.status == "pass", v.error or [r for r in v.rows if not r.ok]
    assert v.bitwise is True, v.mode_reason
    assert all(r.max_abs == 0 for r in v.rows)
    assert "avx512f" not in v.fingerprint.cpu_isa and "fma" in v.fingerprint.cpu_isa


@pytest.mark.slow
@needs_avx2
def test_the_projects_cnn_record_verifies_bitwise_on_an_emulated_haswell():
    """digits-cnn sums a convolution's kernel gradient over 4096 terms in L1-sized slices: its
    record (made on an AVX-512 Zen 4, L1d 32 KiB) reproduces bitwise on a CPU without AVX-512
    that has the same L1 — the emulated Haswell reports 32 KiB on every host, so this check does
    not depend on the CPU CI lands on."""
    _needs_qemu()
    v = pipeline.verify(ROOT / "specs" / "digits-cnn.yaml",
                        pipeline.Options(variation=Variation("cpu", emulate_cpu="Haswell-noTSX")))
    assert v.status == "pass", v.error or [r for r in v.rows if not r.ok]
    assert v.bitwise is True and all(r.max_abs == 0 for r in v.rows), v.mode_reason
    assert v.fingerprint.l1d_cache == 32768 and "avx512f" not in v.fingerprint.cpu_isa


@pytest.mark.slow
@needs_avx2
def test_a_native_record_names_its_unpinned_kernels_and_another_cpu_compares_within_tolerance(tmp_path):
    """`native` pins no library: the fingerprint names YNNPACK's kernels as the CPU's choice,
    counts them at the CPU's best ISA, and an emulated Haswell compares within tolerance and
    says why."""
    _needs_qemu()
    spec = _record_here(_fixture_spec(AVX512_HOST / "digits-mlp", epochs=EMULATED_EPOCHS), tmp_path, isa="native")
    from repro.record import read_record
    fp = read_record(tmp_path / spec.name / "cpu").meta.fingerprint
    loose = [k for k in fp.kernels or () if not k.pinned]
    assert any(k.library == "YNNPACK" for k in loose), fp.kernels
    assert fp.effective_isa == host_best(cpu_isa())
    v = pipeline.verify(spec, pipeline.Options(records_root=tmp_path,
                                               variation=Variation("cpu", emulate_cpu="Haswell-noTSX")))
    assert v.status == "pass", v.error or [r for r in v.rows if not r.ok]
    if host_best(cpu_isa()) != "AVX2":   # an AVX2 host and the emulated Haswell share their best
        assert v.bitwise is False
        assert f"effective ISA {fp.effective_isa} -> AVX2" in v.mode_reason, v.mode_reason
        assert "kernels the CPU chooses:" in v.mode_reason and "YNNPACK dot_general ×6 unpinned" in v.mode_reason, \
            v.mode_reason


@pytest.mark.slow
def test_a_cpu_without_fma_runs_portable_specs_within_tolerance_and_says_so(tmp_path):
    """SandyBridge has AVX but no FMA: YNNPACK has no consistent kernels for it (asking would
    abort with "No dot kernel found"), so nothing is pinned; the run finishes and says why."""
    _needs_qemu()
    spec = _record_here(_fixture_spec(AVX512_HOST / "digits-mlp", epochs=EMULATED_EPOCHS), tmp_path)
    v = pipeline.verify(spec, pipeline.Options(records_root=tmp_path,
                                               variation=Variation("cpu", emulate_cpu="SandyBridge")))
    assert v.status == "pass", v.error or [r for r in v.rows if not r.ok]
    assert v.bitwise is False
    assert any("this CPU has no avx2 or fma" in n for n in v.notes), v.notes
    assert "XLA_FLAGS" in v.mode_reason and "--xla_cpu_enable_platform_dependent_math" not in \
        v.fingerprint.xla_flags


def test_emulation_errors_say_what_to_do(tmp_path, monkeypatch):
    from repro.env import emulate
    from repro.errors import ReproError

    monkeypatch.setenv("PATH", str(tmp_path))   # a real lookup that finds nothing
    if is_x86():
        with pytest.raises(ReproError, match="apt-get install qemu-user"):
            emulate.qemu()
    monkeypatch.undo()
    if shutil.which("qemu-x86_64") and is_x86():
        with pytest.raises(ReproError, match="qemu has no CPU model 'Haswel'.*Haswell-noTSX"):
            emulate.command("Haswel")
    spec = pipeline.load_spec(ROOT / "specs" / "digits-mlp.yaml")
    v = pipeline.verify(spec, pipeline.Options(backend="docker", variation=Variation(
        "cpu", emulate_cpu="Haswell-noTSX"), records_root=tmp_path))
    assert v.status == "error" and "--emulate-cpu runs the training with the local backend only" in v.error


def test_ceilings_and_effective_isa():
    avx512 = ["sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl"]
    avx2 = ["sse4_2", "avx", "avx2", "fma"]
    old = ["sse4_2", "avx"]
    assert host_best(avx512) == "AVX512" and host_best(avx2) == "AVX2" and host_best(old) == "AVX"
    assert ceiling("portable", avx512, "x86_64") == ceiling("portable", avx2, "x86_64") == "AVX2"
    assert ceiling("portable", old, "x86_64") is None          # below the ceiling: no cap
    assert ceiling("native", avx512, "x86_64") is None
    assert ceiling("AVX", avx512, "x86_64") == "AVX"
    assert ceiling("portable", avx512, "aarch64") is None       # no ISA ceiling off x86-64
    flags = "--xla_cpu_enable_fast_math=false --xla_cpu_max_isa=AVX2"
    assert effective(flags, avx512, "x86_64") == effective(flags, avx2, "x86_64") == "AVX2"
    assert effective("", avx512, "x86_64") == "AVX512"
    assert effective(flags, old, "x86_64") == "AVX"
    assert effective(flags, [], "aarch64") == "aarch64"
    # records made before the field existed: derived from their flags and settings
    assert effective_of(Fingerprint.from_json({
        "cpu_isa": avx512, "machine": "x86_64",
        "settings": {"XLA_FLAGS": "--xla_cpu_enable_fast_math=false"}})) == "AVX512"


def test_the_recipe_follows_the_cpu_and_the_jaxlib():
    """`environment.isa` as the child resolves it (env/portable.py), for CPUs this host is not."""
    from repro.child.portable import CONSISTENT, known_flags, resolve

    knows_all = lambda name: True
    avx512 = ["sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl"]
    avx2 = ["sse4_2", "avx", "avx2", "fma"]
    no_fma = ["sse4_2", "avx"]
    for flags in (avx512, avx2):   # both kinds of host get the same recipe
        r = resolve("portable", "", flags, "x86_64", knows_all)
        assert r.xla_flags == ("--xla_cpu_max_isa=AVX2", CONSISTENT) and r.env == {"ONEDNN_MAX_CPU_ISA": "AVX2"}
    r = resolve("portable", "", no_fma, "x86_64", knows_all)
    assert r.xla_flags == () and r.env == {} and "no avx2 or fma" in r.notes[0]
    assert resolve("native", "", avx512, "x86_64", knows_all) == resolve("portable", "", avx2, "aarch64", knows_all)
    r = resolve("AVX", "", no_fma, "x86_64", knows_all)   # a cap, but no consistent YNNPACK without FMA
    assert r.xla_flags == ("--xla_cpu_max_isa=AVX",) and r.env == {"ONEDNN_MAX_CPU_ISA": "AVX"}
    assert "no FMA" in r.notes[0]
    r = resolve("portable", "--xla_cpu_max_isa=SSE4_2", avx512, "x86_64", knows_all)   # the spec's own wins
    assert r.xla_flags == (CONSISTENT,)
    r = resolve("portable", "", avx512, "x86_64", lambda name: name != "xla_cpu_enable_platform_dependent_math")
    assert r.xla_flags == ("--xla_cpu_max_isa=AVX2",) and "this jaxlib has no" in r.notes[0]
    # read from this jaxlib's own binaries: its real flags, not a made-up one
    assert known_flags(["xla_cpu_max_isa", "xla_cpu_enable_platform_dependent_math",
                        "xla_cpu_no_such_flag"]) == {"xla_cpu_max_isa": True, "xla_cpu_no_such_flag": False,
                                                     "xla_cpu_enable_platform_dependent_math": True}


def test_an_unknown_xla_flag_is_a_clear_error_not_an_abort(project):
    project.edit_spec("seeds:", "environment:\n  xla_flags: [--xla_cpu_no_such_flag=true]\nseeds:")
    project.commit("bad flag")
    v = pipeline.run(project.spec)
    assert v.status == "error"
    assert "environment.xla_flags: --xla_cpu_no_such_flag is not a flag of this jaxlib" in v.error, v.error


def test_the_kernel_inventory_reads_real_compiled_programs():
    """A training step compiled in this process: its YNNPACK fusions and the backward dot that
    Eigen runs are found, pinned only by what pins them, and a long contraction is `blocked`."""
    import jax
    import jax.numpy as jnp

    from repro.child.kernels import ProgramWatch, inventory

    watch = ProgramWatch()
    watch.start()

    def loss(w, x):
        return jnp.sum(jnp.tanh(x @ w))

    step = jax.jit(jax.value_and_grad(loss))
    step(jnp.ones((64, 32)), jnp.ones((1024, 64)))   # the weight gradient contracts over 1024
    assert watch.error is None and watch.modules
    loose = inventory(watch.modules, "", {}, 1, None)
    by_lib = {k.library for k in loose}
    assert {"YNNPACK", "Eigen"} <= by_lib, loose
    assert not any(k.pinned for k in loose if k.library in ("YNNPACK", "Eigen"))
    pinned = inventory(watch.modules, "--xla_cpu_max_isa=AVX2 --xla_cpu_enable_platform_dependent_math=false",
                       {"ONEDNN_MAX_CPU_ISA": "AVX2"}, 1, "AVX2")
    assert all(k.pinned for k in pinned), pinned
    eigen = [k for k in pinned if k.library == "Eigen"]
    assert eigen and eigen[0].op == "dot_general (backward)" and eigen[0].longest_k == 1024 and eigen[0].blocked
    assert not all(k.pinned for k in inventory(watch.modules, "--xla_cpu_enable_platform_dependent_math=false",
                                                {"ONEDNN_MAX_CPU_ISA": "AVX2"}, 2, "AVX2"))   # 2 threads


def test_the_isa_setting_is_validated():
    from repro.env.settings import determinism_settings
    from repro.errors import SpecError

    base = {"repro": 1, "code": {"commit": "a" * 40, "entrypoint": "m:f"}}
    own = parse_spec({**base, "environment": {"xla_flags": ["--xla_cpu_max_isa=AVX"]}},
                     file="t.yaml").environment
    assert determinism_settings(own)["XLA_FLAGS"].count("--xla_cpu_max_isa") == 1
    with pytest.raises(SpecError, match="is not portable, native or one of"):
        parse_spec({**base, "environment": {"isa": "avx9"}}, file="t.yaml")
