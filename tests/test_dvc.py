"""DVC data (docs/integrations.md, "DVC data"): `data: {NAME: {dvc: PATH}}` against real DVC
repositories built here — `dvc init`, `dvc add`, `dvc repro`, a local-directory remote and an S3
remote on the tests' S3 server (`rclone serve s3` on 127.0.0.1, tests/s3server.py), `dvc push` —
and real clones of them as a fresh machine has them: no data in the working tree, no DVC cache.

DVC runs as its own command (`python -m dvc`); its machine-wide state (site cache, global and
system config) is kept inside the test session, with analytics and update checks off.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import BUCKET, Project, build_project, fresh_cache, git, s3, sha256, write_data

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def _dvc_state(tmp_path_factory):
    """DVC's machine-wide directories inside the session (not /var/tmp/dvc, not ~/.config)."""
    base = tmp_path_factory.mktemp("dvc-state")
    (base / "global").mkdir()
    (base / "global" / "config").write_text("[core]\n    analytics = false\n    check_update = false\n")
    values = {"DVC_SITE_CACHE_DIR": str(base / "site"), "DVC_GLOBAL_CONFIG_DIR": str(base / "global"),
              "DVC_SYSTEM_CONFIG_DIR": str(base / "system"), "DVC_NO_ANALYTICS": "1"}
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def dvc(cwd: Path, *args: str) -> str:
    """The `dvc` command, for real."""
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, text=True,
                          capture_output=True, env=os.environ.copy())
    assert proc.returncode == 0, f"dvc {' '.join(args)}: {proc.stdout}{proc.stderr}"
    return proc.stdout


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def dvc_project(root: Path, remote: str, **remote_options: str) -> Project:
    """The tiny project with its data tracked by DVC (`dvc add`), pushed to `remote`, the spec's
    entry `{dvc: data/xy.npz}` pinned by `repro pin` and committed (not recorded)."""
    p = build_project(root)
    git(root, "rm", "-q", "--cached", "data/xy.npz")
    dvc(root, "init", "-q")
    dvc(root, "add", "-q", "data/xy.npz")
    dvc(root, "remote", "add", "-d", "store", remote)
    for key, value in remote_options.items():
        dvc(root, "remote", "modify", "store", key, value)
    p.edit_spec("    path: data/xy.npz\n", "    dvc: data/xy.npz\n")
    p.commit("track the data with DVC")
    dvc(root, "push", "-q")
    p.repro("pin", "specs/tiny.yaml", check_rc=0)
    p.commit("pin")
    return p


def clone(p: Project, target: Path, tracked: str = "data/xy.npz") -> Project:
    """A fresh machine's checkout: git's files only (DVC's data, `tracked`, is git-ignored; its
    cache is not in git)."""
    git(target.parent, "clone", "-q", str(p.root), str(target))
    c = Project(target)
    assert not (target / tracked).exists() and not (target / ".dvc" / "cache").exists()
    return c


def spec_entry(p: Project) -> dict:
    import yaml

    return dict(yaml.safe_load(p.spec.read_text())["data"]["xy"])


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Project:
    """A DVC project with a local-directory remote, recorded once and committed: clone it."""
    base = tmp_path_factory.mktemp("dvc")
    p = dvc_project(base / "proj", str(base / "dvc-remote"))
    p.repro("record", "specs/tiny.yaml", check_rc=0)
    p.commit("record")
    return p


def test_pin_reads_dvc_hash_at_the_commit_and_writes_the_sha256(recorded):
    entry = spec_entry(recorded)
    dvcfile = (recorded.root / "data" / "xy.npz.dvc").read_text()
    assert entry == {"dvc": "data/xy.npz", "sha256": sha256(recorded.data),
                     "dvc_md5": md5(recorded.data)}
    assert f"md5: {md5(recorded.data)}" in dvcfile
    meta = json.loads((recorded.record_dir / "record.json").read_text())
    assert meta["data"]["xy"] == {"path": "data/xy.npz", "sha256": sha256(recorded.data),
                                  "dvc": "data/xy.npz", "dvc_md5": md5(recorded.data)}
    assert meta["spec"]["canonical"]["data"]["xy"]["dvc_md5"] == md5(recorded.data)


@pytest.mark.slow
def test_a_fresh_clone_gets_the_data_through_dvc_and_verifies(recorded, tmp_path, monkeypatch):
    c = clone(recorded, tmp_path / "clone")
    cache = fresh_cache(monkeypatch, tmp_path)
    proc = c.repro("verify", "specs/tiny.yaml", "--no-stream", check_rc=0)
    assert "PASS tiny" in proc.stdout, proc.stdout
    sha = sha256(recorded.data)
    view = cache / "data" / sha / "xy.npz"
    assert view.read_bytes() == recorded.data.read_bytes()              # fetched by DVC, by hash
    assert (cache / "store" / sha[:2] / sha[2:]).is_file()
    assert not c.data.exists()                                           # never the working tree
    assert git(c.root, "status", "--porcelain") == ""
    assert not (c.root / ".dvc" / "cache").exists()                      # DVC streamed, kept nothing


@pytest.mark.slow
def test_a_working_copy_that_differs_is_passed_over_for_the_pinned_version(recorded, tmp_path,
                                                                          monkeypatch):
    """`dvc add` of new data, not committed: the spec still pins the commit's version, which
    DVC gives from its cache; the verify says so and passes."""
    c = clone(recorded, tmp_path / "clone")
    dvc(c.root, "pull", "-q")
    write_data(c.data, seed=7)
    dvc(c.root, "add", "-q", "data/xy.npz")
    fresh_cache(monkeypatch, tmp_path)
    proc = c.repro("verify", "specs/tiny.yaml", "--no-stream", check_rc=0)
    assert "PASS tiny" in proc.stdout, proc.stdout
    assert "data/xy.npz in the working tree is not the pinned version" in proc.stdout, proc.stdout
    assert sha256(c.data) != sha256(recorded.data)                       # left as the user made it


@pytest.mark.slow
def test_new_data_added_committed_and_pinned_is_named_by_its_dvc_file(recorded, tmp_path):
    c = clone(recorded, tmp_path / "clone")
    dvc(c.root, "pull", "-q")
    old_md5 = md5(c.data)
    write_data(c.data, seed=7)
    dvc(c.root, "add", "-q", "data/xy.npz")
    commit = c.commit("new data")
    proc = c.repro("pin", "specs/tiny.yaml", check_rc=0)
    assert f"data.xy.dvc_md5: {old_md5} -> {md5(c.data)}" in proc.stdout, proc.stdout
    c.commit("pin")
    proc = c.repro("verify", "specs/tiny.yaml", "--no-stream", check_rc=1)
    out = proc.stdout
    assert "FAIL tiny" in out, out
    line = next(x for x in out.splitlines() if "data.xy.dvc_md5" in x)
    assert f"DVC: data/xy.npz.dvc at {commit[:12]}" in line, out
    assert "data.xy.sha256" in out, out


def test_a_spec_whose_dvc_hash_is_not_the_commits_is_refused_naming_the_file(recorded, tmp_path):
    c = clone(recorded, tmp_path / "clone")
    text = c.spec.read_text()
    c.spec.write_text(text.replace(md5(recorded.data), "f" * 32))
    proc = c.repro("run", "specs/tiny.yaml", "--no-stream", check_rc=2)
    out = proc.stdout + proc.stderr
    assert "the spec pins DVC hash " + "f" * 32 in out, out
    assert f"data/xy.npz.dvc at code.commit {spec_commit(c)[:12]} records {md5(recorded.data)}" in out
    assert "repro pin" in out, out


def spec_commit(p: Project) -> str:
    import yaml

    return str(yaml.safe_load(p.spec.read_text())["code"]["commit"])


def test_wrong_bytes_from_the_dvc_remote_are_refused_and_nothing_is_kept(recorded, tmp_path,
                                                                        monkeypatch):
    """A remote (named in .dvc/config.local, as a machine may) whose object for the pinned md5
    holds other bytes: exit 2 naming the entry, the path and both hashes; no file kept."""
    c = clone(recorded, tmp_path / "clone")
    bad = tmp_path / "bad-remote"
    shutil.copytree(recorded.root.parent / "dvc-remote", bad)
    (obj,) = [f for f in bad.rglob("*") if f.is_file()]
    obj.write_bytes(b"not the data at all\n")
    dvc(c.root, "remote", "add", "--local", "bad", str(bad))
    dvc(c.root, "remote", "default", "--local", "bad")
    cache = fresh_cache(monkeypatch, tmp_path)
    proc = c.repro("run", "specs/tiny.yaml", "--no-stream", check_rc=2)
    out = proc.stdout + proc.stderr
    wrong = hashlib.sha256(b"not the data at all\n").hexdigest()
    for text in ("data 'xy'", "data/xy.npz", f"expected sha256 {sha256(recorded.data)}",
                 f"actual sha256 {wrong}", "nothing was kept", str(bad), "data/xy.npz.dvc"):
        assert text in out, (text, out)
    assert not [f for f in cache.rglob("*") if f.is_file() and "store" in f.parts]
    assert not (cache / "data").exists()
    assert not c.data.exists() and git(c.root, "status", "--porcelain") == ""
    # a remote without the object: named, with what to do
    empty = tmp_path / "empty-remote"
    empty.mkdir()
    dvc(c.root, "remote", "add", "--local", "empty", str(empty))
    dvc(c.root, "remote", "default", "--local", "empty")
    out = c.repro("run", "specs/tiny.yaml", "--no-stream", check_rc=2).stdout
    assert "DVC cannot give data/xy.npz" in out and str(empty) in out and "dvc push" in out, out


RESOLVE = """
import sys
if sys.argv[1] == "blocked":
    sys.modules["dvc"] = None          # as if DVC were not installed
from repro.spec import load_spec
from repro.pins.fetch import resolve_data
spec = load_spec("specs/tiny.yaml")
print(resolve_data(spec.data, spec.path.parents[1], None, spec.code.commit)[sys.argv[2]])
print(sorted(m for m, v in sys.modules.items() if m.split(".")[0] == "dvc" and v is not None))
"""


def resolve_in(p: Project, mode: str, name: str) -> subprocess.CompletedProcess:
    """`resolve_data` (what a verify runs before training) in a fresh process, DVC importable
    or not (`blocked`); prints the entry's path and the DVC modules loaded."""
    return subprocess.run([sys.executable, "-c", RESOLVE, mode, name], cwd=p.root, text=True,
                          capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_dvc_is_imported_only_to_fetch_and_without_it_the_extra_is_named(recorded, tmp_path,
                                                                        monkeypatch):
    c = clone(recorded, tmp_path / "clone")
    fresh_cache(monkeypatch, tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def resolve(mode: str) -> subprocess.CompletedProcess:
        return resolve_in(c, mode, "xy")

    proc = resolve("blocked")                      # absent here: DVC needed, not installed
    assert proc.returncode == 1 and "MissingExtra" in proc.stderr, proc.stderr
    assert "pip install 'repro[dvc]'" in proc.stderr and "dvc: PATH" in proc.stderr, proc.stderr
    cli = ("import sys; sys.modules['dvc'] = None; from repro.cli import main; "
           "sys.exit(main(['run', 'specs/tiny.yaml', '--no-stream']))")
    run = subprocess.run([sys.executable, "-c", cli], cwd=c.root, env=env, text=True,
                         capture_output=True)
    assert run.returncode == 2 and "repro[dvc]" in run.stdout + run.stderr, run.stdout + run.stderr
    proc = resolve("dvc")                          # fetched through DVC into the machine store
    assert proc.returncode == 0, proc.stderr
    view, loaded = proc.stdout.splitlines()
    assert Path(view).read_bytes() == recorded.data.read_bytes() and "dvc.api" in loaded
    proc = resolve("blocked")                      # cached: no DVC needed
    assert proc.returncode == 0 and proc.stdout.splitlines() == [view, "[]"], proc.stderr
    dvc(c.root, "pull", "-q")                      # the working tree's copy: no DVC needed
    shutil.rmtree(Path(view).parents[2])
    proc = resolve("blocked")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [str(c.data.resolve()), "[]"], proc.stdout
    c.data.unlink()                                # the workspace copy deleted: DVC's cache has it
    shutil.rmtree(fresh_cache(monkeypatch, tmp_path, "cache-2"), ignore_errors=True)
    proc = resolve("dvc")
    assert proc.returncode == 0 and Path(proc.stdout.splitlines()[0]).read_bytes() == \
        recorded.data.read_bytes(), proc.stderr
    assert not c.data.exists() and git(c.root, "status", "--porcelain") == ""


@pytest.mark.slow
def test_an_s3_remote_in_dvc_config_serves_a_fresh_clone(s3_server, tmp_path, monkeypatch):
    p = dvc_project(tmp_path / "proj", f"s3://{BUCKET}/dvc", endpointurl=s3_server)
    assert "endpointurl" in (p.root / ".dvc" / "config").read_text()   # committed: the clone has it
    assert s3().find(f"{BUCKET}/dvc")                                  # `dvc push` put it there
    c = clone(p, tmp_path / "clone")
    cache = fresh_cache(monkeypatch, tmp_path)
    proc = c.repro("run", "specs/tiny.yaml", "--no-stream", check_rc=0)
    assert "RAN tiny" in proc.stdout, proc.stdout
    sha = sha256(p.data)
    assert (cache / "data" / sha / "xy.npz").read_bytes() == p.data.read_bytes()
    assert not c.data.exists() and git(c.root, "status", "--porcelain") == ""


MAKE_PY = """
import numpy as np
rng = np.random.default_rng(SEED)
x = rng.normal(size=(64, 4)).astype(np.float32)
y = np.sin(x @ np.array([[1.0], [-2.0], [0.5], [1.5]])).astype(np.float32)
with open("data/xy.npz", "wb") as f:
    np.savez(f, x=x, y=y)
"""


def test_a_dvc_lock_stage_is_read_and_named(tmp_path):
    """Data written by a pipeline stage (`dvc repro`): its hash is the dvc.lock stage's; a spec
    whose hash is not the commit's names that stage."""
    p = build_project(tmp_path / "proj")
    git(p.root, "rm", "-q", "--cached", "data/xy.npz")
    p.data.unlink()
    dvc(p.root, "init", "-q")
    p.write("make.py", MAKE_PY.replace("SEED", "0"))
    p.write("dvc.yaml", textwrap.dedent("""\
        stages:
          make:
            cmd: python make.py
            deps: [make.py]
            outs: [data/xy.npz]
        """))
    dvc(p.root, "repro", "-q")
    p.edit_spec("    path: data/xy.npz\n", "    dvc: data/xy.npz\n")
    p.commit("a stage writes the data")
    proc = p.repro("pin", "specs/tiny.yaml", check_rc=0)
    entry = spec_entry(p)
    assert entry["dvc_md5"] == md5(p.data) and entry["sha256"] == sha256(p.data), proc.stdout
    assert f"md5: {md5(p.data)}" in (p.root / "dvc.lock").read_text()
    p.commit("pin")
    first = md5(p.data)
    p.write("make.py", MAKE_PY.replace("SEED", "3"))
    dvc(p.root, "repro", "-q")
    head = p.commit("other data")
    p.edit_spec(spec_commit(p), head)          # the commit moved by hand, its hashes not
    out = p.repro("run", "specs/tiny.yaml", "--no-stream", check_rc=2).stdout
    assert f"the spec pins DVC hash {first}, but dvc.lock stage 'make' at code.commit " \
           f"{head[:12]} records {md5(p.data)}" in out, out


def test_pin_names_what_it_cannot_find(tmp_path):
    p = build_project(tmp_path / "proj")
    dvc(p.root, "init", "-q")
    p.edit_spec("    path: data/xy.npz\n", "    dvc: data/xy.npz\n")
    p.commit("dvc init, the data still in git")
    proc = p.repro("pin", "specs/tiny.yaml", check_rc=2)
    assert "no .dvc file and no dvc.lock stage tracks data/xy.npz" in proc.stderr, proc.stderr
    assert "dvc add data/xy.npz" in proc.stderr
    # a file inside a directory DVC tracks as a whole: name the directory
    git(p.root, "rm", "-q", "-r", "--cached", "data")
    dvc(p.root, "add", "-q", "data")
    p.commit("track data/ as a whole")
    proc = p.repro("pin", "specs/tiny.yaml", check_rc=2)
    assert "data/xy.npz is inside data, a directory DVC tracks as a whole (data.dvc" in proc.stderr, \
        proc.stderr


def test_pin_of_a_working_copy_dvc_has_not_committed_keeps_the_commits_version(recorded, tmp_path):
    c = clone(recorded, tmp_path / "clone")
    dvc(c.root, "pull", "-q")
    before = spec_entry(c)
    write_data(c.data, seed=9)
    dvc(c.root, "add", "-q", "data/xy.npz")          # not committed: HEAD still tracks the old
    shutil.rmtree(c.root / ".dvc" / "cache")         # and only the remote has that old version
    proc = c.repro("pin", "specs/tiny.yaml", check_rc=0)
    assert spec_entry(c) == before, proc.stdout      # read through DVC at the commit, hashed
    assert "is not the version data/xy.npz.dvc tracks" in proc.stderr + proc.stdout


def test_spec_keys_dvc(tmp_path):
    from repro.errors import SpecError
    from repro.spec import DataEntry, parse_spec

    entry = DataEntry.model_validate({"dvc": "data/x.txt"})
    assert entry.path == "data/x.txt" and entry.model_dump(mode="json") == {
        "path": "data/x.txt", "sha256": None, "dvc": "data/x.txt"}
    plain = DataEntry.model_validate({"path": "data/x.txt", "sha256": "a" * 64})
    assert plain.model_dump(mode="json") == {"path": "data/x.txt", "sha256": "a" * 64}  # as before
    base = {"repro": 1, "code": {"commit": "a" * 40, "entrypoint": "m:f"}}
    for data, key, text in [
        ({"dvc": "a", "path": "b"}, "data.x", "name different files"),
        ({"dvc": "a", "url": "s3://b/k"}, "data.x", "not both"),
        ({"path": "a", "dvc_md5": "0" * 32}, "data.x", "dvc_md5 without dvc"),
        ({"dvc": "a", "dvc_md5": "xyz"}, "data.x.dvc_md5", "not DVC's hash"),
        ({"dvc": "a", "sha256": "a" * 64}, "data.x.dvc_md5", "repro pin"),
    ]:
        with pytest.raises(SpecError) as err:
            parse_spec({**base, "data": {"x": data}}, file="s.yaml")
        assert err.value.key_path == key and text in str(err.value), str(err.value)
    ok = parse_spec({**base, "data": {"x": {"dvc": "a", "dvc_md5": "0" * 32 + ".dir",
                                            "sha256": "a" * 64}}}, file="s.yaml")
    assert ok.canonical["data"]["x"]["dvc_md5"].endswith(".dir")


@pytest.mark.slow
def test_a_dvc_directory_is_pinned_by_its_tree_hash_and_fetched_whole(tmp_path, monkeypatch):
    """`dvc add data/images` (a directory: `md5: ….dir`): pinned by repro's tree hash, fetched
    file by file through DVC into the store, kept only once the whole tree hashes right."""
    from repro.pins.data import hash_path

    p = build_project(tmp_path / "proj")
    images = p.root / "data" / "images"
    (images / "sub").mkdir(parents=True)
    for rel, text in {"a.txt": "a\n", "sub/b.txt": "b\n", ".hidden": "h\n"}.items():
        (images / rel).write_text(text)
    dvc(p.root, "init", "-q")
    dvc(p.root, "add", "-q", "data/images")
    remote = tmp_path / "dvc-remote"
    dvc(p.root, "remote", "add", "-d", "store", str(remote))
    p.edit_spec("seeds:", "  images: {dvc: data/images}\nseeds:")
    p.commit("a DVC-tracked directory")
    dvc(p.root, "push", "-q")
    p.repro("pin", "specs/tiny.yaml", check_rc=0)
    entry = __import__("yaml").safe_load(p.spec.read_text())["data"]["images"]
    assert entry["dvc_md5"].endswith(".dir") and entry["sha256"] == hash_path(images)
    p.commit("pin")
    (images / "a.txt").write_text("changed, not added\n")      # pin keeps DVC's version
    proc = p.repro("pin", "specs/tiny.yaml", check_rc=0)
    assert "1 of the 3 files data/images.dvc tracks" in proc.stdout + proc.stderr, proc.stderr
    assert __import__("yaml").safe_load(p.spec.read_text())["data"]["images"] == entry
    c = clone(p, tmp_path / "clone", "data/images")
    cache = fresh_cache(monkeypatch, tmp_path)
    proc = resolve_in(c, "dvc", "images")
    assert proc.returncode == 0, proc.stderr
    view = Path(proc.stdout.splitlines()[0])
    assert view == cache / "data" / entry["sha256"] / "images"
    assert hash_path(view) == entry["sha256"] and (view / "sub" / "b.txt").read_text() == "b\n"
    assert not (c.root / "data" / "images").exists() and git(c.root, "status", "--porcelain") == ""
    shutil.rmtree(view)                             # rebuilt from the store: no DVC needed
    proc = resolve_in(c, "blocked", "images")
    assert proc.returncode == 0 and proc.stdout.splitlines() == [str(view), "[]"], proc.stderr
    assert hash_path(view) == entry["sha256"]
    # one file of the remote's copy holds other bytes: named, and nothing is kept
    (obj,) = [f for f in remote.rglob("*") if f.is_file() and f.read_bytes() == b"b\n"]
    obj.write_bytes(b"B\n")
    cache = fresh_cache(monkeypatch, tmp_path, "cache-2")
    proc = resolve_in(c, "dvc", "images")
    assert proc.returncode == 1, proc.stdout
    for text in ("data 'images'", "the directory data/images", "data/images.dvc",
                 f"expected sha256 {entry['sha256']}", "nothing was kept", str(remote)):
        assert text in proc.stderr, (text, proc.stderr)
    assert not [f for f in cache.rglob("*") if f.is_file()], list(cache.rglob("*"))
