"""A real MLflow tracking server on 127.0.0.1 (`mlflow server`, from the dev extra), with a
sqlite backend store and a local artifact root, for the MLflow integration's tests.

`serve()` starts one on a free port in its own process group, waits until `/health` answers,
yields it and stops the whole group. The server's background job runner (huey consumers, seven
processes, for features repro does not use) is switched off: it would take the cores the tests
share.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.s3server import free_port


@dataclass(frozen=True)
class Server:
    uri: str                  # http://127.0.0.1:PORT, the tracking URI
    root: Path                # holds mlflow.db and artifacts/
    pid: int


@contextlib.contextmanager
def serve(root: Path, timeout: float = 60.0) -> Iterator[Server]:
    """An MLflow server storing into `root` (sqlite `root/mlflow.db`, artifacts under
    `root/artifacts`, served through the server: clients need no access to the directory)."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts")],
        stdout=subprocess.DEVNULL, stderr=log, env=env, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                err = log.read().decode(errors="replace")[-3000:]
                raise RuntimeError(f"mlflow server did not start on port {port} "
                                   f"(exit {proc.poll()}): {err}")
            time.sleep(0.2)
        yield Server(uri, root, proc.pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        with contextlib.suppress(ProcessLookupError):   # workers that outlived the parent
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
