"""Data pins against real files: hash format, the stat-keyed cache, and every bad input's message.

No mocks: the cache is proven to skip reads by making it return a hash that is *stale* (content
rewritten, size and mtime restored with os.utime), which only a cache hit can produce.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

import repro
from repro.errors import DataPinError
from repro.paths import cache_dir
from repro.pins.data import REPIN_HINT, hash_path, hash_paths, resolve_data_path, sha256_file, verify_data
from repro.pins.hashcache import HashCache

OLD = time.time() - 3600  # mtimes older than the racy window, so entries get cached
REPO_SRC = str(Path(repro.__file__).resolve().parent.parent)


def write(path: Path, data: bytes | str, *, old: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    if old:
        os.utime(path, (OLD, OLD))
    return path


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def independent_dir_hash(top: Path) -> str:
    """The documented directory format, recomputed with os.walk + hashlib only."""
    lines = []
    for dirpath, _, names in os.walk(top, followlinks=True):
        for n in names:
            p = Path(dirpath, n)
            rel = p.relative_to(top).as_posix()
            lines.append((rel.encode(), f"{sha(p.read_bytes())}  {rel}\n".encode()))
    return sha(b"".join(line for _, line in sorted(lines)))


@pytest.fixture
def cache(tmp_path):
    with HashCache(tmp_path / "cache" / "hashes.sqlite") as c:
        yield c


@pytest.fixture
def repo(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    return root


# -- hash format -------------------------------------------------------------------------------
def test_file_hash_is_plain_sha256_across_chunks(tmp_path, cache):
    data = os.urandom((1 << 20) * 2 + 12345)  # spans three 1 MiB reads
    f = write(tmp_path / "blob.bin", data)
    assert sha256_file(f) == sha(data)
    assert hash_path(f, cache) == sha(data)
    assert hash_path(write(tmp_path / "empty", b""), cache) == sha(b"")


def test_directory_hash_matches_documented_format(tmp_path, cache):
    d = tmp_path / "d"
    write(d / "a.txt", "A")
    write(d / "a" / "b", "B")            # "a.txt" < "a/b" by bytes ('.' 0x2e < '/' 0x2f)
    write(d / ".hidden", "H")            # hidden files count
    write(d / "sub" / "deep" / "ü.bin", b"\x00\x01")
    (d / "empty_subdir").mkdir()         # directories alone do not count
    expected = independent_dir_hash(d)
    listing = (f"{sha(b'H')}  .hidden\n{sha(b'A')}  a.txt\n{sha(b'B')}  a/b\n"
               f"{sha(bytes([0, 1]))}  sub/deep/ü.bin\n")
    assert expected == sha(listing.encode())
    assert hash_path(d, cache) == expected
    assert hash_path(d, False, workers=1) == expected  # same without cache, single thread
    assert hash_path(d, cache) == expected              # and from the cache
    assert dict(hash_paths([d, d / "a.txt"], cache)) == {str(d): expected,
                                                         str(d / "a.txt"): sha(b"A")}


@pytest.mark.skipif(not (shutil.which("sha256sum") and shutil.which("find")),
                    reason="coreutils not installed")
def test_directory_hash_matches_the_documented_shell_recipe(tmp_path):
    d = tmp_path / "d"
    for i in range(12):
        write(d / f"s{i % 3}" / f"f{i}.dat", os.urandom(i * 100))
    out = subprocess.run("find -L . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum "
                         "| sed 's|  \\./|  |' | sha256sum", shell=True, cwd=d, check=True,
                         capture_output=True, text=True).stdout.split()[0]
    assert hash_path(d, False) == out


def test_symlinks_inside_the_repo_are_followed(repo, cache):
    d = repo / "data"
    write(repo / "shared" / "x.bin", "X")
    write(repo / "shared" / "more" / "y.bin", "Y")
    d.mkdir()
    os.symlink("../shared/x.bin", d / "x.bin")
    os.symlink("../shared/more", d / "more")
    copy = repo / "copy"
    write(copy / "x.bin", "X")
    write(copy / "more" / "y.bin", "Y")
    assert hash_path(d, cache, root=repo) == hash_path(copy, cache, root=repo)


def test_symlink_leaving_the_repo_is_rejected(tmp_path, repo):
    write(tmp_path / "outside.bin", "O")
    write(repo / "data" / "ok.bin", "K")
    os.symlink(tmp_path / "outside.bin", repo / "data" / "out.bin")
    with pytest.raises(DataPinError, match=r"data/out.bin is a symlink to .*outside.bin, outside "
                                           r"the repository .*copy the data into the repository"):
        hash_path(repo / "data", False, root=repo)
    # without a repo root (``repro hash`` outside a repo) it is followed
    assert hash_path(repo / "data", False) == independent_dir_hash(repo / "data")


def test_symlink_cycle_and_dangling_link_and_fifo(repo):
    d = repo / "d"
    write(d / "f", "F")
    os.symlink("..", d / "loop")
    with pytest.raises(DataPinError, match=r"d/loop is a symlink to .*a directory that contains "
                                           r"it \(a cycle\)"):
        hash_path(d, False, root=repo)
    os.unlink(d / "loop")
    os.symlink("nowhere", d / "dangling")
    with pytest.raises(DataPinError, match=r"d/dangling is a symlink to .*nowhere, which does "
                                           r"not exist"):
        hash_path(d, False, root=repo)
    os.unlink(d / "dangling")
    os.mkfifo(d / "pipe")
    with pytest.raises(DataPinError, match=r"d/pipe is a FIFO; only regular files and "
                                           r"directories can be pinned"):
        hash_path(d, False, root=repo)


def test_empty_directory_is_an_error(repo):
    (repo / "empty" / "only_dirs").mkdir(parents=True)
    with pytest.raises(DataPinError, match=r"empty is a directory with no files in it; git does "
                                           r"not keep empty directories"):
        verify_data({"e": ("empty", "0" * 64)}, repo, False)


def test_newline_in_name_is_rejected(tmp_path):
    write(tmp_path / "d" / "a\nb", "x")
    with pytest.raises(DataPinError, match="file names containing a newline cannot be pinned"):
        hash_path(tmp_path / "d", False)


# -- the cache ---------------------------------------------------------------------------------
def test_cache_hit_skips_reading_and_mtime_change_rehashes(tmp_path, cache):
    f = write(tmp_path / "d" / "data.bin", b"original")
    before = hash_path(tmp_path / "d", cache)
    st = f.stat()
    f.write_bytes(b"ORIGINAL")                          # same size, new content
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))    # ...and the old mtime
    assert hash_path(tmp_path / "d", cache) == before   # stale: served from the cache, not read
    assert hash_path(tmp_path / "d", False) != before   # cache=False reads the bytes
    os.utime(f, (OLD + 1, OLD + 1))                     # mtime changes -> key changes -> re-read
    assert hash_path(f, cache) == sha(b"ORIGINAL")
    assert hash_path(tmp_path / "d", cache) == independent_dir_hash(tmp_path / "d")


def test_cache_is_persistent_across_instances(tmp_path):
    f = write(tmp_path / "f.bin", b"abc")
    db = tmp_path / "c" / "hashes.sqlite"
    with HashCache(db) as c:
        hash_path(f, c)
    st = f.stat()
    f.write_bytes(b"xyz")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    with HashCache(db) as c:
        assert hash_path(f, c) == sha(b"abc")


def test_racy_fresh_files_are_not_cached(tmp_path, cache):
    f = write(tmp_path / "fresh.bin", b"v1", old=False)  # mtime = now: within the racy window
    assert hash_path(f, cache) == sha(b"v1")
    st = f.stat()
    f.write_bytes(b"v2")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert hash_path(f, cache) == sha(b"v2")  # never trusted, so re-read


def test_bulk_lookup_beyond_one_query_chunk(tmp_path, cache):
    d = tmp_path / "many"
    for i in range(1203):
        write(d / f"{i:04d}", str(i))
    first = hash_path(d, cache)
    assert cache.lookup((str(p), p.stat()) for p in d.iterdir()).keys() == \
        {str(p) for p in d.iterdir()}
    assert hash_path(d, cache) == first == independent_dir_hash(d)


def test_corrupt_cache_is_recreated(tmp_path):
    f = write(tmp_path / "f.bin", b"abc")
    db = tmp_path / "c" / "hashes.sqlite"
    db.parent.mkdir()
    db.write_bytes(b"this is not sqlite" * 500)
    with HashCache(db) as c:
        assert hash_path(f, c) == sha(b"abc")
        assert c.disabled is None
    rows = sqlite3.connect(db).execute("SELECT count(*) FROM hashes").fetchone()[0]
    assert rows == 1


def test_locked_cache_degrades_to_rehashing(tmp_path):
    f = write(tmp_path / "f.bin", b"abc")
    db = tmp_path / "hashes.sqlite"
    with HashCache(db) as c:
        hash_path(f, c)
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("PRAGMA journal_mode=DELETE")  # rollback journal: an exclusive lock blocks all
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        with HashCache(db, timeout=0.05) as c:
            assert hash_path(f, c) == sha(b"abc")
            assert c.store([(str(f), f.stat(), sha(b"abc"))], time.time_ns()) == 0
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()


def test_unusable_cache_dir_degrades(tmp_path, monkeypatch):
    write(tmp_path / "file", "not a dir")
    monkeypatch.setenv("REPRO_CACHE_DIR", str(tmp_path / "file" / "sub"))
    f = write(tmp_path / "f.bin", b"abc")
    assert hash_path(f) == sha(b"abc")  # default cache: cannot be created, hashing goes on
    c = HashCache()
    assert c.lookup([(str(f), f.stat())]) == {} and "cannot create" in c.disabled


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("REPRO_CACHE_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("REPRO_CACHE_DIR")
    assert cache_dir() == tmp_path / "xdg" / "repro"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    assert cache_dir() == Path.home() / ".cache" / "repro"


def test_two_processes_share_the_cache(tmp_path):
    d = tmp_path / "tree"
    for i in range(300):
        write(d / f"s{i % 7}" / f"{i}.bin", os.urandom(100 + i))
    expected = independent_dir_hash(d)
    script = textwrap.dedent(f"""
        from repro.pins.data import hash_path
        from repro.pins.hashcache import HashCache
        for _ in range(15):
            with HashCache() as c:
                assert hash_path({str(d)!r}, c) == {expected!r}
                assert c.disabled is None, c.disabled
        print("ok")
    """)
    env = {**os.environ, "REPRO_CACHE_DIR": str(tmp_path / "shared-cache"),
           "PYTHONPATH": REPO_SRC}
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0 and out.strip() == "ok", err
    db = sqlite3.connect(tmp_path / "shared-cache" / "hashes.sqlite")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("SELECT count(*) FROM hashes").fetchone()[0] == 300


# -- paths that leave the repo, and verification -----------------------------------------------
@pytest.mark.parametrize("rel, message", [
    ("/etc/passwd", r"data path '/etc/passwd' is absolute; data must live inside the repository"),
    ("../x", r"data path '../x' leaves the repository .*; data must live inside it"),
    ("a/../../x", r"data path 'a/../../x' leaves the repository"),
    (".", r"data path '.' names the repository root itself"),
    ("", r"data path is empty"),
    ("nope.npz", r"data path 'nope.npz' does not exist \(looked for .*nope.npz\)"),
])
def test_resolve_rejects_bad_paths(repo, rel, message):
    with pytest.raises(DataPinError, match=message):
        resolve_data_path(repo, rel)


def test_resolve_rejects_symlink_leaving_repo(tmp_path, repo):
    write(tmp_path / "secret.bin", "S")
    os.symlink(tmp_path / "secret.bin", repo / "link.bin")
    (repo / "sub").mkdir()
    os.symlink(tmp_path, repo / "sub" / "outdir")
    os.symlink(repo / "gone", repo / "dangling")
    with pytest.raises(DataPinError, match=r"'link.bin' resolves through a symlink to "
                                           r".*secret.bin, outside the repository"):
        resolve_data_path(repo, "link.bin")
    with pytest.raises(DataPinError, match=r"'sub/outdir/secret.bin' resolves through a symlink"):
        resolve_data_path(repo, "sub/outdir/secret.bin")
    with pytest.raises(DataPinError, match=r"'dangling' is a symlink to .*gone, which does not"):
        resolve_data_path(repo, "dangling")
    write(repo / "real.bin", "R")
    os.symlink("real.bin", repo / "inside.bin")
    assert resolve_data_path(repo, "inside.bin") == (repo / "real.bin").resolve()


def test_verify_returns_real_paths(repo, cache):
    write(repo / "data" / "x.npz", b"xx")
    write(repo / "imgs" / "1.png", b"1")
    got = verify_data({"x": ("data/x.npz", sha(b"xx")),
                       "imgs": ("imgs", independent_dir_hash(repo / "imgs").upper()),
                       "loose": ("data", None)}, repo, cache)
    assert got == {"x": (repo / "data" / "x.npz").resolve(), "imgs": (repo / "imgs").resolve(),
                   "loose": (repo / "data").resolve()}


def test_verify_lists_every_failing_entry(tmp_path, repo, cache):
    write(repo / "ok.bin", b"ok")
    write(repo / "changed.bin", b"new content")
    write(tmp_path / "outside.bin", b"o")
    os.symlink(tmp_path / "outside.bin", repo / "escape.bin")
    old = sha(b"old content")
    with pytest.raises(DataPinError) as info:
        verify_data({"ok": ("ok.bin", sha(b"ok")),
                     "changed": ("changed.bin", old),
                     "missing": ("gone/x.npz", "ab" * 32),
                     "escape": ("escape.bin", "cd" * 32),
                     "absolute": ("/etc/hostname", "ef" * 32)}, repo, cache)
    msg = str(info.value)
    assert msg.startswith(f"4 of 5 data pins do not hold (repository {repo.resolve()}):")
    assert (f"  - data 'changed': changed.bin\n      content changed\n"
            f"      expected sha256 {old}\n      actual   sha256 {sha(b'new content')}\n") in msg
    assert ("  - data 'missing': gone/x.npz\n      data path 'gone/x.npz' does not exist "
            f"(looked for {repo.resolve()}/gone/x.npz)\n      expected sha256 {'ab' * 32}\n"
            "      actual   sha256 (none)\n") in msg
    assert "  - data 'escape': escape.bin\n      data path 'escape.bin' resolves through a " \
           "symlink to" in msg
    assert "  - data 'absolute': /etc/hostname\n      data path '/etc/hostname' is absolute" in msg
    assert "data 'ok'" not in msg
    assert msg.endswith(REPIN_HINT)
    assert "run `repro pin SPEC` to re-pin; otherwise restore" in REPIN_HINT


def test_verify_reports_unreadable_file(tmp_path):
    """As root (CI) permissions do not stop reads, so a child drops to `nobody` first."""
    base = Path(tempfile.mkdtemp(prefix="repro-unreadable-"))  # not under 0700 tmp_path
    try:
        base.chmod(0o755)
        write(base / "data" / "ok.bin", b"fine").parent.chmod(0o755)
        secret = write(base / "data" / "locked.bin", b"secret")
        secret.chmod(0o000)
        call = (f"verify_data({{'d': ('data', {'0' * 64!r})}}, {str(base)!r}, False)")
        script = textwrap.dedent(f"""
            import os
            from repro.pins.data import verify_data
            from repro.errors import DataPinError
            if os.geteuid() == 0:
                os.setgid(65534); os.setuid(65534)
            try:
                {call}
            except DataPinError as e:
                print(e)
        """)
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": REPO_SRC}, timeout=60)
        assert out.returncode == 0, out.stderr
        assert ("      cannot read data/locked.bin: permission denied; make it readable by the "
                "user running repro\n") in out.stdout
    finally:
        shutil.rmtree(base)
