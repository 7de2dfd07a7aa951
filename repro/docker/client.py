"""The one place repro talks to a Docker Engine from: connecting, with errors a user can act on.

Everything Docker-related (the docker backend, image pins, `repro env build`) gets its client
from `connect()`, so "the daemon is not running" reads the same wherever it is hit.
"""
from __future__ import annotations

import os
from typing import Any

from repro.errors import ReproError

LABEL = "repro"             # every container repro starts carries this label ...
LABEL_SPEC = "repro.spec"   # ... and the spec's name, so `docker ps -a --filter label=repro`
                            # finds what a run left behind (nothing, unless repro was killed -9)
LABEL_PID = "repro.pid"     # the repro process that started it, and on which host: the next
LABEL_HOST = "repro.host"   # repro process removes stopped containers of processes now gone


class EngineError(ReproError):
    """The Docker Engine cannot be reached or refused a request."""


def engine_address() -> str:
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def connect(timeout: int = 60) -> Any:
    """A docker SDK client whose daemon answered a ping; EngineError otherwise."""
    try:
        import docker
    except ImportError:  # pragma: no cover - docker is a dependency of repro
        raise EngineError("the docker backend needs the `docker` Python package "
                          "(pip install docker)") from None
    address = engine_address()
    try:
        client = docker.from_env(timeout=int(timeout))
        client.ping()
    except Exception as exc:  # DockerException, requests' ConnectionError, FileNotFoundError ...
        raise EngineError(
            f"cannot reach the Docker daemon at {address} ({_short(exc)}). Start it "
            "(`systemctl start docker`, or `dockerd &` as root; `bash envs/setup.sh "
            "--engine` installs and starts one on Debian), point DOCKER_HOST at a running one, "
            "or run with --backend local") from None
    return client


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "…"
