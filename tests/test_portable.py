"""Portable CPU numerics (`environment.isa`, docs/records.md): a record made on another host —
an AMD EPYC with AVX2 and no AVX-512 — reproduces bitwise here under the default `portable`.

The record lives beside the project, in `../shared/fixtures/cross-host/` (its README says how it
was made); it is never rewritten by this test.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from repro import pipeline
from repro.env.fingerprint import cpu_isa
from repro.env.isa import PORTABLE, XLA_ISAS, ceiling, effective, effective_of, host_best, is_x86

ROOT = Path(__file__).resolve().parents[1]
CROSS_HOST = ROOT.parent / "shared" / "fixtures" / "cross-host" / "digits-mlp-avx2-host"


def _host_reaches_avx2() -> bool:
    best = host_best(cpu_isa())
    return is_x86() and best is not None and XLA_ISAS.index(best) >= XLA_ISAS.index(PORTABLE)


@pytest.mark.skipif(not _host_reaches_avx2(), reason="this host has no AVX2: the portable "
                    "ceiling cannot be reached, a comparison with an AVX2 record is within "
                    "tolerance by design")
def test_a_record_from_an_avx2_host_reproduces_bitwise_here(tmp_path):
    if not (CROSS_HOST / "record.json").exists():
        pytest.fail(f"the cross-host fixture is missing: {CROSS_HOST}")
    records = tmp_path / "records"
    shutil.copytree(CROSS_HOST, records / "isa-avx2" / "cpu")
    spec = pipeline.load_spec(ROOT / "specs" / "digits-mlp.yaml")
    spec = spec.model_copy(update={"name": "isa-avx2"})
    spec._path = ROOT / "specs" / "digits-mlp.yaml"
    assert spec.environment.isa == "portable"
    v = pipeline.verify(spec, pipeline.Options(records_root=records))
    assert v.status == "pass", v.error or [r for r in v.rows if not r.ok]
    assert v.bitwise is True, v.mode_reason
    assert v.fingerprint["effective_isa"] == "AVX2"
    assert all(r.max_abs == 0 for r in v.rows)


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
    assert effective_of({"cpu_isa": avx512, "machine": "x86_64",
                         "settings": {"XLA_FLAGS": "--xla_cpu_enable_fast_math=false"}}) == "AVX512"


def test_the_isa_setting_reaches_xla_flags_and_is_validated():
    from repro.env.settings import determinism_settings
    from repro.errors import SpecError
    from repro.spec import parse_spec

    base = {"repro": 1, "code": {"commit": "a" * 40, "entrypoint": "m:f"}}
    native = parse_spec({**base, "environment": {"isa": "native"}}, file="t.yaml").environment
    assert "--xla_cpu_max_isa" not in determinism_settings(native)["XLA_FLAGS"]
    sse = parse_spec({**base, "environment": {"isa": "SSE4_2"}}, file="t.yaml").environment
    assert determinism_settings(sse)["XLA_FLAGS"].endswith("--xla_cpu_max_isa=SSE4_2")
    own = parse_spec({**base, "environment": {"xla_flags": ["--xla_cpu_max_isa=AVX"]}},
                     file="t.yaml").environment
    assert determinism_settings(own)["XLA_FLAGS"].count("--xla_cpu_max_isa") == 1
    with pytest.raises(SpecError, match="is not portable, native or one of"):
        parse_spec({**base, "environment": {"isa": "avx9"}}, file="t.yaml")
