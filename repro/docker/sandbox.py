"""The sandbox every repro container gets, in one place: mounts, limits, the unprivileged user.

Used by the docker backend (training runs) and the image probe (package listing); a change to
the sandbox is made here once.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import repro

HARNESS_MOUNT = "/opt/repro/repro"
CODE_MOUNT = "/work/code"
DATA_MOUNT = "/work/data"
RUN_MOUNT = "/run"            # the run's out/ directory: the container's one writable mount
JOB_MOUNT = "/job/job.json"   # read-only
CACHE_MOUNT = "/cache/jax"    # the spec's compilation cache, read-only
SANDBOX_CACHE = "/tmp/jax-cache"   # the runner's writable copy of it (tmpfs)
NEW_CACHE_ENTRIES = "jax-cache-new"   # under out/: the entries the run added
SANDBOX_UID = 65534
DEFAULT_MEMORY = "4g"
DEFAULT_PIDS = 1024


def bind(source: str | Path, target: str, read_only: bool = True) -> Any:
    """A bind mount (Mount objects, not a volumes dict: two data entries may share a file, and
    host paths may hold ':')."""
    from docker.types import Mount

    return Mount(target, str(source), type="bind", read_only=read_only)


def harness_volume() -> list[Any]:
    return [bind(Path(repro.__file__).resolve().parent, HARNESS_MOUNT)]


def sandbox_config(memory: str | int, pids: int) -> dict[str, Any]:
    """The docker SDK arguments every repro container gets."""
    return dict(network_mode="none", user=f"{SANDBOX_UID}:{SANDBOX_UID}", cap_drop=["ALL"],
                security_opt=["no-new-privileges"], read_only=True,
                tmpfs={"/tmp": "rw,nosuid,nodev,size=1g"}, mem_limit=memory,
                memswap_limit=memory, pids_limit=pids, working_dir="/")


def make_writable_by_sandbox(path: Path) -> None:
    """Let the sandbox user (65534) write into `path`: chown where this process may (root),
    else open it to everyone."""
    try:
        os.chown(path, SANDBOX_UID, SANDBOX_UID)
    except PermissionError:
        os.chmod(path, 0o777)
