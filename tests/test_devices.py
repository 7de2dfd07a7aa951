"""A spec that needs a GPU, on a host that shows none: every front end says SKIPPED (exit 0),
names what is missing, and runs nothing — so `repro verify specs/` and `pytest specs/` on a CPU
host check the CPU specs beside the project's GPU ones. The GPU is hidden for real
(CUDA_VISIBLE_DEVICES=""), so this holds on GPU hosts too.
"""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from repro.commands.check import check
from repro.env.devices import gpu_visible
from repro.verdict import Status
from tests.conftest import Project

pytest_plugins = ["pytester"]


@pytest.fixture
def gpu_project(project: Project, monkeypatch) -> Project:
    """The tiny project with a second spec, the same run asking for a GPU."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    text = project.spec.read_text().replace("name: tiny\n", "name: tiny-gpu\n")
    project.write("specs/tiny-gpu.yaml", text + "environment: {platform: gpu}\n")
    project.commit("a GPU spec")
    return project


def test_no_gpu_is_skipped_with_the_reason_by_the_library_cli_and_audit(gpu_project):
    assert not gpu_visible()
    v = check(gpu_project.root / "specs" / "tiny-gpu.yaml")
    assert v.status == Status.SKIPPED and v.exit_code == 0 and v.ok
    assert "needs a GPU (environment.platform: gpu)" in v.error and "CUDA_VISIBLE_DEVICES" in v.error
    # recording the folder records the CPU spec and skips the GPU one; verify then passes
    rec = gpu_project.repro("record", "specs/", check_rc=0)
    assert "RECORDED tiny [cpu]" in rec.stdout and "SKIP tiny-gpu — spec 'tiny-gpu' needs a GPU" in rec.stdout
    assert not (gpu_project.root / "fixtures" / "records" / "tiny-gpu").exists()
    out = gpu_project.repro("verify", "specs/", check_rc=0).stdout
    assert "PASS tiny [cpu]" in out and "SKIP tiny-gpu" in out
    # the audit counts it apart, and its JSON and JUnit say skipped
    audit = gpu_project.repro("audit", "specs/", "--json", "a.json", "--junit", "a.xml", check_rc=0)
    assert "1 pass, 0 fail, 0 error, 1 skipped" in audit.stdout
    statuses = {r["name"]: r["status"] for r in json.loads((gpu_project.root / "a.json").read_text())["results"]}
    assert statuses == {"tiny": "pass", "tiny-gpu": "skipped"}
    suite = ET.parse(gpu_project.root / "a.xml").getroot().find("testsuite")
    assert suite is not None and suite.get("skipped") == "1" and suite.get("errors") == "0"
    case = next(c for c in suite.iter("testcase") if c.get("name") == "tiny-gpu")
    assert "needs a GPU" in (case.find("skipped").get("message") or "")


def test_pytest_skips_a_gpu_spec_and_says_why(gpu_project, pytester, monkeypatch):
    gpu_project.repro("record", "specs/tiny.yaml", check_rc=0)
    monkeypatch.chdir(gpu_project.root)
    res = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:benchmark",
                                        "-p", "no:hypothesispytest", "specs/", "-rs", timeout=300)
    out = res.stdout.str()
    res.assert_outcomes(passed=1, skipped=1)
    assert "spec 'tiny-gpu' needs a GPU (environment.platform: gpu), but this host shows no GPU" in out


@pytest.mark.parametrize("name", ["digits-mlp-gpu", "digits-cnn-gpu"])
def test_the_committed_gpu_records_are_whole_and_were_made_with_deterministic_ops(name):
    """The project's GPU records (made on an H200, docs/gpu.md) read back whole on any host,
    belong to their spec as it is now, and were made on a GPU with repro's GPU settings."""
    from pathlib import Path

    from repro.record import check_record, read_record
    from repro.spec import load_spec

    root = Path(__file__).resolve().parents[1]
    spec = load_spec(root / "specs" / f"{name}.yaml")
    directory, meta = check_record(root / "fixtures" / "records" / name / "gpu")
    rec = read_record(directory)
    assert meta.spec.hash == spec.hash and meta.platform == "gpu"
    fp = rec.fingerprint
    assert fp["backend"] == "gpu" and fp["device_kind"].startswith("NVIDIA")
    assert "--xla_gpu_deterministic_ops=true" in fp["settings"]["XLA_FLAGS"]
    assert meta.noise is not None and meta.noise.runs == 2 and not meta.noise.spread
    assert rec.metrics["loss"]["values"] and any(k.startswith("weights/") for k in rec.arrays)
