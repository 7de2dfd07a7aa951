"""`repro audit` on real specs: exit code, JSON, JUnit and HTML agree on which spec failed; a
broken spec is an error while the others still pass; Ctrl-C leaves no child behind and a partial
report; the compilation cache changes no recorded bit."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from repro import pipeline
from tests.conftest import alive, runner_children


def _add_spec(project, name: str, seed: int) -> Path:
    text = project.spec.read_text().replace("name: tiny", f"name: {name}").replace(
        "seeds: {params: 0}", f"seeds: {{params: {seed}}}")
    return project.write(f"specs/{name}.yaml", text)


@pytest.fixture
def audited(project):
    """Three recorded specs (tiny, tiny-b, tiny-c) in a real repo."""
    _add_spec(project, "tiny-b", 1)
    _add_spec(project, "tiny-c", 2)
    project.commit("more specs")
    project.repro("record", "specs", check_rc=0)
    return project


@pytest.mark.slow
def test_one_perturbed_spec_is_the_one_fail_everywhere(audited, tmp_path):
    spec_b = audited.root / "specs" / "tiny-b.yaml"
    spec_b.write_text(spec_b.read_text().replace("seeds: {params: 1}", "seeds: {params: 7}"))
    out = tmp_path / "out"
    out.mkdir()
    proc = audited.repro("audit", "specs", "-j", "2", "--json", str(out / "a.json"), "--junit",
                         str(out / "a.xml"), "--report", str(out / "a.html"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "1/3" in proc.stdout and "3/3" in proc.stdout  # progress as each spec finishes
    assert "2 pass, 1 fail, 0 error" in proc.stdout

    doc = json.loads((out / "a.json").read_text())
    status = {r["name"]: r["status"] for r in doc["results"]}
    assert status == {"tiny": "pass", "tiny-b": "fail", "tiny-c": "pass"}
    assert doc["exit_code"] == 1 and doc["complete"] is True
    assert doc["summary"] == {"pass": 2, "fail": 1, "error": 0}
    bad = next(r for r in doc["results"] if r["name"] == "tiny-b")
    assert bad["first_divergence"]["quantity"] == "metric loss"
    assert bad["first_divergence"]["step"] == 0
    assert any(c["key"] == "seeds.params" and c["recorded"] == 1 and c["current"] == 7
               for c in bad["changes"])
    assert len(bad["curves"]["loss"]["recorded"]) == 12
    for key in ("machine", "started", "repro_version"):
        assert doc[key]
    assert bad["pins"]["commit"] and bad["fingerprint"]["jax"]

    suite = ET.parse(out / "a.xml").getroot().find("testsuite")
    assert suite.get("tests") == "3" and suite.get("failures") == "1"
    failed = [c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None]
    assert failed == ["tiny-b"]
    failure = next(c for c in suite.iter("testcase") if c.get("name") == "tiny-b").find("failure")
    assert "first step" in failure.text and "seeds.params: 1 -> 7" in failure.text

    html = (out / "a.html").read_text()
    section = html[html.index("tiny-b"):]
    assert "fail" in section.lower() and "<svg" in section


@pytest.mark.slow
def test_a_broken_spec_is_an_error_and_the_others_still_pass(audited, tmp_path):
    audited.write("specs/broken.yaml", "repro: 1\ncode:\n  commit: 3f2a1c9\n  entrypoint: x:y\n")
    proc = audited.repro("audit", "specs", "--json", str(tmp_path / "a.json"))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    doc = json.loads((tmp_path / "a.json").read_text())
    status = {r["name"]: r["status"] for r in doc["results"]}
    assert status == {"broken": "error", "tiny": "pass", "tiny-b": "pass", "tiny-c": "pass"}
    broken = next(r for r in doc["results"] if r["name"] == "broken")
    assert "code.commit" in broken["error"] and "40-hex" in broken["error"]


@pytest.mark.slow
def test_interrupt_kills_every_child_and_writes_a_partial_report(audited, tmp_path):
    train = audited.root / "tinyproj" / "train.py"
    train.write_text(train.read_text().replace("    return params",
                                               "    import time\n    time.sleep(120)\n    return params"))
    commit = audited.commit("slow")
    for spec in (audited.root / "specs").glob("*.yaml"):
        text = spec.read_text()
        import re
        spec.write_text(re.sub(r"commit: [0-9a-f]{40}", f"commit: {commit}", text))
    report = tmp_path / "partial.html"
    proc = subprocess.Popen([sys.executable, "-m", "repro.cli", "audit", "specs", "-j", "2",
                             "--json", str(tmp_path / "a.json"), "--report", str(report)],
                            cwd=audited.root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    deadline = time.time() + 60
    while time.time() < deadline and len(runner_children(proc.pid)) < 2:
        time.sleep(0.2)
    children = runner_children(proc.pid)
    assert len(children) == 2, "two children should be running"
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert "INCOMPLETE" in out
    time.sleep(0.5)
    assert alive(children) == []
    doc = json.loads((tmp_path / "a.json").read_text())
    assert doc["complete"] is False
    assert all(r["status"] == "error" and "interrupted" in r["error"] for r in doc["results"]), \
        [(r["status"], r.get("error")) for r in doc["results"]]   # what it was, if it flakes
    assert report.exists() and "incomplete" in report.read_text().lower()


@pytest.mark.slow
def test_compilation_cache_changes_no_recorded_bit(project, tmp_path, monkeypatch):
    monkeypatch.setenv("REPRO_CACHE_DIR", str(tmp_path / "fresh-cache"))
    assert pipeline.record(project.spec, pipeline.Options(compile_cache=False)).status == "recorded"
    cache = tmp_path / "fresh-cache" / "jax-compile"
    assert not cache.exists()
    cold = pipeline.verify(project.spec)           # fills the cache
    assert cache.exists() and any(cache.iterdir())
    entries = sorted(p.name for p in cache.iterdir())
    warm = pipeline.verify(project.spec)           # reads it
    assert sorted(p.name for p in cache.iterdir()) == entries  # nothing new compiled
    for v in (cold, warm):
        assert v.status == "pass" and v.bitwise
        assert all(r.max_abs == 0 for r in v.rows)
    assert not any(c.what == "environment" and c.numeric for c in warm.changes)


def test_bad_audit_arguments_are_clear_errors(project, tmp_path):
    proc = project.repro("audit", "specs", "-j", "0", check_rc=2)
    assert "-j/--jobs: must be greater than 0, got 0" in proc.stderr
    proc = project.repro("verify", "specs", "--timeout", "-5", check_rc=2)
    assert "--timeout: must be greater than 0" in proc.stderr
    proc = project.repro("audit", str(tmp_path / "missing"), check_rc=2)
    assert "is not a directory" in proc.stderr
    (tmp_path / "empty").mkdir()
    proc = project.repro("audit", str(tmp_path / "empty"), check_rc=2)
    assert "no spec files" in proc.stderr
