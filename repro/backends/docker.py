"""The docker backend: the same child runner, in a fresh sandboxed container of the pinned image.

The pipeline resolves the spec's image pin first (`repro.pins.image`) and hands this backend an
`env_spec` whose `image` is the Id of the local image to run. The container gets

- the harness package, read-only, at /opt/repro/repro (PYTHONPATH=/opt/repro): an image needs
  only python3 and the user's dependencies (the runner imports numpy and jax, never pydantic);
- the code tree read-only at /work/code, each data file or directory read-only at
  /work/data/<name>/<basename> (job.json is rewritten to those paths), the run directory
  writable at /run, and (unless --no-compile-cache) a per-image JAX compilation cache;
- no network, user 65534:65534, every capability dropped, no-new-privileges, a read-only root
  with a tmpfs /tmp (HOME=/tmp), memory and pids limits (spec, else ini/options, else defaults);
- the environment `child_environment` builds, from nothing on the host (no PATH, no
  LD_LIBRARY_PATH: the image's own PATH stays); GPUs through `device_requests` for
  `platform: gpu`, with the GPU determinism flags in XLA_FLAGS.

The container is labelled `repro` and `repro.spec=<name>` and removed afterwards — on success,
on failure, on timeout and on Ctrl-C. Its output streams line by line like a local child's.
"""
from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import repro
from repro.backends.base import ChildOutcome, RunDir, pump_output
from repro.engine import LABEL, LABEL_SPEC, EngineError, connect
from repro.pins.env import child_environment, compile_cache_env

HARNESS_MOUNT = "/opt/repro/repro"
CODE_MOUNT = "/work/code"
DATA_MOUNT = "/work/data"
RUN_MOUNT = "/run"            # the run's out/ directory: the container's one writable mount
JOB_MOUNT = "/job/job.json"   # read-only
CACHE_MOUNT = "/cache/jax"
SANDBOX_UID = 65534
DEFAULT_MEMORY = "4g"
DEFAULT_PIDS = 1024


def bind(source, target: str, read_only: bool = True):
    """A bind mount (Mount objects, not a volumes dict: two data entries may share a file, and
    host paths may hold ':')."""
    from docker.types import Mount

    return Mount(target, str(source), type="bind", read_only=read_only)


def harness_volume() -> list:
    return [bind(Path(repro.__file__).resolve().parent, HARNESS_MOUNT)]


def sandbox_config(memory: str | int, pids: int) -> dict:
    """The docker SDK arguments every repro container gets."""
    return dict(network_mode="none", user=f"{SANDBOX_UID}:{SANDBOX_UID}", cap_drop=["ALL"],
                security_opt=["no-new-privileges"], read_only=True,
                tmpfs={"/tmp": "rw,nosuid,nodev,size=1g"}, mem_limit=memory,
                memswap_limit=memory, pids_limit=pids, working_dir="/")


class DockerBackend:
    name = "docker"

    def run(self, job: dict, run_dir: RunDir, tree: Path, env_spec, timeout: float,
            echo=False) -> ChildOutcome:
        import docker

        client = connect()
        image = env_spec.image
        if not image:
            raise EngineError("the docker backend needs environment.image (resolved by the "
                              "pipeline; see repro.pins.image)")
        spec_name = job.get("spec") or "spec"
        memory = getattr(env_spec, "memory", None) or DEFAULT_MEMORY
        pids = getattr(env_spec, "pids", None) or DEFAULT_PIDS
        mounts = harness_volume() + [bind(Path(tree).resolve(), CODE_MOUNT)]
        data = {}
        for name, path in (job.get("data") or {}).items():
            inside = f"{DATA_MOUNT}/{name}/{Path(path).name}"
            mounts.append(bind(Path(path).resolve(), inside))
            data[name] = inside
        _make_writable(run_dir.out)
        mounts.append(bind(run_dir.out, RUN_MOUNT, read_only=False))
        mounts.append(bind(run_dir.job, JOB_MOUNT))
        env, _ = child_environment(env_spec, [str(Path(HARNESS_MOUNT).parent)], inherited={})
        _, dropped = child_environment(env_spec, [])
        env["HOME"] = "/tmp"
        if job.get("compile_cache"):
            cache = _compile_cache_dir(job["compile_cache"], image)
            mounts.append(bind(cache, CACHE_MOUNT, read_only=False))
            env.update(compile_cache_env(CACHE_MOUNT))
        inner = dict(job, tree=CODE_MOUNT, data=data, list_packages=True, compile_cache=None,
                     parent_pid=None, watch_stdin=True)  # PID 1 in its container: it
        # watches its stdin instead, which this process holds open until the run ends
        run_dir.job.write_text(json.dumps(inner, indent=1))

        extra = {}
        if env_spec.platform == "gpu":
            extra["device_requests"] = [docker.types.DeviceRequest(count=-1,
                                                                   capabilities=[["gpu"]])]
        cname = f"repro-{spec_name[:40]}-{uuid.uuid4().hex[:10]}"
        outcome = ChildOutcome(returncode=None, dropped_env=dropped)
        container = stdin = None
        restore = _sigterm_interrupts()
        try:
            try:
                # detach=False + stdin_open: the SDK sets StdinOnce, so the container's stdin
                # closes when this process's attach socket does (on exit, or when killed)
                container = client.containers.create(
                    image, ["python3", "-P", "-m", "repro.runner", JOB_MOUNT, RUN_MOUNT], name=cname,
                    environment=env, mounts=mounts, stdin_open=True, tty=False,
                    labels={LABEL: "1", LABEL_SPEC: spec_name}, detach=False,
                    **{**sandbox_config(memory, pids), "working_dir": CODE_MOUNT}, **extra)
                _LIVE.add(container)
                stdin = container.attach_socket(params={"stdin": 1, "stream": 1})
                container.start()
            except docker.errors.APIError as exc:
                raise _start_error(exc, spec_name, env_spec, image) from None
            stream = _Lines(container.logs(stream=True, follow=True))
            pump, tail = pump_output(stream, run_dir.log, echo)
            try:
                status = container.wait(timeout=timeout)
                code = status.get("StatusCode")
            except Exception as exc:  # requests' ReadTimeout / ConnectionError
                if not _is_timeout(exc):
                    raise EngineError(f"lost the Docker daemon while spec {spec_name!r} ran: "
                                      f"{exc}") from None
                _kill(container)
                outcome.timed_out = True
                outcome.killed_reason = f"timed out after {timeout:g} s and was killed"
                code = container.wait(timeout=60).get("StatusCode")
            pump.join(timeout=5)
            outcome.returncode = code
            container.reload()
            state = container.attrs.get("State", {})
            if state.get("OOMKilled") and not outcome.timed_out:
                outcome.killed_reason = (
                    f"was killed for exceeding its memory limit of {memory} (the container ran "
                    "out of memory; raise `environment.memory` in the spec or the ini option "
                    "repro_docker_memory)")
            elif code == 137 and not outcome.timed_out:
                outcome.killed_reason = "was killed (SIGKILL, exit 137) from outside the container"
            elif code is not None and code > 128 and not outcome.timed_out:
                outcome.killed_reason = f"died from signal {code - 128} (exit {code})"
            outcome.log_tail = list(tail)
        finally:
            restore()
            _close(stdin)
            _remove(client, container, cname)
            _LIVE.discard(container)
        outcome.notes.append(f"ran in container image {image} (network none, user "
                             f"{SANDBOX_UID}, memory {memory}, pids {pids})")
        return outcome


_LIVE: set = set()


def kill_all() -> int:
    """Kill every container this process started and that still runs (an interrupted audit:
    its worker threads wait on them; each then removes its own). Returns how many."""
    containers = list(_LIVE)
    for container in containers:
        _kill(container)
    return len(containers)


def _sigterm_interrupts():
    """While a container runs, SIGTERM (a CI job's kill) unwinds like Ctrl-C, so the container
    is removed; returns the function that restores the previous handler."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    return lambda: signal.signal(signal.SIGTERM, previous)


def _close(sock) -> None:
    if sock is None:
        return
    try:
        sock.close()
        raw = getattr(sock, "_sock", None)
        if raw is not None:
            raw.close()
    except OSError:
        pass


def _make_writable(run_dir: Path) -> None:
    """The sandbox user (65534) must write run.json and arrays.npz into the run's out/."""
    try:
        os.chown(run_dir, SANDBOX_UID, SANDBOX_UID)
    except PermissionError:
        os.chmod(run_dir, 0o777)


def _compile_cache_dir(base: str, image: str) -> Path:
    """One JAX compilation cache per image, writable by the sandbox user."""
    path = Path(base).with_name(Path(base).name + "-docker") / image.split(":")[-1][:16]
    path.mkdir(parents=True, exist_ok=True)
    try:
        os.chown(path, SANDBOX_UID, SANDBOX_UID)
    except PermissionError:
        os.chmod(path, 0o777)
    return path


def _start_error(exc, spec_name: str, env_spec, image: str) -> EngineError:
    text = str(getattr(exc, "explanation", None) or exc)
    if env_spec.platform == "gpu" and any(s in text.lower() for s in (
            "device driver", "capabilities", "nvidia", "gpu")):
        return EngineError(
            f"spec {spec_name!r} needs a GPU (environment.platform: gpu), but Docker cannot "
            f"give the container one: {text}. The host needs an NVIDIA GPU with its driver and "
            "the NVIDIA container toolkit configured for Docker (`nvidia-ctk runtime configure "
            "--runtime=docker`, then restart dockerd); or run the spec with --backend local")
    return EngineError(f"Docker refused to start the container for spec {spec_name!r} "
                       f"(image {image}): {text}")


def _is_timeout(exc: BaseException) -> bool:
    import requests

    if isinstance(exc, (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError)):
        return "timed out" in str(exc).lower() or isinstance(exc, requests.exceptions.ReadTimeout)
    return False


def _kill(container) -> None:
    import docker

    try:
        container.kill()
    except docker.errors.DockerException:
        pass


def _remove(client, container, name: str) -> None:
    """Remove the container (killing it if it runs); also when create was interrupted."""
    import docker

    for _ in range(3):
        try:
            (container or client.containers.get(name)).remove(force=True)
            return
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as exc:
            if "already in progress" in str(exc):
                return
            time.sleep(0.2)
        except KeyboardInterrupt:  # a second Ctrl-C: try once more, then give up
            continue


class _Lines:
    """A readline() view over docker's chunked log stream (what pump_output reads)."""

    def __init__(self, chunks):
        self._chunks, self._buf = chunks, b""

    def readline(self) -> bytes:
        while b"\n" not in self._buf:
            try:
                chunk = next(self._chunks)
            except StopIteration:
                chunk = None
            except Exception:  # the stream ends abruptly when the container is removed
                chunk = None
            if not chunk:
                out, self._buf = self._buf, b""
                return out
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line + b"\n"

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close:
            try:
                close()
            except Exception:
                pass
