"""Attacks from hostile training code and hostile files, performed for real (issue 14).

Each test does what an attacker would — code in the sandbox that writes its own result files,
links, a record.json edited to point elsewhere — and asserts the harness refuses with a clear
error and touches nothing outside its own directories.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from repro import pipeline
from repro.record import record_checksum
from tests.conftest import train_does

DOCKER = pipeline.Options(backend="docker")

# Training code that writes its own run.json claiming a host path as its jax backend, then
# exits before the runner can write the real one. RUN is where the run's result goes.
FORGED_RESULT = '''
    import json as _j, os as _o, sys as _s
    _out = _s.argv[2]
    with open(_o.path.join(_out, "run.json"), "w") as _f:
        _j.dump({{"status": "ok", "metrics": {{}}, "grad_steps": [], "timings": {{}},
                 "fingerprint": {{"backend": {target!r}}}}}, _f)
    import numpy as _np
    _np.savez(_o.path.join(_out, "arrays.npz"), **{{"weights/w": _np.zeros(2)}})
    _o._exit(0)
'''


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    return victim


def _assert_untouched(victim: Path) -> None:
    assert sorted(p.name for p in victim.iterdir()) == ["precious.txt"]
    assert (victim / "precious.txt").read_text() == "keep me"
    assert not list(victim.parent.glob(".victim.*")), "a staging or old dir was left beside it"


@pytest.mark.parametrize("backend", ["local", "docker"])
def test_forged_backend_in_run_json_never_becomes_a_record_path(project, tmp_path, backend,
                                                                request):
    """Critical (issue 14.1): a run that reports `"backend": "/host/dir"` used to make
    `repro record` swap its record into that host path and delete what was there."""
    if backend == "docker":
        project = request.getfixturevalue("dproject")
    victim = _victim(tmp_path)
    train_does(project, FORGED_RESULT.format(target=str(victim)))
    v = pipeline.record(project.spec, pipeline.Options(backend=backend))
    assert v.status == "error", v.record_path
    assert "jax backend" in v.error and "platform" in v.error, v.error
    _assert_untouched(victim)
    records = project.root / "fixtures" / "records"
    assert not records.exists() or not any(records.rglob("record.json"))


def test_forged_relative_backend_cannot_climb_out_of_the_records_root(project, tmp_path):
    (project.root.parent / "outside").mkdir()
    victim = _victim(project.root.parent / "outside")  # ../../.. from records/<name>/
    rel = os.path.relpath(victim, project.root / "fixtures" / "records" / "tiny")
    train_does(project, FORGED_RESULT.format(target=rel))
    v = pipeline.record(project.spec)
    assert v.status == "error" and "jax backend" in v.error
    _assert_untouched(victim)


def test_platform_key_from_the_command_line_is_one_path_component(project, tmp_path):
    victim = _victim(tmp_path)
    proc = project.repro("record", "specs/tiny.yaml", "--platform", str(victim))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "platform key" in proc.stdout and "cannot name a record directory" in proc.stdout
    _assert_untouched(victim)


def test_run_json_linked_to_a_host_file_is_not_read(dproject, tmp_path):
    """A link the sandbox leaves in its output dir points at a host path: the parent must not
    follow it (it would read, and show, a host file the container cannot see)."""
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"status": "ok", "fingerprint": {"backend": "cpu"},
                                  "metrics": {}, "note": "host-only-secret"}))
    train_does(dproject, f'''
    import os as _o, sys as _s
    _o.symlink({str(secret)!r}, _o.path.join(_s.argv[2], "run.json"))
    _o._exit(0)
''')
    v = pipeline.record(dproject.spec, DOCKER)
    assert v.status == "error"
    assert "before writing its result" in v.error
    assert "host-only-secret" not in v.error + v.error_detail
    assert secret.read_text().count("host-only-secret") == 1


def test_record_json_arrays_file_outside_the_record_is_refused(recorded_template, tmp_path):
    """record.json's arrays.file used to be joined to the record dir unchecked
    (`../../../x.npz`, an absolute path): now anything but arrays.npz is damage."""
    import shutil

    project = tmp_path / "p"
    shutil.copytree(recorded_template.root, project, symlinks=True)
    meta_path = project / "fixtures" / "records" / "tiny" / "cpu" / "record.json"
    outside = tmp_path / "elsewhere.npz"
    shutil.copy(meta_path.with_name("arrays.npz"), outside)
    meta = json.loads(meta_path.read_text())
    meta["arrays"]["file"] = str(outside)
    meta["checksum"] = record_checksum(meta)   # an attacker can recompute it: not the defence
    meta_path.write_text(json.dumps(meta))
    v = pipeline.verify(project / "specs" / "tiny.yaml")
    assert v.status == "error"
    assert "arrays.file" in v.error and str(meta_path) in v.error


def test_record_arrays_npz_that_is_a_link_is_refused(recorded_template, tmp_path):
    import shutil

    project = tmp_path / "p"
    shutil.copytree(recorded_template.root, project, symlinks=True)
    arrays = project / "fixtures" / "records" / "tiny" / "cpu" / "arrays.npz"
    target = tmp_path / "real.npz"
    shutil.move(arrays, target)
    arrays.symlink_to(target)
    v = pipeline.verify(project / "specs" / "tiny.yaml")
    assert v.status == "error"
    assert "symbolic link" in v.error and "arrays.npz" in v.error
