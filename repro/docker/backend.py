"""The docker backend: the same child runner, in a fresh sandboxed container of the pinned image.

`prepare` resolves the spec's image pin (`repro.docker.image`: the local image with the pinned
digest, pulled, or rebuilt from the recipe and checked against the record's packages) and the
sandbox limits; `run` starts the runner in a fresh container of that image, which gets

- the harness package, read-only, at /opt/repro/repro (PYTHONPATH=/opt/repro): an image needs
  only python3 and the user's dependencies (the runner imports numpy and jax, never pydantic);
- the code tree read-only at /work/code, each data file or directory read-only at
  /work/data/<name>/<basename> (job.json is rewritten to those paths, and mounted read-only),
  the run's out/ directory writable at /run — its only writable mount — and (unless
  --no-compile-cache) a per-image JAX compilation cache;
- no network, user 65534:65534, every capability dropped, no-new-privileges, a read-only root
  with a tmpfs /tmp (HOME=/tmp), memory and pids limits (spec, else ini/options, else defaults);
- the environment `child_environment` builds, from nothing on the host (no PATH, no
  LD_LIBRARY_PATH: the image's own PATH stays); GPUs through `device_requests` for
  `platform: gpu`, with the GPU determinism flags in XLA_FLAGS.

The container is labelled `repro` and `repro.spec=<name>` and removed afterwards — on success,
on failure, on timeout and on Ctrl-C. Its output streams line by line like a local child's.
"""
from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from repro.backends.base import ChildOutcome, Echo, KilledBy, RunDir, pump_output
from repro.docker.client import LABEL, LABEL_HOST, LABEL_PID, LABEL_SPEC, EngineError, connect
from repro.docker.image import ImagePin, resolve_image
from repro.docker.sandbox import (
    CACHE_MOUNT,
    CODE_MOUNT,
    DATA_MOUNT,
    DEFAULT_MEMORY,
    DEFAULT_PIDS,
    HARNESS_MOUNT,
    JOB_MOUNT,
    NEW_CACHE_ENTRIES,
    RUN_MOUNT,
    SANDBOX_CACHE,
    SANDBOX_UID,
    bind,
    harness_volume,
    make_writable_by_sandbox,
    sandbox_config,
)
from repro.env.devices import check_gpu
from repro.env.settings import child_environment, compile_cache_env
from repro.errors import ReproError
from repro.job import Job
from repro.record import RecordMeta
from repro.spec import Spec


@dataclass(frozen=True)
class DockerEnvironment:
    """The resolved image and the sandbox limits one spec runs with."""

    image: ImagePin
    memory: str
    pids: int
    gpu: bool
    notes: tuple[str, ...] = ()

    @property
    def image_ref(self) -> str:
        return self.image.ref


class DockerBackend:
    name = "docker"

    def __init__(self, memory: str | None = None, pids: int | None = None):
        self.memory, self.pids = memory, pids   # defaults when the spec sets none (ini options)

    def expected_platform(self, spec: Spec) -> str | None:
        # a container gets a GPU only when the spec asks for one: `any` runs on the CPU
        return "gpu" if spec.environment.platform == "gpu" else "cpu"

    def check_host(self, spec: Spec) -> None:
        check_gpu(spec)   # no GPU on the host: none for a container either

    def prepare(self, spec: Spec, repo_root: Path, recorded: RecordMeta | None,
                say: Callable[[str], None] | None = None) -> DockerEnvironment:
        if spec.environment.processes > 1:
            raise ReproError(f"environment.processes is {spec.environment.processes}: the docker "
                             "backend runs one process per spec; run a multi-process spec with "
                             "the local backend (--backend local), on this machine or on a Ray "
                             "cluster (--engine ray)")
        image = resolve_image(spec, repo_root, recorded, say)
        env = spec.environment
        return DockerEnvironment(image, env.memory or self.memory or DEFAULT_MEMORY,
                                 env.pids or self.pids or DEFAULT_PIDS, env.platform == "gpu",
                                 tuple(image.notes))

    def run(self, job: Job, run_dir: RunDir, env: DockerEnvironment, *, timeout: float,
            echo: Echo = False) -> ChildOutcome:
        import docker

        from repro.signals import sigterm_interrupts

        client = connect()
        _remove_stale_containers(client)
        image = env.image.id
        mounts = harness_volume() + [bind(Path(job.tree).resolve(), CODE_MOUNT)]
        data = {}
        for name, path in job.data.items():
            inside = f"{DATA_MOUNT}/{name}/{Path(path).name}"
            mounts.append(bind(Path(path).resolve(), inside))
            data[name] = inside
        make_writable_by_sandbox(run_dir.out)
        mounts.append(bind(run_dir.out, RUN_MOUNT, read_only=False))
        mounts.append(bind(run_dir.job, JOB_MOUNT))
        child_env, _ = child_environment(job.settings, [str(Path(HARNESS_MOUNT).parent)],
                                         inherited={}, hash_seed=job.hash_seed)
        _, dropped = child_environment(job.settings, [])
        child_env["HOME"] = "/tmp"
        cache = _compile_cache_dir(job.compile_cache, image, job) if job.compile_cache else None
        if cache is not None:
            # read-only: a run cannot change what another run reads. The runner copies it into
            # its tmpfs and leaves new entries in out/; this process adds them (never replacing).
            mounts.append(bind(cache, CACHE_MOUNT))
            child_env.update(compile_cache_env(SANDBOX_CACHE))
        # PID 1 in its container: the runner watches its stdin instead of its parent, which
        # this process holds open until the run ends
        job.replace(tree=CODE_MOUNT, data=data, list_packages=True, compile_cache=None,
                    compile_cache_seed=CACHE_MOUNT if cache else None,
                    compile_cache_new=f"{RUN_MOUNT}/{NEW_CACHE_ENTRIES}" if cache else None,
                    parent_pid=None, watch_stdin=True).write(run_dir.job)

        extra: dict[str, Any] = {}
        if env.gpu:
            extra["device_requests"] = [docker.types.DeviceRequest(count=-1,
                                                                   capabilities=[["gpu"]])]
        cname = f"repro-{job.spec[:40]}-{uuid.uuid4().hex[:10]}"
        outcome = ChildOutcome(returncode=None, dropped_env=dropped)
        container = stdin = None
        with sigterm_interrupts():
            try:
                try:
                    # detach=False + stdin_open: the SDK sets StdinOnce, so the container's
                    # stdin closes when this process's attach socket does (exit, or killed)
                    container = client.containers.create(
                        image, ["python3", "-P", "-m", "repro.child.runner", JOB_MOUNT, RUN_MOUNT],
                        name=cname, environment=child_env, mounts=mounts, stdin_open=True,
                        tty=False, labels=_labels(job.spec), detach=False,
                        **{**sandbox_config(env.memory, env.pids), "working_dir": CODE_MOUNT},
                        **extra)
                    _LIVE.add(container)
                    stdin = container.attach_socket(params={"stdin": 1, "stream": 1})
                    container.start()
                except docker.errors.APIError as exc:
                    raise _start_error(exc, job.spec, env.gpu, image) from None
                stream = _Lines(container.logs(stream=True, follow=True))
                pump, tail = pump_output(stream, run_dir.log, echo)
                try:
                    code = container.wait(timeout=timeout).get("StatusCode")
                except Exception as exc:  # requests' ReadTimeout / ConnectionError
                    if not _is_timeout(exc):
                        raise EngineError(f"lost the Docker daemon while spec {job.spec!r} ran: "
                                          f"{exc}") from None
                    _kill(container)
                    outcome.killed_by = KilledBy.TIMEOUT
                    outcome.killed_reason = f"timed out after {timeout:g} s and was killed"
                    code = container.wait(timeout=60).get("StatusCode")
                pump.join(timeout=5)
                outcome.returncode = code
                container.reload()
                if not outcome.timed_out:
                    _why_it_died(outcome, container.attrs.get("State", {}), code, env.memory)
                outcome.log_tail = list(tail)
            finally:
                _close(stdin)
                _remove(client, container, cname)
                _LIVE.discard(container)
        if cache is not None:
            merge_cache_entries(run_dir.out / NEW_CACHE_ENTRIES, cache)
        outcome.notes.append(f"ran in container image {image} (network none, user "
                             f"{SANDBOX_UID}, memory {env.memory}, pids {env.pids})")
        return outcome


def _labels(spec: str) -> dict[str, str]:
    """Labels every run's container carries: which spec, and which repro process (host and
    pid) started it, so a later process can tell a leftover from a live run."""
    import socket

    return {LABEL: "1", LABEL_SPEC: spec, LABEL_PID: str(os.getpid()),
            LABEL_HOST: socket.gethostname()}


_CLEANED = False


def _remove_stale_containers(client: Any) -> int:
    """Remove (once per process) the stopped containers of repro processes on this host that
    no longer exist: a `repro verify` killed with -9 cannot remove its own."""
    global _CLEANED
    if _CLEANED:
        return 0
    _CLEANED = True
    import socket

    import docker

    from repro.proctree import alive

    removed = 0
    try:
        leftovers = client.containers.list(all=True, filters={"label": LABEL,
                                                              "status": ["exited", "created", "dead"]})
    except docker.errors.DockerException:
        return 0
    for container in leftovers:
        labels = container.labels or {}
        pid = labels.get(LABEL_PID, "")
        if labels.get(LABEL_HOST) == socket.gethostname() and pid.isdigit() \
                and int(pid) != os.getpid() and not alive(int(pid)):
            try:
                container.remove(force=True)
                removed += 1
            except docker.errors.DockerException:
                pass
    return removed


def _why_it_died(outcome: ChildOutcome, state: dict[str, Any], code: int | None,
                 memory: str) -> None:
    if state.get("OOMKilled"):
        outcome.killed_by = KilledBy.MEMORY
        outcome.killed_reason = (
            f"was killed for exceeding its memory limit of {memory} (the container ran "
            "out of memory; raise `environment.memory` in the spec or the ini option "
            "repro_docker_memory)")
    elif code == 137:
        outcome.killed_by = KilledBy.SIGNAL
        outcome.killed_reason = "was killed (SIGKILL, exit 137) from outside the container"
    elif code is not None and code > 128:
        outcome.killed_by = KilledBy.SIGNAL
        outcome.killed_reason = f"died from signal {code - 128} (exit {code})"


_LIVE: set[Any] = set()


def kill_all() -> int:
    """Kill every container this process started and that still runs (an interrupted audit:
    its worker threads wait on them; each then removes its own). Returns how many."""
    containers = list(_LIVE)
    for container in containers:
        _kill(container)
    return len(containers)


def _close(sock: Any) -> None:
    if sock is None:
        return
    try:
        sock.close()
        raw = getattr(sock, "_sock", None)
        if raw is not None:
            raw.close()
    except OSError:
        pass


def _compile_cache_dir(base: str, image: str, job: Job) -> Path:
    """The JAX compilation cache of one spec's code in one image. Specs never share one: no
    run can plant an entry another spec's program will read."""
    import hashlib

    key = hashlib.sha256(f"{job.spec}\0{job.entrypoint}\0{job.tree}".encode()).hexdigest()[:16]
    path = Path(base).with_name(Path(base).name + "-docker") / image.split(":")[-1][:16] / key
    path.mkdir(parents=True, exist_ok=True)
    return path


def merge_cache_entries(new: Path, cache: Path, max_bytes: int = 256 << 20) -> int:
    """Add the compilation-cache entries a sandboxed run produced to `cache`: plain files with
    plain names, never a link, never replacing an entry that exists. Returns how many."""
    import re
    import shutil

    from repro.ioutil import open_regular

    added = 0
    try:
        names = sorted(os.listdir(new))
    except OSError:
        return 0
    for name in names:
        target = cache / name
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,254}", name) or target.exists():
            continue
        try:
            with open_regular(new / name) as src:
                if os.fstat(src.fileno()).st_size > max_bytes:
                    continue
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                with os.fdopen(fd, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            added += 1
        except (OSError, ValueError):
            continue
    return added


def _start_error(exc: Exception, spec_name: str, gpu: bool, image: str) -> EngineError:
    text = str(getattr(exc, "explanation", None) or exc)
    if gpu and any(s in text.lower() for s in (
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


def _kill(container: Any) -> None:
    import docker

    try:
        container.kill()
    except docker.errors.DockerException:
        pass


def _remove(client: Any, container: Any, name: str) -> None:
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

    def __init__(self, chunks: Iterator[bytes]):
        self._chunks, self._buf = chunks, b""

    def readline(self, size: int = -1) -> bytes:
        if 0 < size <= len(self._buf) and b"\n" not in self._buf[:size]:
            out, self._buf = self._buf[:size], self._buf[size:]
            return out
        while b"\n" not in self._buf and not (0 < size <= len(self._buf)):
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
        if 0 < size and b"\n" not in self._buf[:size]:
            out, self._buf = self._buf[:size], self._buf[size:]
            return out
        line, _, self._buf = self._buf.partition(b"\n")
        return line + b"\n"

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close:
            try:
                close()
            except Exception:
                pass
