"""Attacks from hostile training code and hostile files, performed for real (issue 14).

Each test does what an attacker would — code in the sandbox that writes its own result files,
links, a record.json edited to point elsewhere — and asserts the harness refuses with a clear
error and touches nothing outside its own directories.
"""
from __future__ import annotations

import json
import os
import re
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


@pytest.mark.slow
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


@pytest.mark.slow
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


# -- 14.2: the docker compilation cache --------------------------------------------------------
def _cache_files(directory: Path) -> dict[str, str]:
    import hashlib
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def test_a_sandboxed_run_cannot_poison_another_specs_compile_cache(project, cpu_image, tmp_path,
                                                                    monkeypatch):
    """Spec `victim` fills its cache; spec `attacker` then overwrites every cache entry it can
    see and plants entries named like the victim's. The victim's cache is unchanged and its
    verify still passes bitwise (it failed 5 of 5 before: one cache was shared, writable)."""
    import shutil
    import uuid

    from dockerutil import pin_image

    monkeypatch.setenv("REPRO_CACHE_DIR", str(tmp_path / "cache"))
    victim_name = f"dk-victim-{uuid.uuid4().hex[:6]}"
    project.edit_spec("name: tiny", f"name: {victim_name}")
    pin_image(project, f"repro-jax-cpu@{cpu_image}")
    assert pipeline.record(project.spec, DOCKER).status == "recorded"
    caches = tmp_path / "cache" / "jax-compile-docker"
    (victim_dir,) = [d for d in caches.glob("*/*") if d.is_dir()]
    before = _cache_files(victim_dir)
    assert before, "the victim's run compiled nothing into its cache"

    attacker = tmp_path / "attacker"
    shutil.copytree(project.root, attacker)
    from tests.conftest import Project
    evil = Project(attacker)
    evil.edit_spec(f"name: {victim_name}", f"name: dk-attacker-{uuid.uuid4().hex[:6]}")
    names = sorted(before)
    train_does(evil, f'''
    import os as _o
    _written = []
    for _root in ("/cache/jax", _o.environ.get("JAX_COMPILATION_CACHE_DIR", "/tmp")):
        for _n in {names!r} + ["planted-entry"]:
            try:
                with open(_o.path.join(_root, _n), "wb") as _f:
                    _f.write(b"poison")
                _written.append(_root + "/" + _n)
            except OSError:
                pass
    print("WROTE", _written, flush=True)
''')
    v = pipeline.run(evil.spec, DOCKER)
    assert v.status == "ran", v.error
    assert _cache_files(victim_dir) == before          # nothing of the victim's changed
    for d in caches.glob("*/*"):                       # and nothing planted was merged over
        for name, digest in _cache_files(d).items():
            if name in before:
                assert digest == before[name] or d != victim_dir
    again = pipeline.verify(project.spec, DOCKER)
    assert again.status == "pass" and again.bitwise, again.error or again.rows


# -- 14.4: the entrypoint resolves inside the pinned tree ---------------------------------------
@pytest.mark.parametrize("entrypoint", ["operator:truth", "os:system", "yaml:safe_load"])
def test_an_entrypoint_outside_the_pinned_tree_is_refused(project, entrypoint):
    project.edit_spec("entrypoint: tinyproj.train:train", f"entrypoint: {entrypoint}")
    for action in (pipeline.record, pipeline.run):
        v = action(project.spec)
        assert v.status == "error", v.status
        assert "outside the pinned code tree" in v.error and entrypoint in v.error, v.error
    assert not project.record_dir.exists()


# -- 14.6: internal crashes are errors, not mismatches -----------------------------------------
def _copy(template, tmp_path):
    import shutil

    from tests.conftest import Project
    shutil.copytree(template.root, tmp_path / "p", symlinks=True)
    return Project(tmp_path / "p")


@pytest.mark.slow
def test_record_json_of_the_wrong_shape_is_exit_2_and_the_audit_still_reports(recorded_template,
                                                                               tmp_path):
    p = _copy(recorded_template, tmp_path)
    meta_path = p.record_dir / "record.json"
    meta = json.loads(meta_path.read_text())
    meta["metrics"] = None
    meta["checksum"] = record_checksum(meta)
    meta_path.write_text(json.dumps(meta))
    proc = p.repro("verify", "specs/tiny.yaml")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "record.json is corrupted: metrics" in proc.stdout and "Traceback" not in proc.stderr
    # a second, healthy spec in the same audit keeps its result; every report is written
    text = p.spec.read_text().replace("name: tiny", "name: tiny2")
    (p.root / "specs" / "tiny2.yaml").write_text(text)
    import shutil
    shutil.copytree(p.record_dir.parent, p.root / "fixtures" / "records" / "tiny2")
    rec2 = p.root / "fixtures" / "records" / "tiny2" / "cpu" / "record.json"
    good = json.loads((tmp_path / "p" / "fixtures" / "records" / "tiny2" / "cpu" /
                       "record.json").read_text())
    good["metrics"] = json.loads((recorded_template.record_dir / "record.json").read_text())[
        "metrics"]
    good["spec"]["name"] = "tiny2"
    good["checksum"] = record_checksum(good)
    rec2.write_text(json.dumps(good))
    proc = p.repro("audit", "specs", "--json", "a.json", "--junit", "a.xml")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    doc = json.loads((p.root / "a.json").read_text())
    status = {r["name"]: r["status"] for r in doc["results"]}
    assert status == {"tiny": "error", "tiny2": "pass"}, doc
    assert (p.root / "a.xml").exists()


@pytest.mark.slow
def test_an_unwritable_record_directory_is_exit_2(project, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the records root should be")
    proc = project.repro("record", "specs/tiny.yaml", "--records", str(blocker / "records"))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "cannot write the record at" in proc.stdout and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_two_concurrent_records_of_one_spec_both_finish(project):
    import subprocess
    import sys
    procs = [subprocess.Popen([sys.executable, "-m", "repro.cli", "record", "specs/tiny.yaml"],
                              cwd=project.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    from repro.record import read_record
    read_record(project.record_dir)
    assert sorted(x.name for x in project.record_dir.parent.iterdir()) == ["cpu"]
    project.repro("verify", "specs/tiny.yaml", check_rc=0)


def test_a_closed_pipe_is_not_a_mismatch(recorded_template, tmp_path):
    """`repro verify … | head -1`: the shell's SIGPIPE status, no traceback."""
    import subprocess
    import sys
    p = _copy(recorded_template, tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "repro.cli", "verify", "specs/tiny.yaml"],
                            cwd=p.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()   # the reader is gone before anything is printed
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert "Traceback" not in err and "BrokenPipeError" not in err


# -- 14.8: nothing a run started survives it ----------------------------------------------------
# Each test's sleepers sleep for its own number of seconds, so a test beside it (pytest -n 2)
# that spawns sleepers too is never mistaken for a leak (issue 25, item 11).
SPAWNS = '''
    import subprocess as _sp, os as _o
    _sp.Popen(["sleep", "{0}"])                              # a plain child
    _sp.Popen(["sleep", "{1}"], start_new_session=True)      # a daemon in a session of its own
    if _o.fork() == 0:                                       # a double fork, re-parented
        _o.setsid()
        _sp.Popen(["sleep", "{2}"])
        _o._exit(0)
'''


def _spawns(base: int) -> str:
    return SPAWNS.format(base, base + 1, base + 2)


# per test process: sleepers an earlier, killed run of the suite left can never match
_BASE = 300_000 + (os.getpid() % 10_000) * 10


def _sleepers(base: int) -> list[int]:
    from repro.proctree import _parents
    out = []
    mine = [[str(base + i).encode()] for i in range(3)]
    for pid in _parents():
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd[:1] == [b"sleep"] and cmd[1:2] in mine:
            out.append(pid)
    return out


def test_processes_the_training_starts_do_not_outlive_a_successful_run(project):
    assert not _sleepers(_BASE), "sleepers of this test left by an earlier run of it"
    train_does(project, _spawns(_BASE))
    v = pipeline.run(project.spec)
    assert v.status == "ran", v.error
    assert not _sleepers(_BASE)
    assert any("the training left 3 process(es) running; repro killed them" in n
               for n in v.notes), v.notes


@pytest.mark.slow
def test_sigterm_to_repro_verify_leaves_no_process_and_no_run_dir(project, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import runner_children
    train_does(project, _spawns(_BASE + 5) + "    import time as _t\n    _t.sleep(60)\n")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "repro.cli", "run", "specs/tiny.yaml"],
                            cwd=project.root, env={**os.environ, "TMPDIR": str(tmp)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and len(_sleepers(_BASE + 5)) < 3:
        time.sleep(0.1)
    assert len(_sleepers(_BASE + 5)) == 3 and runner_children(proc.pid)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    time.sleep(0.3)
    assert not _sleepers(_BASE + 5) and not runner_children(proc.pid)
    assert not list(tmp.iterdir()), "the run directory was left behind"


def test_a_sigkilled_docker_verify_leaves_a_container_the_next_run_removes(dproject):
    import signal
    import subprocess
    import sys
    import time

    from dockerutil import repro_containers
    train_does(dproject, "    import time as _t\n    _t.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-m", "repro.cli", "run", "specs/tiny.yaml",
                             "--backend", "docker"], cwd=dproject.root,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 90
    while time.time() < deadline and not repro_containers(dproject.name):
        time.sleep(0.2)
    assert repro_containers(dproject.name), "the container never started"
    time.sleep(2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 30   # its stdin closed: the runner exits, the container stops
    while time.time() < deadline and subprocess.run(
            ["docker", "ps", "-q", "--filter", f"label=repro.spec={dproject.name}"],
            capture_output=True, text=True).stdout.strip():
        time.sleep(0.5)
    left = repro_containers(dproject.name)
    assert left, "expected the stopped container of the killed process"
    import repro.docker.backend as backend
    from repro.docker.backend import _remove_stale_containers
    from repro.docker.client import connect
    backend._CLEANED = False
    assert _remove_stale_containers(connect()) >= 1
    assert not repro_containers(dproject.name)


# -- 14.9: bounded, honest output ---------------------------------------------------------------
def test_a_huge_line_without_newline_is_cut_in_the_verdict(project):
    train_does(project, '''
    import sys as _s
    _s.stdout.write("x" * (100 << 20))
    _s.stdout.flush()
    import os as _o
    _o._exit(7)
''')
    v = pipeline.run(project.spec)
    assert v.status == "error" and "exited with code 7" in v.error
    assert len(v.error_detail) < 10_000 and "line cut" in v.error_detail


def test_a_run_that_printed_nothing_says_so(project):
    train_does(project, "    import os as _o\n    _o._exit(9)\n")
    v = pipeline.run(project.spec)
    assert v.status == "error"
    assert "exited with code 9 before writing its result; it printed nothing" in v.error


def test_a_hand_edited_record_json_is_an_integrity_error(recorded_template, tmp_path):
    p = _copy(recorded_template, tmp_path)
    meta_path = p.record_dir / "record.json"
    meta = json.loads(meta_path.read_text())
    meta["metrics"]["loss"]["values"][3] += 1e-3
    meta_path.write_text(json.dumps(meta))
    v = pipeline.verify(p.spec)
    assert v.status == "error"
    assert str(meta_path) in v.error and "changed after it was recorded" in v.error


@pytest.mark.parametrize("returned, named", [
    ('{"w": jnp.zeros(2), "name": "mlp"}', "leaf 'name' is a str"),
    ('{"w": jnp.zeros(2), "act": lambda x: x}', "leaf 'act' is a function"),
    ('{"a/b": jnp.zeros(1), "a": {"b": jnp.ones(1)}}', "two pytree leaves share the path 'a/b'"),
])
def test_a_returned_leaf_that_is_not_an_array_is_named(project, returned, named):
    train = project.root / "tinyproj" / "train.py"
    train.write_text(train.read_text().replace("    return params", f"    return {returned}"))
    project.commit("odd return")
    project.repro("pin", str(project.spec), check_rc=0)
    v = pipeline.record(project.spec)
    assert v.status == "error"
    assert named in v.error and "bug in repro" not in v.error, v.error


# -- 14.10: a record with nothing to compare ---------------------------------------------------
def test_a_record_with_nothing_to_compare_is_refused(project):
    train = project.root / "tinyproj" / "train.py"
    train.write_text("def train(ctx):\n    return {}\n")
    project.commit("vacuous")
    project.repro("pin", str(project.spec), check_rc=0)
    project.edit_spec("record:\n  metrics: [loss]\n  grads: {every: 4}\n", "record:\n  metrics: []\n")
    v = pipeline.record(project.spec)
    assert v.status == "error" and "nothing to compare" in v.error, v.error
    assert not project.record_dir.exists()


# -- 14.3: the exported tree of the pinned commit ------------------------------------------------
@pytest.mark.slow
def test_code_that_rewrites_its_exported_tree_is_caught_and_reexported(project):
    """Training code (root, local backend) rewrites its own pinned tree in repro's cache —
    even restoring the file's mtime. The next run notices, re-exports from git, says so, and
    runs the real commit's code: the record still verifies bitwise."""
    assert pipeline.record(project.spec).status == "recorded"
    train_does(project, '''
    import os as _o, sys as _s
    _me = _o.path.join(_s.path[0], "tinyproj", "train.py")
    _st = _o.stat(_me)
    _o.chmod(_me, 0o644)
    with open(_me) as _f:
        _src = _f.read()
    with open(_me, "w") as _f:
        _f.write(_src.replace("LR_SCALE = 1.0", "LR_SCALE = 1.5"))
    _o.chmod(_me, _st.st_mode)
    _o.utime(_me, ns=(_st.st_atime_ns, _st.st_mtime_ns))
''')
    assert pipeline.record(project.spec).status == "recorded"   # this run rewrites its tree
    v = pipeline.verify(project.spec)                         # the next one must not run it
    assert v.status == "pass" and v.bitwise, v.error or v.rows
    assert any("had been changed since it was exported (tinyproj/train.py)" in n
               for n in v.notes), v.notes
    # (every run of this code rewrites its tree again; each next run is caught the same way)


# -- 14.5: a small spec cannot hang the harness ------------------------------------------------
def _alias_bomb(levels: int) -> str:
    text = 'repro: 1\ncode: {commit: "' + "a" * 40 + '", entrypoint: "m:f"}\n'
    text += 'config:\n  l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    for i in range(1, levels):
        text += f"  l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]\n"
    return text


@pytest.mark.parametrize("text, limit", [
    (_alias_bomb(7), "its aliases (*name) expand to"),            # 10^7 values from ~500 bytes
    (_alias_bomb(9), "its aliases (*name) expand to"),            # the one that hung
    ("repro: 1\nconfig: {x: " + "[" * 20000 + "]" * 20000 + "}\n", "nested too deeply"),
    ("repro: 1\nconfig: {x: '" + "a" * (6 << 20) + "'}\n", "a spec holds at most 262,144"),
], ids=["alias-bomb-7", "alias-bomb-9", "nesting", "6-MB"])
def test_hostile_specs_are_refused_at_once(tmp_path, text, limit):
    import subprocess
    import sys
    import time

    from repro.errors import SpecError
    from repro.spec import load_spec
    path = tmp_path / "specs" / "evil.yaml"
    path.parent.mkdir()
    path.write_text(text)
    t0 = time.perf_counter()
    with pytest.raises(SpecError, match=re.escape(limit)):
        load_spec(path)
    assert time.perf_counter() - t0 < 1.0
    # and an audit over the directory finishes with the error, instead of hanging
    report = tmp_path / "audit.json"
    proc = subprocess.run([sys.executable, "-m", "repro.cli", "audit", str(path.parent),
                           "--json", str(report)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    (result,) = json.loads(report.read_text())["results"]
    assert result["name"] == "evil" and result["status"] == "error" and limit in result["error"]


# -- 14.11: smaller holes ----------------------------------------------------------------------
def test_a_code_repo_that_looks_like_an_option_is_a_repository_name(project, tmp_path):
    marker = tmp_path / "pwned"
    project.edit_spec("  entrypoint: tinyproj.train:train",
                      f"  entrypoint: tinyproj.train:train\n  repo: '--upload-pack=touch {marker};"
                      " x://h/r'")
    v = pipeline.verify(project.spec)
    assert v.status == "error"
    assert not marker.exists()
    assert "code.repo" in v.error


def test_repro_pin_refuses_a_commit_that_does_not_exist(project):
    before = project.spec.read_text()
    proc = project.repro("pin", "specs/tiny.yaml", "--commit", "0" * 40)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"pinned commit {'0' * 40} does not exist" in proc.stderr
    assert project.spec.read_text() == before


def test_two_audits_saving_history_at_one_instant_keep_both(tmp_path):
    import threading

    from repro.commands.audit import save_history
    doc = {"started": "2026-11-28T04:12:13+00:00", "results": []}
    paths: list[Path] = []
    threads = [threading.Thread(target=lambda i=i: paths.append(save_history(
        tmp_path, {**doc, "n": i}))) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(paths)) == 8
    assert sorted(json.loads(p.read_text())["n"] for p in paths) == list(range(8))


@pytest.mark.slow
def test_a_decompression_bomb_in_arrays_npz_is_refused(project):
    """A run's arrays.npz whose members inflate a thousandfold would exhaust the parent's
    memory when loaded: refused as an unreadable file."""
    train_does(project, '''
    import os as _o, sys as _s, zipfile as _z, json as _j
    _out = _s.argv[2]
    with _z.ZipFile(_o.path.join(_out, "arrays.npz"), "w", _z.ZIP_DEFLATED) as _f:
        _f.writestr("weights/w.npy", b"\\0" * (300 << 20))
    with open(_o.path.join(_out, "run.json"), "w") as _f:
        _j.dump({"status": "ok", "fingerprint": {"backend": "cpu"}, "metrics": {}}, _f)
    _o._exit(0)
''')
    v = pipeline.run(project.spec)
    assert v.status == "error"
    assert "arrays.npz cannot be read" in v.error and "unpack to" in v.error, v.error


# -- issue 9 part 2: the noise floor at record time ---------------------------------------------
@pytest.mark.slow
def test_unseeded_randomness_is_refused_at_record_time(recorded_template, tmp_path):
    p = _copy(recorded_template, tmp_path)
    before = {f: (p.record_dir / f).read_bytes() for f in ("record.json", "arrays.npz")}
    from tests.conftest import lr_times
    lr_times(p, "1 + 1e-3 * np.random.default_rng().random()", message="unseeded noise")
    proc = p.repro("record", "specs/tiny.yaml", "--runs", "2")   # the default number of runs
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "2 runs from the same pins on this host differ" in proc.stdout
    assert "first at metric loss, step 1" in proc.stdout and "unseeded numpy" in proc.stdout
    assert {f: (p.record_dir / f).read_bytes() for f in ("record.json", "arrays.npz")} == before
    # one run records it (the user's explicit choice), and mode close accepts the noise
    p.repro("record", "specs/tiny.yaml", "--runs", "1", check_rc=0)
    p.edit_spec("record:\n", "tolerance: {mode: close}\nrecord:\n")
    p.repro("record", "specs/tiny.yaml", check_rc=0)


# -- issue 25, item 1: stale outputs that pass ----------------------------------------------------
STALE_SCRIPT = '''\
import json, os, sys
import numpy as np
where = sys.argv[1]
w = np.arange(6, dtype=np.float32).reshape(3, 2) * float(sys.argv[2])
if where != "nowhere":
    os.makedirs(where, exist_ok=True)
    with open(os.path.join(where, "metrics.jsonl"), "w") as f:
        for step in range(3):
            f.write(json.dumps({"step": step, "loss": float((w ** 2).sum()) / (step + 1)}) + "\\n")
    np.savez(os.path.join(where, "w.npz"), w=w)
'''

STALE_SPEC = '''\
repro: 1
code:
  commit: {commit}
  command: [python, fit.py, {where}, "{{config.scale}}"]
  outputs:
    metrics: {{path: out/metrics.jsonl, format: jsonl}}
    weights: {{path: out/w.npz, format: npz}}
config: {{scale: 0.5}}
'''


@pytest.mark.parametrize("where", ["elsewhere", "nowhere"])
@pytest.mark.slow
def test_outputs_committed_in_the_tree_never_stand_in_for_the_run(tmp_path, where):
    """A command-form spec whose declared outputs are committed in the pinned tree: the run
    that wrote them elsewhere, or nothing at all, is an error naming the output, never a PASS
    from the committed files. The removal is said in the notes of a run that did write them."""
    import subprocess
    import sys

    from tests.conftest import Project, git

    root = tmp_path / "proj"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    p = Project(root)
    p.spec = root / "specs" / "stale.yaml"
    p.write("fit.py", STALE_SCRIPT)
    subprocess.run([sys.executable, "fit.py", "out", "0.5"], cwd=root, check=True)  # outputs committed
    commit = p.commit("script and its outputs")
    p.write("specs/stale.yaml", STALE_SPEC.format(commit=commit, where="out"))
    p.commit("spec")
    recorded = pipeline.record(p.spec, pipeline.Options(runs=1))
    assert recorded.status == "recorded", recorded.error

    p.write("specs/stale.yaml", STALE_SPEC.format(commit=commit, where=where))
    p.commit("the script writes elsewhere now (its committed outputs stay)")
    v = pipeline.verify(p.spec)
    assert v.status == "error", (v.status, v.mode_reason)   # was: PASS, bitwise, from the tree's files
    assert "code.outputs.metrics: out/metrics.jsonl was not written by the script" in v.error, v.error
    assert any("removed from the run's copy before the script ran" in n for n in recorded.notes), \
        recorded.notes


# -- issue 25, items 4 and 6: data pins into .git/, commands that run code outside the pin -------
def test_a_data_path_inside_git_is_refused_at_spec_load():
    from repro.errors import SpecError
    from repro.spec import parse_spec

    base = {"repro": 1, "code": {"commit": "a" * 40, "entrypoint": "m:f"}}
    for path in (".git/config", "sub/.git/hooks/pre-commit", ".GIT/config"):
        with pytest.raises(SpecError, match=r"is inside \.git: git's own files"):
            parse_spec({**base, "data": {"cfg": {"path": path, "sha256": "0" * 64}}}, file="t.yaml")


def test_a_command_whose_script_is_outside_the_tree_is_refused_in_the_spec_and_by_init(project, tmp_path):
    from repro.errors import SpecError
    from repro.spec import parse_spec

    outside = tmp_path / "outside.py"
    outside.write_text("print('not pinned')\n")
    base = {"repro": 1, "record": {"weights": "none"},
            "code": {"commit": "a" * 40, "outputs": {"metrics": {"path": "m.jsonl", "format": "jsonl"}}}}
    for command in (["python", str(outside)], ["python", "-u", "../x.py"], ["/usr/bin/python3", "t.py"]):
        with pytest.raises(SpecError, match="outside the pinned tree"):
            parse_spec({**base, "code": {**base["code"], "command": command}}, file="t.yaml")
    ok = parse_spec({**base, "code": {**base["code"], "command": ["python", "-m", "pkg.train"]}}, file="t.yaml")
    assert ok.code.command == ["python", "-m", "pkg.train"]
    proc = project.repro("init", "--command", f"python {outside}", "--metrics", "m.jsonl:jsonl")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "outside the pinned tree" in proc.stderr + proc.stdout
    assert not list((project.root / "specs").glob("outside*.yaml"))


# -- issue 25, item 9: output directories ---------------------------------------------------------
def test_output_readers_refuse_fifos_links_and_climbing_tensor_names(tmp_path):
    """Real files: a FIFO among a TensorBoard directory's event files is not read (it would block
    the run until its timeout), a link there is refused, a FIFO as the declared output is refused,
    and a safetensors tensor whose name climbs ('../../x') is refused."""
    import numpy as np
    from safetensors.numpy import save_file
    from tensorboardX import SummaryWriter

    from repro.child.outputs import OutputError, read_metrics, read_weights, resolve

    logs = tmp_path / "work" / "logs"
    with SummaryWriter(str(logs)) as w:
        w.add_scalar("loss", 0.5, 0)
    os.mkfifo(logs / "events.out.tfevents.0.fifo")
    rows = read_metrics(logs, "tensorboard", "logs")   # returns: the FIFO was never opened
    assert [r[1:] for r in rows] == [(0, {"loss": 0.5})]
    (logs / "events.out.tfevents.1.link").symlink_to("/etc/passwd")
    with pytest.raises(OutputError, match="a link in a TensorBoard directory is refused"):
        read_metrics(logs, "tensorboard", "logs")
    os.mkfifo(tmp_path / "work" / "metrics.jsonl")
    with pytest.raises(OutputError, match="not a regular file or directory"):
        resolve(tmp_path / "work", "metrics.jsonl")
    save_file({"../../x": np.zeros(2, np.float32)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(OutputError, match="tensor name '../../x' is refused"):
        read_weights(tmp_path / "w.safetensors", "safetensors", "w.safetensors")


# -- issue 25, item 8 (its last part): hostile output files are named with file and line ----------
def test_hostile_metrics_files_are_named_with_file_and_line(tmp_path):
    """A 400-digit integer, 100,000-deep nesting, bad UTF-8 and a TensorBoard record claiming
    2**62 bytes: each an OutputError naming the file (and line), never a bare Python error."""
    import struct

    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    from repro.child.outputs import OutputError, read_metrics

    cases = {"big.jsonl": ('{"step": 0, "loss": ' + "9" * 400 + "}\n").encode(),
             "deep.jsonl": b'{"step": 0}\n' + b"[" * 100_000 + b"]" * 100_000 + b"\n",
             "utf8.jsonl": b'{"step": 0, "loss": 1.0}\n{"step": 1, "lo\xffss": 2.0}\n'}
    expected = {"big.jsonl": r"big.jsonl:1: 'loss' is an integer of 400 digits",
                "deep.jsonl": r"deep.jsonl:2: JSON nested too deeply",
                "utf8.jsonl": r"utf8.jsonl:2: not UTF-8 text"}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(OutputError, match=expected[name]):
            read_metrics(tmp_path / name, "jsonl", name)
    logs = tmp_path / "logs"
    logs.mkdir()
    head = struct.pack("<Q", 2 ** 62)
    (logs / "events.out.tfevents.0.vm").write_bytes(head + struct.pack("<I", masked_crc32c(head)) + b"x" * 16)
    with pytest.raises(OutputError, match=r"record 1 \(it claims 4611686018427387904 bytes"):
        read_metrics(logs, "tensorboard", "logs")


# -- issue 25, item 5: parcels trust their names ---------------------------------------------------
@pytest.mark.parametrize("field,name", [
    ("file", "../x"), ("file", "/abs/x"), ("file", "a/../../../x"), ("file", ".git/config"),
    ("file", "sub/.GIT/hooks/post-checkout"), ("spec", "/etc/passwd"), ("spec", "../s.yaml"),
    ("records", "../records")])
def test_a_parcel_with_a_hostile_name_unpacks_nothing(tmp_path, field, name):
    """A parcel comes from the shared store: every name is checked before anything is fetched
    or written — relative, no '..', no .git component — so it can neither write outside the job
    directory nor install a git config whose `core.fsmonitor` would run on the next git status."""
    from repro.engines.parcel import Parcel, Shipped, unpack
    from repro.errors import ReproError
    from repro.store.remote import RemoteConfig

    job = tmp_path / "job"
    job.mkdir()
    files = (Shipped("specs/s.yaml", "ab" * 32), *([Shipped(name, "cd" * 32)] if field == "file" else []))
    parcel = Parcel(store=RemoteConfig((tmp_path / "no-store").as_uri()), origin="/origin",
                    spec_rel=name if field == "spec" else "specs/s.yaml", files=files,
                    git_pack="ef" * 32, commits=("0" * 40,),
                    records_rel=name if field == "records" else None)
    with pytest.raises(ReproError, match=r"it was not unpacked"):
        unpack(parcel, job)
    assert not list(job.iterdir()) and not (tmp_path / "x").exists()


# -- issue 25, item 7: a shared cache that races ---------------------------------------------------
@pytest.mark.slow
def test_eight_verifies_of_one_commit_while_one_finds_the_tree_altered(project, tmp_path):
    """Eight `repro verify` processes of one commit share one cache; while seven run, the
    exported tree is altered and the eighth finds it so. It waits until no run uses the tree
    (their shared locks), then exports it again: every process passes, none meets a tree that
    vanished under it (`FileNotFoundError … trees/<commit>`, an internal error before)."""
    import subprocess
    import sys
    import time

    train_does(project, "    import time as _t\n    _t.sleep(3)\n")
    project.repro("record", "specs/tiny.yaml", "--runs", "1", check_rc=0)
    env = {**os.environ, "REPRO_CACHE_DIR": str(tmp_path / "shared-cache")}
    cmd = [sys.executable, "-m", "repro.cli", "verify", "specs/tiny.yaml", "--no-stream", "--confirm", "0"]
    first = subprocess.run(cmd, cwd=project.root, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stdout + first.stderr          # exports the tree
    (tree,) = [p for p in (tmp_path / "shared-cache" / "trees").iterdir() if p.is_dir()
               and not p.name.startswith(".")]
    running = [subprocess.Popen(cmd, cwd=project.root, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True) for _ in range(7)]
    time.sleep(2.5)                                                    # their runs are under way
    train = tree / "tinyproj" / "train.py"
    train.chmod(0o644)
    train.write_text(train.read_text() + "\n# altered in the cache\n")
    last = subprocess.Popen(cmd, cwd=project.root, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    outs = [p.communicate(timeout=300)[0] for p in [*running, last]]
    for p, out in zip([*running, last], outs):
        assert p.returncode == 0 and "internal error" not in out, out
    # whichever process prepared after the change replaced the tree (under load, one of the
    # seven may start its run only then): exactly one did, the others used a whole tree
    assert sum("exported again from git" in out for out in outs) == 1, outs
    assert "altered in the cache" not in train.read_text()


HOLDER = """
import os, sys, time
from pathlib import Path
from repro.pins.code import CodePin
tree = Path(sys.argv[2])
with CodePin("pinned", sys.argv[1], tree, ".").in_use():
    print("holding", flush=True)
    t0, missing = time.time(), 0
    while time.time() - t0 < 2.0:
        missing += not (tree / "tinyproj" / "train.py").exists()
        time.sleep(0.005)
print("missing", missing, flush=True)
"""


def test_an_altered_export_is_replaced_only_when_no_run_holds_it(project, tmp_path, monkeypatch):
    """The rule behind the test above, made deterministic: while another process holds a run's
    shared lock on the exported tree, replacing the altered export waits for it, and the tree
    never disappears under the holder."""
    import subprocess
    import sys
    import time

    from repro.pins.code import export_commit

    monkeypatch.setenv("REPRO_CACHE_DIR", str(tmp_path / "cache"))
    commit = project.spec.read_text().split("commit: ")[1].split()[0]
    tree = export_commit(project.root, commit)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, commit, str(tree)], env=dict(os.environ),
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
    train = tree / "tinyproj" / "train.py"
    train.chmod(0o644)
    train.write_text(train.read_text() + "\n# altered\n")
    t0 = time.time()
    notes: list[str] = []
    assert export_commit(project.root, commit, notes) == tree
    waited = time.time() - t0
    out = holder.communicate(timeout=30)[0]
    assert "missing 0" in out, out                      # the holder never lost its tree
    assert waited > 1.0, waited                         # the replacement waited for the holder
    assert notes and "exported again from git" in notes[0] and "# altered" not in train.read_text()


RACER = r"""
import os, sys, time
from pathlib import Path
from repro.pins.code import export_commit
repo, commit, go = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
time.sleep(max(0.0, go - time.time()))
tree = export_commit(repo, commit)
missing = 0
end = time.time() + 1.0
while time.time() < end:      # a run starts in the tree it was given: it must stay there
    missing += not (tree / "tinyproj" / "train.py").exists()
    time.sleep(0.002)
print("missing", missing, flush=True)
"""


def test_processes_exporting_one_commit_at_once_never_remove_each_others_tree(project, tmp_path,
                                                                             monkeypatch):
    """xdist workers (and parallel `repro` calls) export the same commit at the same moment: the
    first makes the tree, the others use it; none removes the tree another was just given."""
    import subprocess
    import sys
    import time

    monkeypatch.setenv("REPRO_CACHE_DIR", str(tmp_path / "cache"))
    commit = project.spec.read_text().split("commit: ")[1].split()[0]
    go = time.time() + 2.0
    racers = [subprocess.Popen([sys.executable, "-c", RACER, str(project.root), commit, str(go)],
                               env=dict(os.environ), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for _ in range(6)]
    outs = [r.communicate(timeout=60) for r in racers]
    for (out, err), r in zip(outs, racers):
        assert r.returncode == 0, err
        assert out.strip() == "missing 0", (out, err)
    left = sorted(p.name for p in (tmp_path / "cache" / "trees").iterdir())
    assert left == [commit, f"{commit}.lock", f"{commit}.manifest.json"], left
