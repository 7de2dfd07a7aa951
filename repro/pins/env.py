"""The environment pin: the explicit child environment (determinism settings applied before jax
is imported), the fingerprint taken inside the run, and the comparison of two fingerprints.

`child_environment` runs in the parent; `fingerprint` and `check_packages` run in the child.
"""
from __future__ import annotations

import hashlib
import os
import platform as _platform

# Fingerprint fields that decide the arithmetic. When all are equal, `tolerance.mode: auto`
# demands bitwise equality; any other field (hostname, CPU model name, python patch) only informs.
NUMERIC_FIELDS = ("jax", "jaxlib", "numpy", "backend", "device_kind", "device_count", "cpus",
                  "cpu_isa", "settings", "prng_canary", "machine")

# Deterministic XLA defaults; the spec's xla_flags are appended. Unknown flags make XLA abort,
# so only flags that exist in every supported jaxlib are listed.
DEFAULT_XLA_FLAGS = {
    "cpu": ["--xla_cpu_enable_fast_math=false"],
    "gpu": ["--xla_gpu_deterministic_ops=true"],
}
JAX_PLATFORMS = {"cpu": "cpu", "gpu": "cuda", "any": None}

# Variables copied from the caller. Everything else is left out on purpose; JAX_*, XLA_* and
# thread-count variables are dropped and the drop is noted in the run.
_PASSTHROUGH = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TMPDIR", "TZ",
                "LD_LIBRARY_PATH", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES",
                "SSL_CERT_FILE", "VIRTUAL_ENV", "CONDA_PREFIX", "SYSTEMROOT",
                "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")  # some OpenBLAS builds crash without
# Dropped variables with these prefixes are named in the verdict: they change jax's numerics.
_NOTED_PREFIXES = ("JAX_", "XLA_", "TF_XLA", "OMP_", "MKL_", "TPU_", "CUDA_", "NVIDIA_TF32")


def determinism_settings(env_spec) -> dict[str, str]:
    """The environment variables that pin jax's numerics for this spec (interface §3)."""
    flags = []
    for plat in (("cpu", "gpu") if env_spec.platform == "any" else (env_spec.platform,)):
        flags += DEFAULT_XLA_FLAGS[plat]
    flags += list(env_spec.xla_flags)
    settings = {
        "XLA_FLAGS": " ".join(flags),
        "JAX_DEFAULT_PRNG_IMPL": "threefry2x32",
        "JAX_THREEFRY_PARTITIONABLE": "1",
        "JAX_DEFAULT_MATMUL_PRECISION": env_spec.matmul_precision,
        "JAX_ENABLE_X64": "1" if env_spec.x64 else "0",
        "OMP_NUM_THREADS": str(env_spec.cpus),
    }
    if JAX_PLATFORMS[env_spec.platform]:
        settings["JAX_PLATFORMS"] = JAX_PLATFORMS[env_spec.platform]
    return settings


def child_environment(env_spec, pythonpath: list[str], inherited: dict | None = None
                      ) -> tuple[dict[str, str], list[str]]:
    """Build the child's environment from scratch. Returns (env, names of dropped variables)."""
    inherited = dict(os.environ if inherited is None else inherited)
    env = {k: inherited[k] for k in _PASSTHROUGH if k in inherited}
    dropped = sorted(k for k in inherited if k.startswith(_NOTED_PREFIXES) and k not in env)
    env.update(determinism_settings(env_spec))
    env["PYTHONPATH"] = os.pathsep.join(pythonpath)
    env["PYTHONHASHSEED"] = "0"
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"   # the pinned tree is read-only
    env["TF_CPP_MIN_LOG_LEVEL"] = "1"
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


def pick_cpus(n: int, slot: int | None = None) -> list[int]:
    """`n` CPUs this process may run on; error if fewer exist.

    Parallel runs pass different `slot`s (audit workers, pytest-xdist workers) so that they
    land on different cores; without one, a pid-dependent offset spreads them. Which cores a
    run gets does not change its numbers; how many does.
    """
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(
        range(os.cpu_count() or 1))
    if n > len(allowed):
        raise RuntimeError(f"environment.cpus is {n} but this machine lets the run use only "
                           f"{len(allowed)} CPU(s) ({allowed}); lower environment.cpus or run "
                           "on a larger machine")
    start = ((slot * n) if slot is not None else os.getpid()) % len(allowed)
    return sorted((allowed + allowed)[start:start + n])


def cpu_isa() -> list[str]:
    """Instruction-set flags that change what XLA's CPU code generator emits."""
    keep = ("sse", "ssse3", "avx", "fma", "f16c", "amx", "bmi", "popcnt", "neon", "asimd", "sve")
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return sorted({x for x in line.split(":", 1)[1].split() if x.startswith(keep)})
    except OSError:
        pass
    return []


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return _platform.processor()


def prng_canary() -> str:
    """sha256 of bits, uniform and normal draws from a fixed key: a changed random stream shows
    here, told apart from changed arithmetic.

    Computing it costs one XLA compile (~0.25 s, a tenth of a small training run), so the value
    is cached per installed jax: the key holds the jax and jaxlib versions, the size and mtime of
    every jaxlib shared library and of jax's random implementation, and the PRNG settings. Any
    reinstall or patch of jax/jaxlib changes the key and the canary is drawn afresh.
    """
    import jax

    key = _canary_cache_key(jax)
    path = None
    if key is not None:
        from repro.paths import cache_dir

        path = cache_dir() / "canary" / f"{key}.txt"
        try:
            cached = path.read_text().strip()
            if len(cached) == 64:
                return cached
        except OSError:
            pass
    value = _draw_canary(jax)
    if path is not None:
        try:
            from repro.ioutil import atomic_write_text

            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, value + "\n")
        except OSError:
            pass  # a read-only cache (a sandboxed container): compute each time
    return value


def _draw_canary(jax) -> str:
    import numpy as np

    @jax.jit
    def draws(key):
        return (jax.random.bits(key, (64,)), jax.random.uniform(key, (64,)),
                jax.random.normal(key, (64,)))

    h = hashlib.sha256()
    for draw in draws(jax.random.PRNGKey(0)):
        h.update(np.asarray(draw).tobytes())
    return h.hexdigest()


def _canary_cache_key(jax) -> str | None:
    import glob
    try:
        import jaxlib
        files = sorted(glob.glob(os.path.join(os.path.dirname(jaxlib.__file__), "**", "*.so*"),
                                 recursive=True))
        src = os.path.join(os.path.dirname(jax.__file__), "_src")
        files += sorted(glob.glob(os.path.join(src, "*prng*.py")) +
                        glob.glob(os.path.join(src, "random", "*.py")))
        files += [os.path.join(os.path.dirname(jax.__file__), "random.py")]
        h = hashlib.sha256()
        h.update(f"{jax.__version__} {getattr(jaxlib, '__version__', '')} "
                 f"{jax.config.jax_default_prng_impl} {jax.config.jax_threefry_partitionable} "
                 f"{jax.config.jax_enable_x64} {jax.default_backend()}".encode())
        for f in files:
            st = os.stat(f)
            h.update(f"{f} {st.st_size} {st.st_mtime_ns}\n".encode())
        return h.hexdigest()[:32]
    except (OSError, ImportError, AttributeError):
        return None


def fingerprint(settings: dict[str, str], cpus: list[int]) -> dict:
    """Everything about the running environment that a result may depend on (child side)."""
    import importlib.metadata as md

    import jax
    import numpy as np

    devices = jax.devices()
    try:
        jaxlib_version = md.version("jaxlib")
    except md.PackageNotFoundError:
        jaxlib_version = getattr(jax.lib, "__version__", "unknown")
    return {
        "python": _platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib_version,
        "numpy": np.__version__,
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "cpus": len(cpus),
        "cpu_isa": cpu_isa(),
        "cpu_model": cpu_model(),
        "machine": _platform.machine(),
        "os": f"{_platform.system()} {_platform.release()}",
        "settings": {
            **settings,
            "jax_default_prng_impl": str(jax.config.jax_default_prng_impl),
            "jax_threefry_partitionable": bool(jax.config.jax_threefry_partitionable),
            "jax_default_matmul_precision": str(jax.config.jax_default_matmul_precision),
            "jax_enable_x64": bool(jax.config.jax_enable_x64),
        },
        "prng_canary": prng_canary(),
        "in_container": os.path.exists("/.dockerenv"),
    }


def installed_packages() -> list[str]:
    """Every distribution this interpreter sees, as sorted `name==version` lines (names
    normalised as PEP 503 does; the first on sys.path wins, as for imports). Taken inside a
    container it is the image's package fingerprint (repro.pins.image)."""
    import importlib.metadata as md
    import re

    seen: dict[str, str] = {}
    for dist in md.distributions():
        name = dist.metadata["Name"] if dist.metadata else None
        if name:
            key = re.sub(r"[-_.]+", "-", name).lower()
            seen.setdefault(key, f"{key}=={dist.version}")
    return sorted(seen.values())


def check_packages(expected: dict[str, str]) -> list[str]:
    """Problems with `environment.packages` in this interpreter: one line per package."""
    import importlib.metadata as md

    problems = []
    for name, version in sorted(expected.items()):
        try:
            got = md.version(name)
        except md.PackageNotFoundError:
            problems.append(f"{name}: expected {version}, not installed")
            continue
        if got != version:
            problems.append(f"{name}: expected {version}, found {got}")
    return problems


def fingerprint_changes(recorded: dict, current: dict) -> list[tuple[str, object, object, bool]]:
    """[(field, recorded, current, numeric?)] for every field that differs."""
    out = []
    for key in sorted(set(recorded) | set(current)):
        a, b = recorded.get(key), current.get(key)
        if key == "settings" and isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                if a.get(k) != b.get(k):
                    out.append((f"settings.{k}", a.get(k), b.get(k), True))
        elif a != b:
            out.append((key, a, b, key in NUMERIC_FIELDS))
    return out
