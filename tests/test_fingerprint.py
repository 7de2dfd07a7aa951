"""The typed environment fingerprint (repro/env/fingerprint.py): every recorded version reads
into it and writes back to the same JSON, bytes and checksum; unknown keys survive; a wrong
type is an error naming the field; differences read as they did when fingerprints were dicts."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from repro.env.fingerprint import (
    FIELD_READERS,
    FIELDS,
    NUMERIC_FIELDS,
    Fingerprint,
    FingerprintError,
    KernelEntry,
    describe_kernel,
)
from repro.errors import RecordError
from repro.record import RecordMeta, check_record, record_checksum

ROOT = Path(__file__).resolve().parents[1]
RECORDS = sorted([*ROOT.glob("fixtures/records/**/record.json"),
                  *ROOT.glob("fixtures/cross-host/**/record.json"),
                  *(ROOT.parent / "shared").glob("fixtures/cross-host/**/record.json")])

KERNEL = {"library": "YNNPACK", "op": "dot_general", "count": 7, "pinned": True,
          "how": "consistent arithmetic"}
FP = {"python": "3.11.7", "jax": "0.10.2", "jaxlib": "0.10.2", "numpy": "2.3.5",
      "backend": "cpu", "device_kind": "cpu", "device_count": 1, "cpus": 1,
      "cpu_isa": ["avx", "avx2", "fma"], "effective_isa": "AVX2", "kernels": [KERNEL],
      "l1d_cache": None, "cpu_model": "A", "machine": "x86_64", "os": "Linux 6.8",
      "settings": {"XLA_FLAGS": "--xla_cpu_max_isa=AVX2", "jax_enable_x64": False},
      "prng_canary": "ab" * 32, "in_container": False}


def test_the_fields_and_their_readers_agree():
    names = [f.name for f in dataclasses.fields(Fingerprint)]
    assert tuple(FIELD_READERS) == FIELDS == tuple(n for n in names if n not in ("extra", "keys"))
    assert set(NUMERIC_FIELDS) <= set(FIELDS), set(NUMERIC_FIELDS) - set(FIELDS)


@pytest.mark.parametrize("path", RECORDS, ids=lambda p: str(p.relative_to(ROOT.parent)))
def test_every_record_round_trips_to_the_same_json_and_checksum(path):
    raw = path.read_text()
    doc = json.loads(raw)
    fp = Fingerprint.from_json(doc["fingerprint"])
    again = fp.to_json()
    assert again == doc["fingerprint"] and list(again) == list(doc["fingerprint"])
    assert json.dumps(again) == json.dumps(doc["fingerprint"])      # key order, nulls, types
    assert Fingerprint.from_json(again) == fp
    meta = RecordMeta.from_json(doc, path)
    assert isinstance(meta.fingerprint, Fingerprint)
    written = meta.to_json()
    assert written["fingerprint"] == doc["fingerprint"]
    if doc.get("checksum"):
        assert record_checksum(written) == doc["checksum"]
        # as write_record writes it (copies elsewhere may have lost the final newline)
        assert json.dumps(written, indent=1, sort_keys=True) == raw.rstrip("\n")
        check_record(path.parent, blobs=False)


def test_records_were_found():
    assert len([p for p in RECORDS if "fixtures/records" in str(p)]) >= 5


def test_unknown_keys_explicit_nulls_and_absent_keys_are_kept():
    doc = {"hostname": "ci-1", "backend": "cpu", "l1d_cache": None,
           "kernels": [{**KERNEL, "longest_k": 0, "vendor": "x"}], "future": {"a": [1, 2]}}
    fp = Fingerprint.from_json(doc)
    assert fp.to_json() == doc and list(fp.to_json()) == list(doc)
    assert fp.extra == {"hostname": "ci-1", "future": {"a": [1, 2]}}
    assert fp.kernels is not None and fp.kernels[0].extra == {"vendor": "x"}
    assert fp.jax is None and "jax" not in fp.to_json()
    # keys are how it was written, not what it says: equal to one read in another order
    assert Fingerprint.from_json(dict(reversed(list(doc.items())))) == fp
    # a field set later is written too
    assert dataclasses.replace(fp, cpus=2).to_json() == {**doc, "cpus": 2}


def test_built_in_code_it_writes_the_fields_that_are_set():
    assert Fingerprint().to_json() == {}
    entry = KernelEntry("Eigen", "dot_general", 2, True, "pinned", longest_k=1024, blocked=True)
    fp = Fingerprint(backend="cpu", cpus=1, kernels=(entry, KernelEntry(**KERNEL)))
    assert fp.to_json() == {"backend": "cpu", "cpus": 1, "kernels": [
        {"library": "Eigen", "op": "dot_general", "count": 2, "pinned": True, "how": "pinned",
         "longest_k": 1024, "blocked": True}, KERNEL]}


@pytest.mark.parametrize("doc, named", [
    ({"cpus": "1"}, "fingerprint.cpus"),
    ({"cpus": True}, "fingerprint.cpus"),
    ({"backend": 3}, "fingerprint.backend"),
    ({"cpu_isa": "avx2"}, "fingerprint.cpu_isa"),
    ({"cpu_isa": ["avx2", 1]}, "fingerprint.cpu_isa[1]"),
    ({"settings": {"XLA_FLAGS": ["x"]}}, "fingerprint.settings.XLA_FLAGS"),
    ({"kernels": [{**KERNEL, "pinned": "yes"}]}, "fingerprint.kernels[0].pinned"),
    ({"kernels": [{"library": "YNNPACK"}]}, "fingerprint.kernels[0]"),
    ({"in_container": 1}, "fingerprint.in_container"),
])
def test_a_wrong_type_is_an_error_naming_the_field(doc, named):
    with pytest.raises(FingerprintError, match=named.replace("[", r"\[").replace("]", r"\]")):
        Fingerprint.from_json(doc)


def test_a_record_with_a_forged_fingerprint_is_corrupted_naming_the_field(tmp_path):
    with pytest.raises(RecordError, match=r"fingerprint.*fingerprint\.device_count"):
        RecordMeta.from_json({**json.loads(RECORDS[0].read_text()),
                              "fingerprint": {"device_count": "many"}}, tmp_path / "record.json")


def changes(a: dict, b: dict) -> list:
    return Fingerprint.from_json(a).changes(Fingerprint.from_json(b))


def test_changes_of_a_numeric_field_a_setting_and_the_kernel_list():
    assert changes(FP, FP) == []
    assert changes(FP, {**FP, "cpus": 2}) == [("cpus", 1, 2, True)]
    assert changes(FP, {**FP, "settings": {**FP["settings"], "XLA_FLAGS": ""}}) == [
        ("settings.XLA_FLAGS", "--xla_cpu_max_isa=AVX2", "", True)]
    assert changes(FP, {**FP, "settings": {**FP["settings"], "ONEDNN_MAX_CPU_ISA": "AVX2"}}) == [
        ("settings.ONEDNN_MAX_CPU_ISA", None, "AVX2", True)]
    blocked = {**KERNEL, "pinned": False, "longest_k": 1536, "blocked": True}
    assert changes(FP, {**FP, "kernels": [blocked]}) == [
        ("kernels", ["YNNPACK dot_general ×7 pinned"],
         ["YNNPACK dot_general ×7 unpinned, contractions up to 1536"], False)]
    assert changes({**FP, "kernels": None}, FP) == [
        ("kernels", None, ["YNNPACK dot_general ×7 pinned"], False)]
    # lists as JSON has them (a verdict shows a changed cpu_isa as lost and gained)
    assert changes(FP, {**FP, "cpu_isa": ["avx"]}) == [
        ("cpu_isa", ["avx", "avx2", "fma"], ["avx"], False)]
    # absent and null are the same fact; an unknown key that differs is informational
    assert changes(FP, {**FP, "kernels_error": None}) == []
    assert changes({**FP, "hostname": "a"}, FP) == [("hostname", "a", None, False)]


def test_describe_kernel():
    assert describe_kernel(KernelEntry.from_json(KERNEL)) == "YNNPACK dot_general ×7 pinned"
    assert describe_kernel(KernelEntry.from_json({**KERNEL, "longest_k": 300, "blocked": True})) \
        == "YNNPACK dot_general ×7 pinned, contractions up to 300"


def run_dir(tmp_path: Path, fingerprint: object) -> Path:
    """An out/ directory as a run leaves it, with `fingerprint` in its run.json."""
    import numpy as np

    (tmp_path / "run.json").write_text(json.dumps({"status": "ok", "fingerprint": fingerprint}))
    np.savez(tmp_path / "arrays.npz", **{"weights/w": np.zeros(2)})
    return tmp_path


def test_run_json_reads_into_the_typed_fingerprint(tmp_path):
    from repro.backends.base import ChildOutcome
    from repro.result import collect

    result = collect(run_dir(tmp_path, FP), ChildOutcome(0), timeout=10, platform=None)
    assert result.fingerprint == Fingerprint.from_json(FP) and result.platform_key == "cpu"
    assert result.fingerprint.to_json() == FP


@pytest.mark.parametrize("fingerprint, named", [
    ({"backend": "cpu", "cpus": "two"}, "fingerprint.cpus"),
    ({"backend": "cpu", "kernels": [{**KERNEL, "count": None}]}, "fingerprint.kernels[0].count"),
    (["backend", "cpu"], "fingerprint is"),
])
def test_a_forged_run_json_fingerprint_is_an_error_naming_the_field(tmp_path, fingerprint, named):
    from repro.backends.base import ChildOutcome
    from repro.errors import RunError
    from repro.result import collect

    with pytest.raises(RunError, match="malformed at fingerprint") as caught:
        collect(run_dir(tmp_path, fingerprint), ChildOutcome(0), timeout=10, platform=None)
    assert named in str(caught.value), caught.value
