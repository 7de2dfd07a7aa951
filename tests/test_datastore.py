"""Record arrays over 1 MiB as blobs in the store, and data fetched by URL by its sha256
(docs/store.md, docs/data-pins.md): real runs of the tiny regression returning a 1.2 MB array,
its data served by a real S3 server (`rclone serve s3`, its own process on 127.0.0.1, through
s3fs: tests/s3server.py) and by a real HTTP server in this process that fails its first requests.
"""
from __future__ import annotations

import hashlib
import http.server
import json
import threading
from pathlib import Path

import numpy as np
import pytest

from conftest import BUCKET, Project, build_project, edit_train, fresh_cache, git, s3, set_store

EMB = 300_000        # float32: 1.2 MB of data, over the 1 MiB kept in arrays.npz


def add_url(p: Project, url: str) -> None:
    """Give the data entry a URL and take its file out of the repository (not the record)."""
    text = p.spec.read_text()
    if "    url: " in text:
        text = "\n".join(x for x in text.splitlines() if not x.startswith("    url: ")) + "\n"
    p.spec.write_text(text.replace("    path: data/xy.npz", f"    path: data/xy.npz\n    url: {url}"))
    p.data.unlink(missing_ok=True)
    git(p.root, "add", "-A")
    git(p.root, "commit", "-q", "--allow-empty", "-m", f"data from {url}")


@pytest.fixture(scope="module")
def wide(tmp_path_factory) -> Project:
    """Recorded with a trained 1.2 MB weight (`emb`): its array is a blob in the machine's store."""
    p = build_project(tmp_path_factory.mktemp("datastore") / "proj")
    edit_train(p, "    return params", f'    return {{**params, "emb": jnp.ones(({EMB},), jnp.float32) '
               '* params["out"]["b"][0]}', "a 1.2 MB trained weight")
    p.repro("record", "specs/tiny.yaml", "--runs", "1", check_rc=0)
    p.commit("record")
    (p.root.parent / "xy.npz").write_bytes(p.data.read_bytes())   # the data, kept aside
    return p


def emb_pointer(p: Project) -> dict:
    index = json.loads((p.record_dir / "record.json").read_text())["arrays"]["index"]
    assert set(index["weights/hidden/w"]) == {"shape", "dtype"}         # small: in arrays.npz
    entry = index["weights/emb"]
    assert entry["size"] == 4 * EMB + 128 and entry["shape"] == [EMB]   # a pointer, in git
    with np.load(p.record_dir / "arrays.npz") as npz:
        assert "weights/emb" not in npz.files and "weights/hidden/w" in npz.files
    return entry


@pytest.mark.slow
def test_record_arrays_and_data_only_in_s3_verify_on_a_fresh_cache(wide, s3_server, tmp_path,
                                                                   monkeypatch):
    sha = emb_pointer(wide)["sha256"]
    data = (wide.root.parent / "xy.npz").read_bytes()
    s3().pipe_file(f"{BUCKET}/data/xy.npz", data)
    add_url(wide, f"s3://{BUCKET}/data/xy.npz")
    set_store(wide, f"s3://{BUCKET}/wide")
    out = wide.repro("push", check_rc=0).stdout
    assert "sent 1 of 1 blobs" in out, out                 # the array's blob
    assert s3().info(f"{BUCKET}/wide/{sha[:2]}/{sha[2:]}")["size"] == 4 * EMB + 128
    cache = fresh_cache(monkeypatch, tmp_path)
    proc = wide.repro("verify", "specs/tiny.yaml", "--no-stream", check_rc=0)
    assert "PASS tiny" in proc.stdout, proc.stdout
    assert (cache / "store" / sha[:2] / sha[2:]).is_file()   # the array, fetched by hash
    view = cache / "data" / hashlib.sha256(data).hexdigest() / "xy.npz"
    assert view.read_bytes() == data                          # the data, fetched by hash
    assert not wide.data.exists()                             # the working tree is untouched
    out = wide.repro("store", "verify", "--remote", check_rc=0).stdout
    assert "re-hashed 1 of 1 blobs" in out and "; ok" in out, out


@pytest.mark.slow
def test_a_corrupt_array_blob_or_wrong_data_at_the_url_is_named_and_never_used(
        wide, s3_server, tmp_path, monkeypatch):
    sha = emb_pointer(wide)["sha256"]
    from repro.store.blobs import machine_store
    recorded_blob = machine_store().get(sha, "the recorded blob")   # the session's store
    set_store(wide, f"s3://{BUCKET}/bad")
    good = (wide.root.parent / "xy.npz").read_bytes()
    fs = s3()
    fs.pipe_file(f"{BUCKET}/data/xy.npz", good)
    add_url(wide, f"s3://{BUCKET}/data/xy.npz")
    wide.repro("push", check_rc=0)
    key = f"{BUCKET}/bad/{sha[:2]}/{sha[2:]}"
    blob = bytearray(fs.cat_file(key))
    blob[-1] ^= 1
    fs.pipe_file(key, bytes(blob))
    actual = hashlib.sha256(blob).hexdigest()
    cache = fresh_cache(monkeypatch, tmp_path)
    out = wide.repro("verify", "specs/tiny.yaml", "--no-stream", check_rc=2).stdout
    for text in (f"blob {sha} at s3://{key} is corrupt", actual, "the array weights/emb", "not used"):
        assert text in out, (text, out)
    assert not (cache / "store" / sha[:2] / sha[2:]).exists()
    # the local copy damaged after a good fetch: a verify does not use it but fetches it again,
    # replacing it (issue 25, item 3), and uses the data fetched by the first verify (the URL need
    # not answer any more); with no good copy at the remote either, it is named
    fs.rm_file(f"{BUCKET}/data/xy.npz")
    fs.pipe_file(key, recorded_blob)
    wide.repro("pull", check_rc=0)
    stored = cache / "store" / sha[:2] / sha[2:]
    stored.chmod(0o644)
    stored.write_bytes(stored.read_bytes()[:-1] + b"\x07")
    out = wide.repro("verify", "specs/tiny.yaml", "--no-stream", check_rc=0).stdout
    assert "PASS tiny" in out and stored.read_bytes() == recorded_blob, out
    fs.rm_file(key)
    stored.chmod(0o644)
    stored.write_bytes(stored.read_bytes()[:-1] + b"\x07")
    out = wide.repro("verify", "specs/tiny.yaml", "--no-stream", check_rc=2).stdout
    assert "the array weights/emb" in out and sha in out, out
    stored.unlink()
    # wrong content at the data URL: entry, URL, expected and actual sha256; nothing kept
    wrong = good[:-1] + bytes([good[-1] ^ 1])
    fs.pipe_file(f"{BUCKET}/data/wrong.npz", wrong)
    add_url(wide, f"s3://{BUCKET}/data/wrong.npz")
    cache = fresh_cache(monkeypatch, tmp_path, "cache-2")   # content-addressed: else the copy here is used
    out = wide.repro("verify", "specs/tiny.yaml", "--no-stream", check_rc=2).stdout
    expected = hashlib.sha256(good).hexdigest()
    for text in ("data 'xy'", f"s3://{BUCKET}/data/wrong.npz", f"expected sha256 {expected}",
                 f"actual sha256 {hashlib.sha256(wrong).hexdigest()}"):
        assert text in out, (text, out)
    assert not (cache / "store" / expected[:2] / expected[2:]).exists()
    assert not (cache / "data" / expected).exists()


@pytest.mark.slow
def test_without_a_remote_a_missing_array_blob_is_named_before_training(wide, tmp_path, monkeypatch):
    (wide.root / "pyproject.toml").unlink(missing_ok=True)
    monkeypatch.delenv("REPRO_STORE", raising=False)
    fresh_cache(monkeypatch, tmp_path)
    (wide.root / "data").mkdir(exist_ok=True)
    wide.data.write_bytes((wide.root.parent / "xy.npz").read_bytes())   # the data is here
    sha = emb_pointer(wide)["sha256"]
    out = wide.repro("verify", "specs/tiny.yaml", "--no-stream", check_rc=2).stdout
    for text in ("the array weights/emb", sha[:12], "no store remote is configured", "repro pull"):
        assert text in out, (text, out)
    wide.data.unlink()


class Flaky(http.server.SimpleHTTPRequestHandler):
    """Serves a directory; the first requests get the faults in `faults`, in order: "503" (an
    answer that says "later") or "cut" (the whole length announced, half the body sent)."""

    faults: list[str] = []
    seen: list[tuple[str, int]] = []

    def log_message(self, *args: object) -> None:
        pass

    def _fault(self) -> bool:
        fault = self.faults[0] if self.faults else None
        if fault == "503" or (fault == "cut" and self.command == "GET"):
            self.faults.pop(0)
        else:
            fault = None
        self.seen.append((self.command, fault or "ok"))
        if fault == "503":
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif fault == "cut":
            body = Path(self.translate_path(self.path)).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
        return fault is not None

    def do_HEAD(self) -> None:
        if not self._fault():
            super().do_HEAD()

    def do_GET(self) -> None:
        if not self._fault():
            super().do_GET()


@pytest.fixture
def http_dir(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    handler = type("H", (Flaky,), {"faults": [], "seen": [],
                                   "__init__": lambda self, *a, **k: Flaky.__init__(
                                       self, *a, directory=str(served), **k)})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


@pytest.mark.slow
def test_transient_failures_are_retried_and_a_cut_download_is_never_used(wide, http_dir, tmp_path,
                                                                         monkeypatch):
    served, base, handler = http_dir
    data = (wide.root.parent / "xy.npz").read_bytes()
    (served / "xy.npz").write_bytes(data)
    (wide.root / "pyproject.toml").unlink(missing_ok=True)
    add_url(wide, f"{base}/xy.npz")
    cache = fresh_cache(monkeypatch, tmp_path)
    handler.faults += ["503", "503", "cut"]   # attempt 1: HEAD and GET 503; attempt 2: body cut
    out = wide.repro("run", "specs/tiny.yaml", "--no-stream", check_rc=0).stdout
    assert "RAN tiny" in out or "ran" in out.lower(), out
    assert handler.seen[:2] == [("HEAD", "503"), ("GET", "503")], handler.seen
    assert ("GET", "cut") in handler.seen and handler.seen[-1] == ("GET", "ok"), handler.seen
    sha = hashlib.sha256(data).hexdigest()
    assert (cache / "data" / sha / "xy.npz").read_bytes() == data
    assert not [f for f in (cache / "store").rglob(".tmp-*")]     # the cut copy was not kept
    # `repro pin` keeps the sha256 of an entry fetched by URL (its path is absent)
    pinned = wide.spec.read_text().split("sha256: ")[1].split()[0]
    wide.repro("pin", "specs/tiny.yaml", check_rc=0)
    assert f"sha256: {pinned}" in wide.spec.read_text() and pinned == sha
    # a missing file is not retried: one try (HEAD, then fsspec's GET), named
    add_url(wide, f"{base}/nothing.npz")
    fresh_cache(monkeypatch, tmp_path, "cache-2")
    handler.seen.clear()
    out = wide.repro("run", "specs/tiny.yaml", "--no-stream", check_rc=2).stdout
    assert "data 'xy'" in out and "no file at that URL" in out and f"{base}/nothing.npz" in out, out
    assert len(handler.seen) <= 2, handler.seen     # HEAD, GET: no second attempt


def test_a_url_that_names_a_directory_is_refused(tmp_path, monkeypatch):
    from repro.errors import DataPinError
    from repro.pins.fetch import fetch_data

    fresh_cache(monkeypatch, tmp_path)
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(b"png")
    with pytest.raises(DataPinError, match="names a directory, not a file; only single files"):
        fetch_data("images", "data/images", "0" * 64, (tmp_path / "images").as_uri(), tmp_path)
    with pytest.raises(DataPinError, match="needs its sha256"):
        fetch_data("images", "data/images", None, (tmp_path / "images").as_uri(), tmp_path)


class Endless(http.server.BaseHTTPRequestHandler):
    """A hostile data URL: its body never ends (`pace` seconds between 64 KiB pieces; bounded at
    60 s and 4 GiB, so the server stops by itself)."""

    pace = 0.0

    def log_message(self, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.end_headers()

    def do_GET(self) -> None:
        import time as _time
        self.send_response(200)
        self.end_headers()
        piece, t0 = b"\0" * 65536, _time.monotonic()
        try:
            for _ in range(65536):
                if _time.monotonic() - t0 > 60:
                    break
                self.wfile.write(piece)
                if self.pace:
                    _time.sleep(self.pace)
        except OSError:
            pass   # the client hung up: what the test wants


@pytest.mark.parametrize("case", ["size", "limit", "timeout"])
def test_an_endless_or_slow_data_url_is_cut_off_naming_the_entry(tmp_path, monkeypatch, case):
    """Issue 25, item 2: a data URL whose body never ends is refused once it passes the entry's
    pinned `size`, or without one $REPRO_DATA_MAX_BYTES; one that trickles is cut at the spec's
    timeout. Nothing is kept."""
    import time as _time

    from repro.errors import DataPinError
    from repro.pins.fetch import fetch_data

    cache = fresh_cache(monkeypatch, tmp_path)
    handler = type("E", (Endless,), {"pace": 0.2 if case == "timeout" else 0.0})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/big.bin"
    monkeypatch.setenv("REPRO_DATA_MAX_BYTES", "1000000")
    size = 100_000 if case == "size" else None
    deadline, timeout = (_time.monotonic() + 1.0, 1.0) if case == "timeout" else (None, None)
    expected = {"size": r"longer than its pinned size \(100000 bytes\)",
                "limit": r"past \$REPRO_DATA_MAX_BYTES \(1000000 bytes\)",
                "timeout": r"ran past the spec's timeout \(1 s"}[case]
    t0 = _time.monotonic()
    try:
        with pytest.raises(DataPinError, match=expected) as err:
            fetch_data("big", "data/big.bin", "0" * 64, url, tmp_path, size, deadline, timeout)
    finally:
        server.shutdown()
        server.server_close()
    assert "data 'big'" in str(err.value) and _time.monotonic() - t0 < 20
    assert not [f for f in (cache / "store").rglob("*") if f.is_file()]   # nothing kept


# --- data that neither DVC nor a URL holds: `repro push` carries it by sha256 (issue 26) ---

@pytest.mark.slow
def test_push_carries_the_data_and_a_fresh_machine_verifies_without_it(project, tmp_path,
                                                                        monkeypatch):
    remote = tmp_path / "remote"
    set_store(project, remote.as_uri())
    project.repro("record", "specs/tiny.yaml", check_rc=0)
    project.commit("record")
    data = project.data.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    out = project.repro("push", check_rc=0).stdout
    assert "and 1 of 1 data files (0 already there)" in out and "; ok" in out, out
    assert (remote / sha[:2] / sha[2:]).read_bytes() == data          # by sha256, as a blob
    assert not list(remote.rglob(".tmp-*"))
    out = project.repro("push", check_rc=0).stdout
    assert "and 0 of 1 data files (1 already there)" in out, out
    project.data.unlink()                                              # a fresh machine
    cache = fresh_cache(monkeypatch, tmp_path)
    out = project.repro("verify", "specs/tiny.yaml", "--no-stream", check_rc=0).stdout
    assert "PASS tiny" in out, out
    assert (cache / "store" / sha[:2] / sha[2:]).read_bytes() == data
    assert (cache / "data" / sha / "xy.npz").read_bytes() == data      # what the training read
    assert not project.data.exists()                                   # the working tree untouched
    out = project.repro("store", "verify", "--remote", check_rc=0).stdout
    assert "; ok" in out, out


def test_a_data_file_not_at_the_store_or_wrong_there_is_named_and_never_kept(
        project, s3_server, tmp_path, monkeypatch):
    set_store(project, f"s3://{BUCKET}/data-wrong")
    data = project.data.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    project.data.unlink()
    cache = fresh_cache(monkeypatch, tmp_path)
    out = project.repro("run", "specs/tiny.yaml", "--no-stream", check_rc=2).stdout
    for text in ("data 'xy'", "data/xy.npz", f"s3://{BUCKET}/data-wrong", f"has no blob {sha}",
                 "repro push"):
        assert text in out, (text, out)
    wrong = data[:-1] + bytes([data[-1] ^ 1])
    s3().pipe_file(f"{BUCKET}/data-wrong/{sha[:2]}/{sha[2:]}", wrong)
    out = project.repro("run", "specs/tiny.yaml", "--no-stream", check_rc=2).stdout
    for text in ("data 'xy'", f"s3://{BUCKET}/data-wrong/{sha[:2]}/{sha[2:]}",
                 f"expected sha256 {sha}", f"actual sha256 {hashlib.sha256(wrong).hexdigest()}",
                 "nothing was kept"):
        assert text in out, (text, out)
    assert not [f for f in (cache / "store").rglob("*") if f.is_file()]
    assert not (cache / "data").exists()


def test_push_names_a_data_file_whose_pinned_version_is_not_here(project, tmp_path, monkeypatch):
    """Changed in the working tree and not re-pinned: the pinned bytes are not here, so nothing
    is sent and the push says which entry; once the machine's store holds them, they are sent."""
    from repro.store.blobs import machine_store

    remote = tmp_path / "remote"
    set_store(project, remote.as_uri())
    fresh_cache(monkeypatch, tmp_path)
    pinned = project.data.read_bytes()
    project.data.write_bytes(pinned + b"changed, not pinned")
    proc = project.repro("push", check_rc=2)
    assert "repro: missing: data 'xy' (data/xy.npz) of" in proc.stderr, proc.stderr
    assert "neither at its path nor in this machine's store; not sent" in proc.stderr
    assert "0 of 1 data files" in proc.stdout and "1 missing" in proc.stdout, proc.stdout
    assert not remote.exists() or not [f for f in remote.rglob("*") if f.is_file()]
    sha = machine_store().put(pinned)
    out = project.repro("push", check_rc=0).stdout
    assert "1 of 1 data files" in out and (remote / sha[:2] / sha[2:]).read_bytes() == pinned, out
