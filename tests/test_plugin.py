"""The pytest front end as users get it: `pytest specs/` in a real project, run in a fresh
pytest process (the plugin loads through its `pytest11` entry point), each item retraining the
tiny JAX workload in a real child process.

Runs cost ~3 s each, so one recorded project is built per module and copied (with its git
history and record) into every test that only needs to verify.
"""
from __future__ import annotations

import json
import shutil
import textwrap
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from repro.record import read_record
from tests.conftest import Project, git

pytest_plugins = ["pytester"]


@pytest.fixture
def recorded(recorded_template, tmp_path) -> Project:
    """A private copy of the recorded project (same commits, same record)."""
    dst = tmp_path / "proj"
    shutil.copytree(recorded_template.root, dst, symlinks=True)
    return Project(dst)


UNRELATED_PLUGINS = ("-p", "no:benchmark", "-p", "no:hypothesispytest")


def run_pytest(pytester, monkeypatch, proj: Project, *args):
    """`pytest ARGS` in a fresh process whose cwd (and so rootdir) is the project root.
    Unrelated third-party plugins are switched off: they double pytest's start-up time."""
    monkeypatch.chdir(proj.root)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *UNRELATED_PLUGINS, *args,
                                         timeout=300)


def no_traceback(out: str) -> None:
    for word in ("Traceback", "def runtest", "ReproFailure", "raise "):
        assert word not in out, f"{word!r} in the output:\n{out}"


BAD_SPEC = "repro: 1\nname: bad\ncode: [unclosed\n"
NOT_A_SPEC = "title: some other config\nitems: [1, 2]\nnested: {repro_like: true}\n"


def test_record_then_verify_markers_junit_and_bad_specs(project, pytester, monkeypatch):
    res = run_pytest(pytester, monkeypatch, project, "specs/", "--repro-record")
    out = res.stdout.str()
    assert res.ret == 0, out
    res.assert_outcomes(passed=1)
    assert "repro: recorded versions written" in out
    assert "RECORDED tiny [cpu]" in out
    rec = read_record(project.record_dir)
    assert (project.record_dir / "record.json").exists()
    assert rec.meta.spec.name == "tiny"

    # a malformed spec and a YAML file that is not a spec, next to the good one
    project.write("specs/bad.yaml", BAD_SPEC)
    project.write("specs/notes.yaml", NOT_A_SPEC)
    junit = pytester.path / "junit.xml"
    res = run_pytest(pytester, monkeypatch, project, "specs/", "-v", "-m", "repro",
                     f"--junitxml={junit}")
    out = res.stdout.str()
    assert res.ret == 1, out
    outcomes = res.parseoutcomes()
    assert outcomes.get("passed") == 1, out
    # a spec that cannot be compared is an *error* (exit 2 on the CLI), never a failure
    assert outcomes.get("errors") == 1 and not outcomes.get("failed"), out
    assert "deselected" not in out  # -m repro selects the good item and the broken one
    assert "notes.yaml" not in out  # no `repro:` key: not collected at all
    assert "specs/tiny.yaml::tiny PASSED" in out
    # the broken file is one item whose message names the file and the line
    assert "bad.yaml:4: malformed YAML" in out
    no_traceback(out)

    cases = {c.get("name"): c for c in ET.parse(junit).getroot().iter("testcase")}
    assert set(cases) == {"tiny", "bad"}
    props = {p.get("name"): p.get("value") for p in cases["tiny"].iter("property")}
    assert props["repro_status"] == "pass"
    assert props["repro_spec_hash"] and len(props["repro_spec_hash"]) >= 12
    assert props["repro_commit"] == git(project.root, "rev-parse", "HEAD~1")
    fingerprint = json.loads(props["repro_fingerprint"])
    assert isinstance(fingerprint, dict) and fingerprint
    assert props["repro_spec_hash"] == rec.meta.spec.hash

    res = run_pytest(pytester, monkeypatch, project, "specs/", "-m", "not repro")
    assert res.ret == pytest.ExitCode.NO_TESTS_COLLECTED, res.stdout.str()
    assert "2 deselected" in res.stdout.str()


@pytest.mark.slow
def test_seed_change_shows_the_table_not_a_traceback(recorded, pytester, monkeypatch):
    recorded.edit_spec("seeds: {params: 0}", "seeds: {params: 3}")
    res = run_pytest(pytester, monkeypatch, recorded, "specs/")
    out = res.stdout.str()
    assert res.ret == 1, out
    res.assert_outcomes(failed=1)
    assert "FAIL tiny [cpu]" in out
    for text in ("quantity", "first step", "max abs err", "tolerance",
                 "What changed since the record", "seeds.params: 0 -> 3", "metric loss"):
        assert text in out, text
    no_traceback(out)


@pytest.mark.slow
def test_repro_verify_fixture(recorded, pytester, monkeypatch):
    # same spec name, other seed: compared with tiny's record, so it must fail
    text = recorded.spec.read_text().replace("seeds: {params: 0}", "seeds: {params: 3}")
    recorded.write("other/tiny_seed3.yaml", text)
    recorded.write("test_api.py", textwrap.dedent('''
        def test_passes(repro_verify):
            v = repro_verify("specs/tiny.yaml")
            assert v.status == "pass" and v.bitwise is True

        def test_fails(repro_verify):
            repro_verify("other/tiny_seed3.yaml")
            raise AssertionError("repro_verify should have failed the test")
    '''))
    res = run_pytest(pytester, monkeypatch, recorded, "test_api.py", "-v")
    out = res.stdout.str()
    res.assert_outcomes(passed=1, failed=1)
    assert "test_api.py::test_passes PASSED" in out
    assert "test_api.py::test_fails FAILED" in out
    assert "should have failed" not in out
    for text in ("FAIL tiny", "quantity", "first step", "seeds.params: 0 -> 3"):
        assert text in out, text
    assert "Traceback" not in out


@pytest.mark.slow
def test_worktree_mode_runs_the_uncommitted_change(recorded, pytester, monkeypatch):
    train = recorded.root / "tinyproj" / "train.py"
    train.write_text(train.read_text().replace("LR_SCALE = 1.0", "LR_SCALE = 1.5"))
    res = run_pytest(pytester, monkeypatch, recorded, "specs/", "--repro-code=worktree")
    out = res.stdout.str()
    assert res.ret == 1, out
    res.assert_outcomes(failed=1)
    assert "code from the working tree" in out
    assert "dirty: 1 changed file(s)" in out
    assert "uncommitted changes" in out
    assert "code mode: pinned -> worktree" in out
    no_traceback(out)
    # the default (pinned) ignores the uncommitted edit
    res = run_pytest(pytester, monkeypatch, recorded, "specs/")
    assert res.ret == 0, res.stdout.str()
    res.assert_outcomes(passed=1)


def _collected(res) -> set[str]:
    return {line.strip() for line in res.stdout.lines if "::" in line}


@pytest.mark.slow
def test_ini_repro_specs_narrows_and_widens_the_glob(project, pytester, monkeypatch):
    spec_text = project.spec.read_text()
    project.write("specs/wide.spec.yml", spec_text.replace("name: tiny", "name: wide"))
    project.write("specs/extra.repro", spec_text.replace("name: tiny", "name: extra"))
    args = ("specs/", "--collect-only", "-q")

    res = run_pytest(pytester, monkeypatch, project, *args)
    assert _collected(res) == {"specs/tiny.yaml::tiny", "specs/wide.spec.yml::wide"}, res.stdout.str()

    project.write("pytest.ini", "[pytest]\nrepro_specs = *.spec.yml\n")
    res = run_pytest(pytester, monkeypatch, project, *args)
    assert _collected(res) == {"specs/wide.spec.yml::wide"}, res.stdout.str()

    project.write("pytest.ini", "[pytest]\nrepro_specs = *.yaml *.repro\n")
    res = run_pytest(pytester, monkeypatch, project, *args)
    assert _collected(res) == {"specs/tiny.yaml::tiny", "specs/extra.repro::extra"}, res.stdout.str()


@pytest.mark.slow
def test_xdist_records_and_verifies_several_specs(project, pytester, monkeypatch):
    names = ["tiny", "tiny_s1", "tiny_s2", "tiny_s3"]
    text = project.spec.read_text()
    for i, name in enumerate(names[1:], start=1):
        project.write(f"specs/{name}.yaml", text.replace("name: tiny", f"name: {name}")
                      .replace("seeds: {params: 0}", f"seeds: {{params: {i}}}"))
    res = run_pytest(pytester, monkeypatch, project, "-n", "2", "specs/", "--repro-record")
    out = res.stdout.str()
    assert res.ret == 0, out
    res.assert_outcomes(passed=4)
    assert "repro: recorded versions written" in out
    for name in names:
        assert f"RECORDED {name} [cpu]" in out

    res = run_pytest(pytester, monkeypatch, project, "-n", "2", "specs/")
    assert res.ret == 0, res.stdout.str()
    res.assert_outcomes(passed=4)

    records = {n: read_record(project.root / "fixtures" / "records" / n / "cpu") for n in names}
    assert {n: r.meta.spec.name for n, r in records.items()} == {n: n for n in names}
    kernels = [records[n].arrays["weights/hidden/w"] for n in names]
    for i in range(len(kernels)):  # every seed gave its own weights: no record overwrote another
        for j in range(i + 1, len(kernels)):
            assert not np.array_equal(kernels[i], kernels[j])
    leftovers = [p.name for n in names
                 for p in (project.root / "fixtures" / "records" / n).iterdir() if p.name != "cpu"]
    assert leftovers == []
