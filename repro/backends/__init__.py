"""Backends: where one job runs (`Backend` in base.py). `local` — a fresh process of this
interpreter; `docker` — a fresh sandboxed container of the spec's pinned image
(`repro.docker.backend`)."""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Literal

from repro.backends.base import Backend, ChildOutcome, KilledBy, RunDir
from repro.errors import ReproError

if TYPE_CHECKING:
    from repro.spec import Spec

BackendName = Literal["local", "docker"]
BACKENDS: tuple[BackendName, ...] = ("local", "docker")


def get_backend(name: str, *, docker_memory: str | None = None,
                docker_pids: int | None = None) -> Backend[Any]:
    """The backend called `name`; ReproError for an unknown one. `docker_*` are the sandbox
    limits a spec that sets none gets (the pytest ini options)."""
    if name == "local":
        from repro.backends.local import LocalBackend
        return LocalBackend()
    if name == "docker":
        from repro.docker.backend import DockerBackend
        return DockerBackend(memory=docker_memory, pids=docker_pids)
    raise ReproError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")


def out_of_reach(spec: Spec, backend: str) -> str | None:
    """Why `backend` cannot run `spec` at all, for a session over a whole folder to skip it and
    say why (`repro verify --backend docker` on such a spec is an error instead); None: it can."""
    if backend == "docker" and not spec.environment.image:
        return (f"{spec.name} names no environment.image; the docker backend runs only "
                "image-pinned specs (run it with --repro-backend=local)")
    return None


def kill_all() -> int:
    """Kill every run this process started on any backend (local children, containers)."""
    from repro.backends.local import kill_all as kill_local
    killed = kill_local()
    if "repro.docker.backend" in sys.modules:  # never import the docker SDK just for this
        killed += sys.modules["repro.docker.backend"].kill_all()
    return killed


__all__ = ["Backend", "BackendName", "ChildOutcome", "KilledBy", "RunDir", "get_backend",
           "BACKENDS", "kill_all", "out_of_reach"]
