"""Backends start the child runner somewhere — a fresh local process or a container — and hand
back what it left in the run directory. They share one interface:

    backend.run(job: dict, run_dir: Path, tree: Path, env_spec, timeout: float, echo) -> ChildOutcome

The backend writes `run_dir/job.json` for the runner, with the paths as the runner will see them.
"""
from __future__ import annotations

from repro.backends.base import ChildOutcome
from repro.errors import ReproError

BACKENDS = ("local", "docker")


def get_backend(name: str):
    """The backend called `name`; ReproError for one this installation cannot provide."""
    if name == "local":
        from repro.backends.local import LocalBackend
        return LocalBackend()
    if name == "docker":
        try:
            from repro.backends.docker import DockerBackend  # noqa: F401
        except ImportError:
            raise ReproError("the docker backend is not part of this version of repro yet; "
                             "run with --backend local") from None
        return DockerBackend()
    raise ReproError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")


def kill_all() -> int:
    """Kill every run this process started on any backend (local children, containers)."""
    import sys

    from repro.backends.local import kill_all as kill_local
    killed = kill_local()
    if "repro.backends.docker" in sys.modules:  # never import the docker SDK just for this
        killed += sys.modules["repro.backends.docker"].kill_all()
    return killed


__all__ = ["ChildOutcome", "get_backend", "BACKENDS", "kill_all"]
