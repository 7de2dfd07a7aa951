"""Is there a GPU here? Asked before a `platform: gpu` spec runs, without importing jax.

A GPU spec on a host without one would otherwise fail inside the child with jax's "Unable to
initialize backend 'cuda'" after its start-up cost; the pytest plugin skips such items and the
local backend refuses them with a message that says what is missing and what to do.
"""
from __future__ import annotations

import glob
import os
from typing import TYPE_CHECKING

from repro.errors import NeedsDevice

if TYPE_CHECKING:
    from repro.spec import Spec


def gpu_visible() -> bool:
    """True when an NVIDIA or AMD GPU device node is present and not hidden by
    CUDA_VISIBLE_DEVICES / HIP_VISIBLE_DEVICES set to nothing or -1."""
    for var in ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES"):
        if os.environ.get(var, None) in ("", "-1"):
            return False
    nvidia = glob.glob("/dev/nvidia[0-9]*") or glob.glob("/proc/driver/nvidia/gpus/*")
    rocm = os.path.exists("/dev/kfd") and bool(glob.glob("/dev/dri/renderD*"))
    return bool(nvidia or rocm)


NO_GPU = ("this host shows no GPU (no /dev/nvidia* device, no /dev/kfd, or CUDA_VISIBLE_DEVICES "
          "hides them); run it on a GPU host with jax's CUDA wheels (pip install 'jax[cuda13]'), "
          "or use `environment.platform: any` for a spec that may run on either")


def gpu_count() -> int:
    """How many GPUs a process started here would see: the device nodes, narrowed by
    CUDA_VISIBLE_DEVICES / HIP_VISIBLE_DEVICES when set (a comma-separated list)."""
    if not gpu_visible():
        return 0
    nodes = len(glob.glob("/dev/nvidia[0-9]*") or glob.glob("/proc/driver/nvidia/gpus/*")
                or glob.glob("/dev/dri/renderD*"))
    for var in ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES"):
        listed = os.environ.get(var)
        if listed is not None:
            nodes = min(nodes, len([x for x in listed.split(",") if x.strip()]))
    return nodes


def check_gpu(spec: Spec, count: int | None = None) -> None:
    """NeedsDevice (a SKIPPED verdict) for a `platform: gpu` spec on a host that shows no GPU,
    or fewer than its `environment.devices`. `count`: the GPUs visible (default: looked up)."""
    env = spec.environment
    if env.platform != "gpu":
        return
    if count is None and not gpu_visible():
        raise NeedsDevice(f"spec {spec.name!r} needs a GPU (environment.platform: gpu), but {NO_GPU}")
    if env.devices > 1 or count is not None:
        have = gpu_count() if count is None else count
        if have < env.devices:
            raise NeedsDevice(f"spec {spec.name!r} needs {env.devices} GPUs (environment.devices), "
                              f"but this host shows {have}; run it on a host with {env.devices} "
                              "visible GPUs (CUDA_VISIBLE_DEVICES may hide some)")
