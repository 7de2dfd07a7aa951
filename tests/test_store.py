"""The store's remote (docs/store.md): push, pull, `store verify` and the fetch a verify does,
against a real S3-compatible server on 127.0.0.1 (`rclone serve s3`, in its own process,
tests/s3server.py) through s3fs, and a file:// remote. Real runs of the checkpointing workload
of test_checkpoints.py with a 1.2 MB frozen leaf, so its state has a blob too large for git.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_checkpoints import make_ck

from conftest import BUCKET, Project, edit_train, fresh_cache, s3, set_store


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Project:
    """Recorded with a 1.2 MB leaf in every kept state: that blob is in this machine's store."""
    p = make_ck(tmp_path_factory.mktemp("store") / "proj")
    edit_train(p, "BIG = 0", "BIG = 300_000", "a 1.2 MB frozen leaf in the state")
    p.edit_spec("steps: 400", "steps: 200")
    p.commit("200 steps")
    p.repro("record", "specs/tiny.yaml", "--runs", "1", check_rc=0)
    p.commit("record")
    return p


def frozen_sha(p: Project) -> str:
    meta = json.loads((p.record_dir / "record.json").read_text())
    (leaf,) = [x for x in meta["checkpoints"]["states"]["100"] if x["path"] == "frozen"]
    assert leaf["place"] == "store" and leaf["size"] > 1 << 20
    return str(leaf["sha256"])


def record_blob_count(p: Project) -> int:
    meta = json.loads((p.record_dir / "record.json").read_text())
    return len({x["sha256"] for s in meta["checkpoints"]["states"].values() for x in s})


@pytest.mark.slow
def test_a_spec_whose_large_blob_is_only_in_s3_verifies_on_a_fresh_cache(big, s3_server, tmp_path,
                                                                         monkeypatch):
    set_store(big, f"s3://{BUCKET}/fresh")
    n = record_blob_count(big)
    out = big.repro("push", check_rc=0).stdout
    assert f"push s3://{BUCKET}/fresh: sent {n} of {n} blobs (0 already there) and 1 of 1 data " \
           "files (0 already there)" in out, out           # the spec's data file goes too
    sha = frozen_sha(big)
    assert s3().info(f"{BUCKET}/fresh/{sha[:2]}/{sha[2:]}")["size"] > 1 << 20   # same layout
    again = big.repro("push", check_rc=0).stdout
    assert f"sent 0 of {n} blobs ({n} already there)" in again, again
    cache = fresh_cache(monkeypatch, tmp_path)
    out = big.repro("verify", "specs/tiny.yaml", "--no-stream", check_rc=0).stdout
    assert "PASS tiny" in out, out
    assert (cache / "store" / sha[:2] / sha[2:]).is_file()   # fetched by hash before training
    out = big.repro("store", "verify", "--remote", check_rc=0).stdout
    assert f"re-hashed {n + 1} of {n + 1} blobs" in out and "; ok" in out, out   # + the data


@pytest.mark.slow
def test_a_corrupt_remote_blob_is_named_and_never_used(big, s3_server, tmp_path, monkeypatch):
    set_store(big, f"s3://{BUCKET}/corrupt")
    big.repro("push", check_rc=0)
    sha = frozen_sha(big)
    key = f"{BUCKET}/corrupt/{sha[:2]}/{sha[2:]}"
    fs = s3()
    data = bytearray(fs.cat_file(key))
    data[-1] ^= 1
    fs.pipe_file(key, bytes(data))            # same size: a push would not replace it
    actual = hashlib.sha256(data).hexdigest()
    cache = fresh_cache(monkeypatch, tmp_path)
    proc = big.repro("verify", "specs/tiny.yaml", "--no-stream", check_rc=2)
    for text in (sha, actual, f"s3://{key}", "is corrupt", "not used", "step 100, leaf frozen"):
        assert text in proc.stdout, (text, proc.stdout)
    assert "trained" not in proc.stdout.lower()
    proc = big.repro("pull", check_rc=2)
    assert f"blob {sha} at s3://{key} is corrupt: expected sha256 {sha}, actual {actual}" in proc.stderr
    store = cache / "store"
    assert not (store / sha[:2] / sha[2:]).exists()
    assert not [f for f in store.rglob("*") if f.is_file() and f.stat().st_size > 1 << 20]  # no temp left
    proc = big.repro("store", "verify", "--remote", check_rc=2)
    assert "1 corrupt" in proc.stdout and sha in proc.stderr, proc.stdout + proc.stderr


def test_without_a_remote_a_missing_blob_is_named_before_training(big, tmp_path, monkeypatch):
    (big.root / "pyproject.toml").unlink(missing_ok=True)
    monkeypatch.delenv("REPRO_STORE", raising=False)
    fresh_cache(monkeypatch, tmp_path)
    out = big.repro("verify", "specs/tiny.yaml", "--no-stream", check_rc=2).stdout
    assert "step 100, leaf frozen" in out and "repro pull" in out, out
    assert "no store remote is configured" in out, out


def test_a_file_remote_takes_the_same_layout_and_pull_rehashes(big, tmp_path, monkeypatch):
    remote = tmp_path / "remote"
    set_store(big, remote.as_uri())
    n = record_blob_count(big)
    big.repro("push", check_rc=0)
    files = [f for f in remote.rglob("*") if f.is_file()]
    assert len(files) == n + 1 and not [f for f in remote.rglob(".tmp-*")]   # + the data file
    data_sha = hashlib.sha256(big.data.read_bytes()).hexdigest()
    assert (remote / data_sha[:2] / data_sha[2:]).is_file()
    assert all(hashlib.sha256(f.read_bytes()).hexdigest() == f.parent.name + f.name for f in files)
    cache = fresh_cache(monkeypatch, tmp_path)
    out = big.repro("pull", check_rc=0).stdout
    assert "fetched 1 of 1 blobs" in out, out     # only the large blob: the rest are in git
    sha = frozen_sha(big)
    assert (cache / "store" / sha[:2] / sha[2:]).is_file()
    out = big.repro("store", "verify", "--sample", "0.5", "--seed", "7", check_rc=0).stdout
    assert "sample seed 7" in out, out
    # a local blob damaged after the pull: store verify names it (exit 2)
    blob = cache / "store" / sha[:2] / sha[2:]
    blob.chmod(0o644)
    blob.write_bytes(blob.read_bytes()[:-1] + b"\x01")
    proc = big.repro("store", "verify", check_rc=2)
    assert f"blob {sha} at {blob} is corrupt" in proc.stderr, proc.stderr
    blob.unlink()
    proc = big.repro("store", "verify", check_rc=2)
    assert "1 missing" in proc.stdout and "leaf frozen" in proc.stderr, proc.stdout + proc.stderr


PUSHER = """
import sys
from pathlib import Path
from repro.store.sync import BlobRef, Project, push
from repro.store.remote import RemoteConfig
from repro.store.blobs import machine_store

shas = [s for s in machine_store().shas()]
refs = [BlobRef(s, machine_store().path(s).stat().st_size, "store", Path("."), f"leaf{i}")
        for i, s in enumerate(shas)]
out = push(Project(RemoteConfig(sys.argv[1]), refs, Path(".")), jobs=int(sys.argv[2]))
print(out.done, out.skipped, out.exit_code)
"""


def test_a_push_killed_part_way_rerun_sends_only_the_rest(s3_server, tmp_path, monkeypatch):
    from repro.store.blobs import machine_store

    fresh_cache(monkeypatch, tmp_path, "pusher-cache")
    store = machine_store()
    rng = __import__("random").Random(0)
    total = 400
    for _ in range(total):
        store.put(rng.randbytes(64 << 10))
    script = tmp_path / "pusher.py"
    script.write_text(PUSHER)
    url = f"s3://{BUCKET}/killed"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, str(script), url, "1"], env=env,
                            stdout=subprocess.PIPE, text=True)
    fs = s3()
    deadline = time.monotonic() + 120
    while len(fs.find(f"{BUCKET}/killed")) < 20:
        assert proc.poll() is None and time.monotonic() < deadline, "the push ended too soon"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    sent_before = len(fs.find(f"{BUCKET}/killed"))
    assert 20 <= sent_before < total
    rerun = subprocess.run([sys.executable, str(script), url, "8"], env=env, capture_output=True,
                           text=True, check=True)
    done, skipped, code = map(int, rerun.stdout.split())
    assert (done, skipped, code) == (total - sent_before, sent_before, 0)
    found = fs.find(f"{BUCKET}/killed", detail=True)
    assert len(found) == total
    assert all(info["size"] == 64 << 10 for info in found.values())
    for key in list(found)[:: 37]:   # whole blobs under their names: no partial object
        assert hashlib.sha256(fs.cat_file(key)).hexdigest() == "".join(key.split("/")[-2:])


def test_the_remote_is_named_in_pyproject_and_fsspec_loads_lazily(tmp_path, monkeypatch):
    from repro.errors import StoreError
    from repro.store.remote import find_remote_config, remote_config

    monkeypatch.delenv("REPRO_STORE", raising=False)
    (tmp_path / "pyproject.toml").write_text('[tool.repro]\nstore = "s3://b/p"\n'
                                             'store_options = {endpoint_url = "http://x"}\n')
    deep = tmp_path / "fixtures" / "records" / "tiny" / "cpu"
    deep.mkdir(parents=True)
    config = find_remote_config(deep)
    assert config is not None and config.url == "s3://b/p"
    assert config.options == {"endpoint_url": "http://x"}
    monkeypatch.setenv("REPRO_STORE", "file:///elsewhere")
    assert remote_config(tmp_path).url == "file:///elsewhere"
    (tmp_path / "pyproject.toml").write_text('[tool.repro]\nstore = 3\n')
    monkeypatch.delenv("REPRO_STORE")
    with pytest.raises(StoreError, match="must be an fsspec URL"):
        remote_config(tmp_path)
    code = "import sys, repro.record, repro.cli; print('fsspec' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_an_http_remote_is_read_only(tmp_path):
    from repro.errors import StoreError
    from repro.store.remote import Remote, RemoteConfig

    remote = Remote(RemoteConfig("https://example.invalid/store"))
    with pytest.raises(StoreError, match="read-only"):
        remote.upload("a" * 64, b"x")
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_store_options_reach_s3fs_without_the_aws_endpoint_variable(s3_server, monkeypatch):
    from repro.store.remote import Remote, RemoteConfig

    monkeypatch.delenv("AWS_ENDPOINT_URL")
    remote = Remote(RemoteConfig(f"s3://{BUCKET}/opts", {"endpoint_url": s3_server,
                                                         "skip_instance_cache": True,
                                                         "config_kwargs": {"read_timeout": 30}}))
    # the project's botocore settings are kept; repro adds only what it checks itself (a read is
    # re-hashed with sha256, so botocore's CRC32 of the same bytes is not asked for)
    assert remote.fs.config_kwargs == {"read_timeout": 30,
                                       "response_checksum_validation": "when_required"}
    data = b"a blob named by its hash"
    sha = hashlib.sha256(data).hexdigest()
    assert remote.size(sha) is None
    remote.upload(sha, data)
    assert remote.size(sha) == len(data) and remote.listing() == {sha: len(data)}
    assert remote.url(sha) == f"s3://{BUCKET}/opts/{sha[:2]}/{sha[2:]}"
    # the PUT carried the blob's name as its SHA-256 checksum, for S3 to refuse other bytes
    head = remote.fs.call_s3("head_object", Bucket=BUCKET, Key=f"opts/{sha[:2]}/{sha[2:]}",
                             ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == base64.b64encode(bytes.fromhex(sha)).decode(), head


def test_a_checksummed_put_is_not_payload_signed_unless_the_project_says_so(s3_server):
    """A PUT that carries the blob's sha256 as its checksum is signed without hashing its body
    over plain http (as botocore does over https): what the real server received says which.
    A project's own `payload_signing_enabled` wins."""
    import s3fs

    from repro.store.remote import Remote, RemoteConfig

    def sent_with(options: dict) -> str:
        s3fs.S3FileSystem.clear_instance_cache()   # each remote its own client (and hooks)
        remote = Remote(RemoteConfig(f"s3://{BUCKET}/signing", options))
        data = os.urandom(4096)
        sha = hashlib.sha256(data).hexdigest()
        seen: list[str] = []
        remote.fs.connect()
        remote.fs.s3.meta.events.register(
            "before-send.s3.PutObject",
            lambda request, **_: seen.append(request.headers["x-amz-content-sha256"].decode()))
        remote.upload(sha, data)
        assert remote.listing()[sha] == len(data)                 # the server took it whole
        assert len(seen) == 1
        return seen[0]

    assert sent_with({}) == "UNSIGNED-PAYLOAD"
    signed = sent_with({"config_kwargs": {"s3": {"payload_signing_enabled": True}}})
    assert len(signed) == 64 and signed != "UNSIGNED-PAYLOAD"      # the body's sha256


@pytest.mark.slow
def test_damaged_or_linked_local_blobs_are_repaired_by_pull_and_verify_and_never_recorded(
        big, s3_server, tmp_path, monkeypatch):
    """Issue 25, item 3: a local store blob of the right name and size but damaged bytes, or a
    link in its place, is no blob: `repro pull` fetches it again (it used to say "already there;
    ok"), a verify's fetch replaces it before training, and `put` (what `repro record` calls)
    rewrites it instead of recording against it. The advice for one is `repro pull`."""
    from repro.store.blobs import BlobStore

    set_store(big, f"s3://{BUCKET}/repair")
    big.repro("push", check_rc=0)
    sha = frozen_sha(big)
    cache = fresh_cache(monkeypatch, tmp_path)
    big.repro("pull", check_rc=0)
    blob = cache / "store" / sha[:2] / sha[2:]
    good = blob.read_bytes()

    def damage() -> None:
        blob.chmod(0o644)
        blob.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))   # same name, same size

    damage()
    out = big.repro("pull", check_rc=0).stdout
    assert "fetched 1 of 1 blobs" in out, out
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == sha

    damage()
    out = big.repro("verify", "specs/tiny.yaml", "--no-stream", check_rc=0).stdout
    assert "PASS tiny" in out, out
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == sha

    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(good)
    blob.unlink()
    blob.symlink_to(elsewhere)                 # a link, even to the right bytes, is not a blob
    out = big.repro("pull", check_rc=0).stdout
    assert "fetched 1 of 1 blobs" in out and not blob.is_symlink(), out

    damage()
    store = BlobStore(cache / "store")
    assert store.put(good) == sha and hashlib.sha256(blob.read_bytes()).hexdigest() == sha

    from repro.errors import RecordError
    from repro.store.blobs import machine_store
    damage()
    with pytest.raises(RecordError, match="delete it and run `repro pull`"):
        machine_store().get(sha, "the frozen leaf")


@pytest.mark.parametrize("size", [1000, 80 << 20])   # one GET; streamed in pieces
def test_a_remote_blob_that_never_ends_is_read_to_its_size_and_found_corrupt(tmp_path, size):
    """Issue 25, item 2: a blob of known size is read to at most size + 1 bytes. A remote whose
    blob is an endless stream (here /dev/zero in a file:// remote's place) is corrupt, named,
    and nothing is kept: memory and disk stay bounded."""
    from repro.store.blobs import BlobStore
    from repro.store.remote import CorruptBlob, Remote, RemoteConfig

    sha = "ab" * 32
    remote = tmp_path / "remote"
    (remote / sha[:2]).mkdir(parents=True)
    (remote / sha[:2] / sha[2:]).symlink_to("/dev/zero")
    store = BlobStore(tmp_path / "store")
    with pytest.raises(CorruptBlob, match=f"blob {sha}"):
        Remote(RemoteConfig(remote.as_uri())).download(sha, store, size)
    assert not store.has(sha) and not [f for f in store.root.rglob("*") if f.is_file()]


WRITER = """
import sys, time
from pathlib import Path
from repro.store.blobs import BlobStore

def chunks():
    yield b"x" * 1000
    time.sleep(60)   # killed here, mid-write
    yield b""

BlobStore(Path(sys.argv[1])).install("cd" * 32, chunks())
"""


def test_a_writer_killed_mid_download_leaves_nothing_for_good(tmp_path):
    """Issue 25, item 2: `kill -9` mid-download used to leave a `.tmp-*` file for good. The
    temporary carries its writer's pid; the next writer in that directory, and `store verify`,
    remove those of writers that are gone, never a live one's."""
    import signal as _signal

    from repro.store.blobs import BlobStore

    root = tmp_path / "store"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(root)])
    deadline = time.time() + 30
    while time.time() < deadline and not list(root.glob("cd/.tmp-*")):
        time.sleep(0.05)
    (left,) = list(root.glob("cd/.tmp-*"))
    assert left.name.startswith(f".tmp-{proc.pid}-")
    live = root / "cd" / f".tmp-{os.getpid()}-mine"   # this process is alive: kept
    live.write_bytes(b"y")
    proc.send_signal(_signal.SIGKILL)
    proc.wait(timeout=30)
    assert left.exists()                       # what kill -9 leaves
    store = BlobStore(root)
    assert store.sweep() == [left] and not left.exists() and live.exists()


def test_remote_errors_name_the_remote_not_a_bug_in_repro(big, tmp_path, monkeypatch):
    """Issue 25, item 8: an unreachable S3 endpoint, an option s3fs does not take, and a file://
    remote with a directory at a blob's name are clear errors naming the remote (exit 2), never
    "internal error (a bug in repro)" with a botocore traceback, nor a push that says "ok"."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    set_store(big, f"s3://{BUCKET}/nowhere", '{endpoint_url = "http://127.0.0.1:9", config_kwargs = '
              '{connect_timeout = 1, retries = {max_attempts = 1}}}')
    proc = big.repro("push", check_rc=2)
    assert f"the store remote s3://{BUCKET}/nowhere" in proc.stderr and "EndpointConnectionError" in \
        proc.stderr and "is the endpoint up" in proc.stderr, proc.stderr
    assert "internal error" not in proc.stderr + proc.stdout and "Traceback" not in proc.stderr
    set_store(big, f"s3://{BUCKET}/bogus", "{bogus_key = 1}")
    proc = big.repro("push", check_rc=2)
    assert "does not take?" in proc.stderr and "bogus_key" in proc.stderr, proc.stderr
    remote = tmp_path / "remote"
    set_store(big, remote.as_uri())
    sha = frozen_sha(big)
    (remote / sha[:2] / sha[2:] / "inner").mkdir(parents=True)   # a directory at the blob's name
    proc = big.repro("push", check_rc=2)
    assert "a directory stands at blob" in proc.stderr, proc.stdout + proc.stderr
    assert not [f for f in (remote / sha[:2] / sha[2:]).rglob("*") if f.is_file()]


def test_a_redirect_loop_is_named_as_one(tmp_path, monkeypatch):
    import http.server
    import threading

    from repro.errors import DataPinError
    from repro.pins.fetch import fetch_data

    class Loop(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_HEAD(self) -> None:
            self.send_response(302)
            self.send_header("Location", self.path)
            self.end_headers()

        do_GET = do_HEAD

    fresh_cache(monkeypatch, tmp_path)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Loop)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(DataPinError, match="redirects without end"):
            fetch_data("x", "data/x.bin", "0" * 64, f"http://127.0.0.1:{server.server_address[1]}/x",
                       tmp_path)
    finally:
        server.shutdown()
        server.server_close()
