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


def check_gpu(spec: Spec) -> None:
    """NeedsDevice (a SKIPPED verdict) for a `platform: gpu` spec on a host that shows no GPU."""
    if spec.environment.platform == "gpu" and not gpu_visible():
        raise NeedsDevice(f"spec {spec.name!r} needs a GPU (environment.platform: gpu), but {NO_GPU}")
