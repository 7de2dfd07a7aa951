"""The child's environment, built in the parent: the determinism settings a spec asks for (applied
before jax is imported, docs/context.md), the variables passed through from the caller, and those
dropped on purpose. Backends call `child_environment`; nothing here imports jax.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:   # the child's environment is built without loading the spec's models
    from repro.spec import EnvironmentSpec

# Deterministic XLA defaults; the spec's xla_flags are appended. Unknown flags make XLA abort,
# so only flags that exist in every supported jaxlib are listed.
DEFAULT_XLA_FLAGS = {
    "cpu": ["--xla_cpu_enable_fast_math=false"],
    "gpu": ["--xla_gpu_deterministic_ops=true"],
}
FORCE_DEVICES = "--xla_force_host_platform_device_count"   # environment.devices on CPU
JAX_PLATFORMS = {"cpu": "cpu", "gpu": "cuda", "any": None}

# Variables copied from the caller. Everything else is left out on purpose; JAX_*, XLA_* and
# thread-count variables are dropped and the drop is noted in the run.
_PASSTHROUGH = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TMPDIR", "TZ",
                "LD_LIBRARY_PATH", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES",
                "SSL_CERT_FILE", "VIRTUAL_ENV", "CONDA_PREFIX", "SYSTEMROOT",
                "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")  # some OpenBLAS builds crash without
# Dropped variables with these prefixes are named in the verdict: they change jax's numerics.
_NOTED_PREFIXES = ("JAX_", "XLA_", "TF_XLA", "OMP_", "MKL_", "TPU_", "CUDA_", "NVIDIA_TF32")


def determinism_settings(env_spec: EnvironmentSpec) -> dict[str, str]:
    """The environment variables that pin jax's numerics for this spec (docs/context.md).

    `environment.isa` is not here: the child applies it (env/portable.py) from the CPU and the
    jaxlib it runs with, and its fingerprint keeps the settings that were in force."""
    flags = []
    for plat in (("cpu", "gpu") if env_spec.platform == "any" else (env_spec.platform,)):
        flags += DEFAULT_XLA_FLAGS[plat]
    if env_spec.devices > 1 and env_spec.platform in ("cpu", "any"):
        # N CPU devices in one process: jax's standard way to run sharded code on CPU. It is an
        # XLA flag like the others, so it is in the fingerprint's settings (and devices and
        # mesh are fields of their own there too).
        flags.append(f"{FORCE_DEVICES}={env_spec.devices}")
    flags += list(env_spec.xla_flags)
    settings = {
        "XLA_FLAGS": " ".join(flags),
        "JAX_DEFAULT_PRNG_IMPL": "threefry2x32",
        "JAX_THREEFRY_PARTITIONABLE": "1",
        "JAX_DEFAULT_MATMUL_PRECISION": env_spec.matmul_precision,
        "JAX_ENABLE_X64": "1" if env_spec.x64 else "0",
        "OMP_NUM_THREADS": str(env_spec.cpus),
    }
    jax_platforms = JAX_PLATFORMS[env_spec.platform]
    if jax_platforms:
        settings["JAX_PLATFORMS"] = jax_platforms
    if env_spec.platform != "cpu":
        # jax takes 75% of the GPU's memory at start by default: a second run side by side (-j,
        # calibrate, segments) would fail to start. Allocation only: the numbers are unchanged.
        settings["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    return settings


def child_isa(env_spec: EnvironmentSpec) -> str:
    """The `environment.isa` the child applies (env/portable.py): none on a GPU platform."""
    return "native" if env_spec.platform == "gpu" else env_spec.isa


# glibc malloc: keep freed memory in the process instead of returning it to the kernel (and
# taking it back, page fault by page fault) at every step. Measured on the 2-core firecracker VMs
# this project runs on: a fresh training process ran its first ~50 s at ~88 ms a step, then ~50
# (the zoo LM); with these it runs at ~50 from the first step — a 750-step segment replay went
# from 54 s to ~40. Allocation only: the numbers, and so the fingerprint, are unchanged.
MALLOC_SETTINGS = {"MALLOC_MMAP_THRESHOLD_": str(4 << 30), "MALLOC_TRIM_THRESHOLD_": str(4 << 30)}


def child_environment(settings: Mapping[str, str], pythonpath: list[str],
                      inherited: Mapping[str, str] | None = None, hash_seed: str = "0"
                      ) -> tuple[dict[str, str], list[str]]:
    """Build the child's environment from scratch. Returns (env, names of dropped variables)."""
    inherited = dict(os.environ if inherited is None else inherited)
    env = {k: inherited[k] for k in _PASSTHROUGH if k in inherited}
    dropped = sorted(k for k in inherited if k.startswith(_NOTED_PREFIXES) and k not in env)
    env.update(settings)
    env["PYTHONPATH"] = os.pathsep.join(pythonpath)
    env["PYTHONHASHSEED"] = hash_seed
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"   # the pinned tree is read-only
    env["TF_CPP_MIN_LOG_LEVEL"] = "1"
    env.update(MALLOC_SETTINGS)
    return env, dropped


def compile_cache_env(directory: str | None) -> dict[str, str]:
    """Environment for JAX's persistent compilation cache, shared by child runs (None: off).

    Small programs compile in well under JAX's default 1 s threshold, so the thresholds are
    dropped to cache everything. The cache holds compiled executables keyed by XLA's own
    fingerprint of program, flags and backend: it changes how long a run takes, never its
    numbers (tests/test_audit.py checks every bit), so it is not part of the fingerprint.
    """
    if not directory:
        return {}
    return {"JAX_COMPILATION_CACHE_DIR": directory,
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"}


