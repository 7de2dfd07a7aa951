"""A real two-node Ray cluster on this machine, for the `--engine ray` tests and bench.

Node A is started as usual; node B inside its own mount namespace in which `hidden` (pytest's
temporary directory: every test project) is covered by an empty tmpfs, so a task on node B
genuinely cannot read a project's working tree. Each node has its own temp dir, working
directory, repro cache (`$REPRO_CACHE_DIR`) and a custom resource naming its kind (`node_a`,
`node_b`). Stopped by killing only its own processes (its process groups and those naming its
temp dir), never `ray stop`, which would stop every cluster on the machine.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(cmd: list[str], base: Path, node: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "REPRO_CACHE_DIR": str(base / f"cache-{node}"),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "RAY_USAGE_STATS_ENABLED": "0"}
    cwd = base / f"cwd-{node}"
    cwd.mkdir()
    return subprocess.Popen(cmd, cwd=cwd, env=env, start_new_session=True,
                            stdout=open(base / f"{node}.log", "wb"), stderr=subprocess.STDOUT)


def _node(node: str, base: Path) -> list[str]:
    return ["--block", "--num-cpus=1", "--num-gpus=0", f"--resources={json.dumps({f'node_{node}': 1})}",
            f"--temp-dir={base / ('ray-' + node)}", "--object-store-memory=80000000",
            "--disable-usage-stats", "--node-ip-address=127.0.0.1"]


def _ours(base: Path, groups: list[int]) -> list[int]:
    """Processes of this cluster: in the nodes' process groups or naming its temp dir."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().decode(errors="replace")
            if os.getpgid(int(entry.name)) in groups or str(base) in cmd:
                pids.append(int(entry.name))
        except (OSError, ProcessLookupError):
            continue
    return pids



class Cluster:
    """The two nodes: `start` launches them (node B as soon as the head answers, in a thread),
    `ready` waits until both are in and connects this process as a driver, `stop` ends them."""

    def __init__(self, hidden: Path):
        self.hidden = hidden
        self.base = Path(tempfile.mkdtemp(prefix="rr-", dir="/tmp"))   # short: unix socket paths
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.nodes: list[subprocess.Popen[bytes]] = []
        self.ray_bin = shutil.which("ray") or "ray"
        self._b = threading.Thread(target=self._start_b, daemon=True)
        self._failure = ""

    def cache(self, node: str) -> Path:
        return self.base / f"cache-{node}"

    def start(self) -> Cluster:
        self.nodes.append(_start([self.ray_bin, "start", "--head", f"--port={self.port}",
                                  "--include-dashboard=false", *_node("a", self.base)], self.base, "a"))
        self._b.start()
        return self

    def _start_b(self) -> None:
        deadline = time.monotonic() + 90
        while True:   # the head's GCS answers
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                if self.nodes[0].poll() is not None or time.monotonic() > deadline:
                    self._failure = (self.base / "a.log").read_text()
                    return
                time.sleep(0.2)
        # node B: its own mount namespace, where `hidden` (the projects) is an empty tmpfs
        self.nodes.append(_start(["unshare", "-m", "sh", "-c", 'mount -t tmpfs tmpfs "$1" && shift && exec "$@"',
                                  "sh", str(self.hidden), self.ray_bin, "start", f"--address={self.address}",
                                  *_node("b", self.base)], self.base, "b"))

    def ready(self) -> Cluster:
        import ray

        self._b.join()
        assert not self._failure and len(self.nodes) == 2, f"node A did not start: {self._failure}"
        deadline = time.monotonic() + 90
        ray.init(address=self.address, logging_level="ERROR", log_to_driver=False)
        while ray.cluster_resources().get("node_b", 0) < 1:
            assert self.nodes[1].poll() is None and time.monotonic() < deadline, \
                (self.base / "b.log").read_text()
            time.sleep(0.3)

        @ray.remote(num_cpus=0, resources={"node_b": 1})
        def look(path: str) -> list[str]:
            return os.listdir(path)
        assert os.listdir(self.hidden) and ray.get(look.remote(str(self.hidden))) == [], \
            "node B must not see the projects"
        return self

    def stop(self) -> None:
        import ray

        ray.shutdown()
        self._b.join()
        groups = [p.pid for p in self.nodes]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in _ours(self.base, groups):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            time.sleep(2 if sig == signal.SIGTERM else 0)
        for p in self.nodes:
            p.wait(10)
        shutil.rmtree(self.base, ignore_errors=True)


@contextlib.contextmanager
def two_nodes(hidden: Path) -> Iterator[Cluster]:
    """Start the cluster (this process is connected to it as a driver), yield it, stop it."""
    cluster = Cluster(hidden)
    try:
        yield cluster.start().ready()
    finally:
        cluster.stop()
