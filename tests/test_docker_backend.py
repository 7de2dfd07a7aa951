"""The docker backend against a real Docker Engine (no mocks): runs in the envs/cpu image,
bitwise with the local backend, sandboxed, and every failure a clear error with no container
left behind."""
from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from dockerutil import pin_image, repro_containers

from repro import pipeline
from tests.conftest import train_does

pytestmark = pytest.mark.slow   # a real Docker engine and image builds: `-m "not slow"` leaves them out

ROOT = Path(__file__).resolve().parents[1]
DOCKER = pipeline.Options(backend="docker")


def test_local_mlp_record_verifies_bitwise_in_the_container(cpu_image, tmp_path):
    """The digits MLP recorded with the local backend on this host (a tmp records root: the
    committed record may come from a CPU of another kind), retrained in the envs/cpu image
    (same jax/jaxlib/numpy wheels): bitwise, and the verdict says so."""
    spec = pipeline.load_spec(ROOT / "specs" / "digits-mlp.yaml")
    pinned = spec.model_copy(update={"environment": spec.environment.model_copy(
        update={"image": f"repro-jax-cpu@{cpu_image}"})})
    pinned._path = spec.path
    records = tmp_path / "records"
    rec = pipeline.record(pinned, pipeline.Options(records_root=records))
    assert rec.status == "recorded", rec.error
    v = pipeline.verify(pinned, pipeline.Options(backend="docker", records_root=records))
    assert v.status == "pass", v.error or v.rows
    assert v.bitwise is True, v.mode_reason
    assert v.fingerprint.in_container is True
    from repro.report import render
    assert "bitwise identical" in render(v)
    assert any(f"ran in container image {cpu_image}" in n for n in v.notes)


def test_record_carries_image_digest_packages_and_in_container_fingerprint(dproject, cpu_image):
    v = pipeline.record(dproject.spec, DOCKER)
    assert v.status == "recorded", v.error
    import json
    meta = json.loads((Path(v.record_path) / "record.json").read_text())
    assert meta["backend"] == "docker"
    assert meta["image"] == f"repro-jax-cpu@{cpu_image}"
    pk = meta["image_packages"]
    assert pk["count"] == len(pk["list"]) and "jax==0.10.2" in pk["list"]
    assert meta["fingerprint"]["in_container"] is True
    assert meta["fingerprint"]["jax"] == "0.10.2"
    # and the container's record verifies bitwise on the local backend (same wheels)
    local = pipeline.verify(dproject.spec)
    assert local.status == "pass" and local.bitwise is True, local.error or local.rows


def test_the_sandbox_is_what_the_docs_say(dproject):
    """Non-root, no capabilities, no-new-privileges, only loopback, read-only root."""
    train_does(dproject, '''
    import os
    status = dict(l.split(":", 1) for l in open("/proc/self/status") if ":" in l)
    try:
        open("/etc/evil", "w")
        root_writable = 1
    except OSError:
        root_writable = 0
    mounts = {l.split()[1]: l.split()[3].split(",") for l in open("/proc/self/mounts")}
    ro = lambda path: int("ro" in mounts[path])
    ctx.log(0, uid=os.getuid(), capeff=int(status["CapEff"].strip(), 16),
            nonewprivs=int(status["NoNewPrivs"].strip()),
            nets=len(os.listdir("/sys/class/net")), root_writable=root_writable,
            code_ro=ro("/work/code"), data_ro=ro(ctx.data["xy"]), harness_ro=ro("/opt/repro/repro"),
            run_ro=ro("/run"), root_ro=ro("/"))
''')
    v = pipeline.run(dproject.spec, DOCKER)
    assert v.status == "ran", v.error
    assert v.metrics_final == {**v.metrics_final, "uid": 65534, "capeff": 0, "nonewprivs": 1,
                               "nets": 1, "root_writable": 0, "code_ro": 1, "data_ro": 1,
                               "harness_ro": 1, "run_ro": 0, "root_ro": 1}


@pytest.mark.parametrize("what,code,expect", [
    ("network", 'import socket\n    socket.create_connection(("1.1.1.1", 443), timeout=5)',
     "OSError: [Errno 101] Network is unreachable"),
    ("code mount", 'open(__file__, "a").write("# pwned\\n")', ""),
    ("data mount", 'open(ctx.data["xy"], "r+b").write(b"pwned")', ""),
])
def test_hostile_training_cannot_escape(dproject, what, code, expect):
    train_does(dproject, "    " + code)
    data_before = dproject.data.read_bytes()
    v = pipeline.run(dproject.spec, DOCKER)
    assert v.status == "error"
    assert f"the training function raised: {expect}" in v.error, v.error
    if what != "network":  # not writable for user 65534, and mounted read-only besides
        assert "[Errno 13] Permission denied" in v.error or "[Errno 30] Read-only" in v.error
    assert "your frames only" in v.error_detail and "tinyproj/train.py" in v.error_detail
    assert dproject.data.read_bytes() == data_before
    from repro.paths import cache_dir
    for train in (cache_dir() / "trees").glob("*/tinyproj/train.py"):
        assert not train.read_text().endswith("# pwned\n")


def test_daemon_unreachable_is_a_clear_error(project, monkeypatch, tmp_path):
    pin_image(project, "repro-jax-cpu@sha256:" + "0" * 64)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/nothing.sock")
    v = pipeline.run(project.spec, DOCKER)
    assert v.status == "error"
    assert f"cannot reach the Docker daemon at unix://{tmp_path}/nothing.sock" in v.error
    assert "--backend local" in v.error


def test_absent_image_without_recipe(dproject, cpu_image):
    absent = "sha256:" + uuid.uuid4().hex * 2
    dproject.edit_spec(f"repro-jax-cpu@{cpu_image}", absent)
    v = pipeline.run(dproject.spec, DOCKER)
    assert v.status == "error"
    assert f"pins image {absent}, which is not present on this Docker Engine" in v.error
    assert "names no environment.recipe" in v.error


def test_wrong_digest_names_the_local_images_of_that_name(dproject, cpu_image):
    wrong = "sha256:" + uuid.uuid4().hex * 2
    dproject.edit_spec(cpu_image, wrong)
    v = pipeline.run(dproject.spec, DOCKER)
    assert v.status == "error"
    assert f"pins repro-jax-cpu@{wrong}, but no local image has that digest" in v.error
    assert "wrong digest?" in v.error and cpu_image in v.error


def test_bare_tag_is_a_spec_error(project):
    pin_image(project, "repro-jax-cpu:latest")
    v = pipeline.run(project.spec, DOCKER)
    assert v.status == "error"
    assert "environment.image" in v.error and "is not pinned by digest" in v.error


def test_spec_without_image_is_an_error_on_the_docker_backend(project):
    v = pipeline.run(project.spec, DOCKER)
    assert v.status == "error"
    assert "names no environment.image" in v.error and "--backend local" in v.error


def test_memory_limit_kill_says_so_with_the_limit(dproject):
    dproject.edit_spec("  image: ", "  memory: 600m\n  image: ")
    train_does(dproject, "    hog = np.ones((300_000_000,))  # 2.4 GB")
    v = pipeline.run(dproject.spec, DOCKER)
    assert v.status == "error"
    assert "was killed for exceeding its memory limit of 600m" in v.error, v.error


def test_timeout_kills_and_removes_the_container(dproject):
    train_does(dproject, "    import time\n    time.sleep(120)")
    v = pipeline.run(dproject.spec, pipeline.Options(backend="docker", timeout=6))
    assert v.status == "error"
    assert "timed out after 6 s and was killed" in v.error
    assert repro_containers(dproject.name) == []


def test_crash_in_user_code_shows_the_users_frames(dproject):
    train_does(dproject, '    raise ValueError(f"bad config: lr={ctx.config[\'lr\']}")')
    v = pipeline.run(dproject.spec, DOCKER)
    assert v.status == "error"
    assert "the training function raised: ValueError: bad config: lr=0.05" in v.error
    assert "/work/code/tinyproj/train.py" in v.error_detail
    assert "repro/child/runner.py" not in v.error_detail


def test_output_streams_while_the_container_runs(dproject):
    train_does(dproject, '    print("hello from the container", flush=True)')
    lines = []
    v = pipeline.run(dproject.spec, pipeline.Options(backend="docker", echo=lines.append))
    assert v.status == "ran", v.error
    assert "hello from the container" in lines


def _start_sleeping_run(dproject):
    train_does(dproject, '    print("TRAINING-STARTED", flush=True)\n'
                          '    import time\n    time.sleep(120)')
    proc = subprocess.Popen([sys.executable, "-m", "repro.cli", "run", "--backend", "docker",
                             "--stream", str(dproject.spec)], cwd=dproject.root,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "TRAINING-STARTED" in line:
            break
    assert repro_containers(dproject.name), "the container should be running now:\n" + "".join(seen)
    return proc, seen


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_leaves_no_container_behind(dproject, sig):
    proc, seen = _start_sleeping_run(dproject)
    try:
        proc.send_signal(sig)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, "".join(seen) + rest
    assert "interrupted" in rest
    assert repro_containers(dproject.name) == []


def test_interrupted_audit_on_docker_leaves_no_container(dproject, tmp_path):
    import time

    assert pipeline.record(dproject.spec).status == "recorded"  # audit verifies: needs one
    train_does(dproject, "    import time\n    time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-m", "repro.cli", "audit", "specs", "--backend",
                             "docker", "--json", str(tmp_path / "a.json")], cwd=dproject.root,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while not repro_containers(dproject.name) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert repro_containers(dproject.name), "the audit should have started a container"
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out
    assert repro_containers(dproject.name) == []


def test_a_killed_repro_process_stops_its_container(dproject):
    """SIGKILL leaves repro no time to clean up: the container notices its stdin close and
    stops at once (it stays listed, stopped, under `docker ps -a --filter label=repro`)."""
    import time

    proc, _ = _start_sleeping_run(dproject)
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        running = subprocess.run(["docker", "ps", "-q", "--filter",
                                  f"label=repro.spec={dproject.name}"],
                                 capture_output=True, text=True).stdout.split()
        if not running:
            break
        time.sleep(0.5)
    assert not running, "the container kept training after repro was killed"
    subprocess.run(["docker", "rm", "-f", *repro_containers(dproject.name)], capture_output=True)


def test_gpu_spec_without_gpu_says_what_is_missing(dproject, cpu_image):
    """No GPU on the host: the spec is skipped, saying so. A GPU that Docker cannot hand to a
    container (no NVIDIA container toolkit) is an error naming the toolkit: the engine's own
    refusal of a GPU request, asked for here for real, reads so."""
    import docker

    from repro.docker.backend import _start_error
    from repro.env.devices import gpu_visible

    dproject.edit_spec("  image: ", "  platform: gpu\n  image: ")
    v = pipeline.run(dproject.spec, DOCKER)
    if v.status == "ran":  # pragma: no cover - a machine with a GPU and the toolkit
        pytest.skip("this machine gives containers a GPU")
    if not gpu_visible():
        assert v.status == "skipped" and v.exit_code == 0
        assert f"spec '{dproject.name}' needs a GPU (environment.platform: gpu)" in v.error
    client = docker.from_env()
    box = client.containers.create(cpu_image, ["true"], device_requests=[
        docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])])
    try:
        box.start()
    except docker.errors.APIError as exc:
        err = _start_error(exc, dproject.name, True, "img")
    else:  # pragma: no cover - the engine gives containers a GPU
        pytest.skip("this Docker engine gives containers a GPU")
    finally:
        box.remove(force=True)
    assert f"spec '{dproject.name}' needs a GPU (environment.platform: gpu)" in str(err)
    assert "NVIDIA container toolkit" in str(err)
