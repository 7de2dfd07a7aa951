"""Multi-process runs (environment.processes, docs/sharding.md): P runner processes joined by
jax.distributed (gloo on CPU), process 0 writing the run's output with values gathered from
all, a dying process failing the whole run and taking the others with it.

The workload is a tiny 2-layer MLP, data-parallel over `{data: 4}`: 2 processes x 2 forced CPU
devices. Real jax.distributed, real processes, real git; no mocks.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import textwrap
import time
from pathlib import Path

import pytest

from conftest import Project, build_workload, sha256
from repro.env.fingerprint import Fingerprint
from repro.spec import EnvironmentSpec

MP_PY = '''
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P


def train(ctx):
    mesh = ctx.mesh
    me = jax.process_index()
    where = ctx.config.get("pids_dir")
    where = where if where and os.path.isdir(where) else None   # only while a kill test waits
    d = np.load(ctx.data["xy"])
    batch = NamedSharding(mesh, P("data", None))
    x = jax.device_put(np.asarray(d["x"], np.float32), batch)
    y = jax.device_put(np.asarray(d["y"], np.float32), batch)
    k1, k2 = jax.random.split(ctx.key("params"))
    rep = NamedSharding(mesh, P())
    put = lambda a: jax.device_put(np.asarray(a), rep)   # the same host value in every process
    params = {"hidden": {"w": put(jax.random.normal(k1, (4, 8)) * 0.3), "b": put(np.zeros((8,), np.float32))},
              "out": {"w": put(jax.random.normal(k2, (8, 1)) * 0.3), "b": put(np.zeros((1,), np.float32))}}

    def loss_fn(p, x, y):
        h = jnp.tanh(x @ p["hidden"]["w"] + p["hidden"]["b"])
        return jnp.mean((h @ p["out"]["w"] + p["out"]["b"] - y) ** 2)

    lr = ctx.config["lr"]
    step_fn = jax.jit(jax.value_and_grad(loss_fn))
    update = jax.jit(lambda p, g: jax.tree_util.tree_map(lambda a, b: a - lr * b, p, g))
    start, params = ctx.restore(params)   # a kept state: gathered from both, restored onto the mesh
    if start:
        assert all(leaf.sharding.mesh.shape == mesh.shape and not leaf.is_fully_addressable
                   for leaf in jax.tree_util.tree_leaves(params)), "not restored onto the global mesh"
    for step in range(start, ctx.config["steps"]):
        if step == 2 and me == ctx.config.get("fail_in", -1):
            raise FloatingPointError(f"process {me} gives up at step {step}")
        loss, g = step_fn(params, x, y)
        params = update(params, g)
        ctx.log(step, loss=loss)
        ctx.log_grads(step, g)
        ctx.checkpoint(step + 1, params)
        if where:   # the kill test: say who is where (after a step's output), then wait to be killed
            print(f"process {me} at step {step}", flush=True)
            if step == 0:
                path = os.path.join(where, f"{me}.pid")
                with open(path + ".tmp", "w") as f:
                    f.write(f"{os.getpid()}")
                os.replace(path + ".tmp", path)
            time.sleep(0.5)
    host = {"process": me, "pid": os.getpid(), "node": os.environ.get("REPRO_TEST_NODE", "")}
    print("PLACEMENT " + repr(host), flush=True)
    return params
'''

SPEC = '''\
repro: 1
name: mp
code:
  commit: {commit}
  entrypoint: tinyproj.train:train
data:
  xy:
    path: data/xy.npz
    sha256: {sha}
environment:
  processes: {processes}
  devices: {devices}
  mesh: {{data: 4}}
seeds: {{params: 0}}
config: {{lr: 0.05, steps: {steps}{extra}}}
record:
  metrics: [loss]
  grads: {{every: 2}}
  runs: 1{record_extra}
'''


def make_mp(root: Path, processes: int = 2, devices: int = 2, steps: int = 6, extra: str = "",
            record_extra: str = "") -> Project:
    p, _ = build_workload(root)
    p.write("tinyproj/train.py", textwrap.dedent(MP_PY))
    commit = p.commit("multi-process workload")
    p.write("specs/mp.yaml", SPEC.format(commit=commit, sha=sha256(p.data), processes=processes,
                                         devices=devices, steps=steps, extra=extra,
                                         record_extra=record_extra))
    p.commit("spec")
    return p


# -- the spec -----------------------------------------------------------------------------------
def test_processes_is_validated_and_absent_at_its_default():
    assert "processes" not in EnvironmentSpec().model_dump()
    env = EnvironmentSpec(processes=2, mesh={"data": 4})
    assert env.devices == 2 and env.model_dump()["processes"] == 2   # the mesh over processes
    with pytest.raises(ValueError, match=r"mesh data=4 has 4 places but devices x processes is "
                                         r"4 x 2 = 8; make the sizes multiply to devices x processes"):
        EnvironmentSpec(processes=2, devices=4, mesh={"data": 4})
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        EnvironmentSpec(processes=0)


def test_process_count_round_trips_and_old_fingerprints_stay_byte_identical():
    old = {"jax": "0.10.2", "device_count": 4, "mesh": [["data", 4]], "cpus": 1}
    assert Fingerprint.from_json(old).to_json() == old and Fingerprint.from_json(old).process_count is None
    new = {**old, "process_count": 2}
    fp = Fingerprint.from_json(new)
    assert fp.to_json() == new and list(fp.to_json()) == list(new) and fp.process_count == 2
    assert ("process_count", None, 2, True) in Fingerprint.from_json(old).changes(fp)


# -- record, verify, a process killed --------------------------------------------------------------
def mp_record(p: Project) -> Path:
    return p.root / "fixtures" / "records" / "mp" / "cpu"


@pytest.mark.slow
def test_two_processes_of_two_devices_record_and_verify_bitwise(tmp_path):
    p = make_mp(tmp_path / "proj")
    out = p.repro("record", "specs/mp.yaml", check_rc=0).stdout
    assert "RECORDED mp [cpu]" in out, out
    meta = json.loads((mp_record(p) / "record.json").read_text())
    fp = meta["fingerprint"]
    assert fp["process_count"] == 2 and fp["device_count"] == 4 and fp["mesh"] == [["data", 4]]
    assert "--xla_force_host_platform_device_count=2" in fp["settings"]["XLA_FLAGS"]   # per process
    assert meta["spec"]["canonical"]["environment"]["processes"] == 2
    # global values, gathered from both processes: the full shapes
    assert meta["arrays"]["index"]["weights/hidden/w"]["shape"] == [4, 8]
    assert meta["shardings"]["grads/2/hidden/w"] == []   # replicated over the 4-device mesh
    out = p.repro("verify", "specs/mp.yaml", "--no-stream", check_rc=0).stdout
    assert "PASS mp [cpu] bitwise identical" in out, out


@pytest.mark.slow
def test_a_multi_process_spec_replays_its_segments_and_passes_the_restart_check(tmp_path):
    """Kept states of a 2-process run are global values gathered from both processes; a
    replayed segment restores them in every process onto the global mesh (the workload asserts
    it), and the segments and the restart check are bitwise."""
    p = make_mp(tmp_path / "proj", record_extra="\n  checkpoints: {every: 2}")
    out = p.repro("record", "specs/mp.yaml", check_rc=0).stdout
    assert "RECORDED mp [cpu]" in out, out
    meta = json.loads((mp_record(p) / "record.json").read_text())
    assert sorted(meta["checkpoints"]["states"], key=int) == ["2", "4", "6"], meta["checkpoints"]
    out = p.repro("verify", "specs/mp.yaml", "--no-stream", "--segments", "all", check_rc=0).stdout
    assert "PASS mp [cpu] bitwise identical" in out and "3 of 3 segments" in out, out
    out = p.repro("verify", "specs/mp.yaml", "--no-stream", "--resume-check", check_rc=0).stdout
    assert "PASS mp [cpu] bitwise identical" in out and "restored at step 2" in out, out


def _runner_pids(marker: str) -> list[int]:
    """Live processes whose command line holds `marker` (the run directory's name)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if marker in cmdline and "repro.child.runner" in cmdline and state != "Z":
            found.append(int(name))
    return found


def _wait_for(path: Path, seconds: float) -> None:
    end = time.monotonic() + seconds
    while not path.exists():
        assert time.monotonic() < end, f"{path} did not appear in {seconds} s"
        time.sleep(0.05)


def test_a_killed_process_fails_the_run_naming_it_and_leaves_nothing_running(tmp_path):
    import subprocess
    import sys

    pids_dir = tmp_path / "pids"
    pids_dir.mkdir()
    p = make_mp(tmp_path / "proj", steps=40, extra=f", pids_dir: {pids_dir}")
    cli = subprocess.Popen([sys.executable, "-m", "repro.cli", "record", "specs/mp.yaml"],
                           cwd=p.root, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        for k in (0, 1):
            _wait_for(pids_dir / f"{k}.pid", 60)
        marker = f"repro-{cli.pid}-"
        runners = _runner_pids(marker)
        assert len(runners) == 2, runners
        (job,) = Path("/tmp").glob(f"{marker}*/job.json")
        port = int(json.loads(job.read_text())["coordinator"].rsplit(":", 1)[1])
        victim = int((pids_dir / "1.pid").read_text())
        os.kill(victim, signal.SIGKILL)
        out, _ = cli.communicate(timeout=60)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    assert cli.returncode == 2, out
    assert f"process 1 of 2 (pid {victim}) was killed by SIGKILL" in out, out
    # the tail shown is the killed process's own output, not process 0's
    assert "process 1 at step 0" in out and "process 0 at step" not in out, out
    assert _runner_pids(marker) == [], "a runner outlived the run"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as any server binds
        sock.bind(("127.0.0.1", port))                               # the coordinator's port is free
        sock.listen()


def test_a_process_that_raises_fails_the_run_with_its_own_traceback(tmp_path):
    p = make_mp(tmp_path / "proj", extra=", fail_in: 1")
    out = p.repro("record", "specs/mp.yaml").stdout
    assert "ERROR mp" in out and re.search(r"process 1 of 2 \(pid \d+\) exited with code 3", out), out
    # process 1's own failure, as its runner printed it (nobody reads its run.json)
    assert "FloatingPointError: process 1 gives up at step 2" in out, out


def test_the_docker_backend_refuses_a_multi_process_spec_naming_what_runs_one(tmp_path):
    p = make_mp(tmp_path / "proj")
    proc = p.repro("record", "specs/mp.yaml", "--backend", "docker")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "environment.processes is 2: the docker backend runs one process per spec" in proc.stdout, proc.stdout
    assert "--backend local" in proc.stdout and "--engine ray" in proc.stdout
