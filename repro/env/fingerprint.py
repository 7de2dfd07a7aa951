"""The environment fingerprint: what the run's process was (versions, device, CPUs and their
instruction sets, the determinism settings in force, a PRNG canary), taken inside the run, and
the comparison of two fingerprints.

Everything here but `fingerprint_changes` runs in the child (local process or container); it
imports only the standard library at module level, so the runner can load it in any image.
"""
from __future__ import annotations

import hashlib
import os
import platform as _platform
from types import ModuleType
from typing import Any

# Fingerprint fields that decide the arithmetic. When all are equal, `tolerance.mode: auto`
# demands bitwise equality; any other field (hostname, CPU model name, python patch) only informs.
NUMERIC_FIELDS = ("jax", "jaxlib", "numpy", "backend", "device_kind", "device_count", "cpus",
                  "effective_isa", "l1d_cache", "settings", "prng_canary", "machine")
# (the host's raw `cpu_isa` flags only inform: what decides is the effective ISA, env/isa.py;
# `l1d_cache` is set only when the programs hold contractions summed in L1-sized slices, and
# `kernels` says which library kernels the programs call and what pins them: env/kernels.py)

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


_ISA_PREFIXES = ("sse", "ssse3", "avx", "fma", "f16c", "amx", "bmi", "popcnt", "neon", "asimd", "sve")


def proc_cpuinfo_flags() -> list[str]:
    """Instruction-set flags as /proc/cpuinfo lists them (the host kernel's view: under
    qemu-user still the host's CPU, not the emulated one)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return sorted({x for x in line.split(":", 1)[1].split() if x.startswith(_ISA_PREFIXES)})
    except OSError:
        pass
    return []


def cpu_isa(cpuid: bool = False) -> list[str]:
    """Instruction-set flags that change what XLA's code and jaxlib's kernel libraries run.
    `cpuid`: as CPUID reports them to this process (the child: an emulated CPU counts as
    what it is), else /proc/cpuinfo's (the parent, which never imports numpy for it)."""
    if cpuid and _platform.machine().lower() in ("x86_64", "amd64"):
        from repro.env.portable import cpuid_flags
        flags = cpuid_flags()
        if flags is not None:
            return flags
    return proc_cpuinfo_flags()


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


def _draw_canary(jax: ModuleType) -> str:
    import numpy as np

    @jax.jit
    def draws(key: Any) -> tuple[Any, Any, Any]:
        return (jax.random.bits(key, (64,)), jax.random.uniform(key, (64,)),
                jax.random.normal(key, (64,)))

    h = hashlib.sha256()
    for draw in draws(jax.random.PRNGKey(0)):
        h.update(np.asarray(draw).tobytes())
    return h.hexdigest()


def _canary_cache_key(jax: ModuleType) -> str | None:
    import glob
    try:
        import jaxlib
        files = sorted(glob.glob(os.path.join(os.path.dirname(jaxlib.__file__), "**", "*.so*"),
                                 recursive=True))
        jax_file = jax.__file__
        assert jax_file is not None  # jax is a regular package, imported from its files
        src = os.path.join(os.path.dirname(jax_file), "_src")
        files += sorted(glob.glob(os.path.join(src, "*prng*.py")) +
                        glob.glob(os.path.join(src, "random", "*.py")))
        files += [os.path.join(os.path.dirname(jax_file), "random.py")]
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


def fingerprint(settings: dict[str, str], cpus: list[int], programs: list[str] | None = None,
                programs_error: str | None = None) -> dict:
    """Everything about the running environment that a result may depend on (child side).
    `programs`: the optimized HLO of every program the run compiled (env/kernels.py)."""
    import importlib.metadata as md

    import jax
    import numpy as np

    from repro.env.isa import cap_in, effective, host_best
    from repro.env.kernels import inventory, l1d_size

    devices = jax.devices()
    flags = cpu_isa(cpuid=True)
    xla_flags = settings.get("XLA_FLAGS", "")
    isa = effective(xla_flags, flags)
    kernels = None
    l1d = None
    on_x86 = _platform.machine().lower() in ("x86_64", "amd64")
    if programs_error is not None and on_x86:
        isa = host_best(flags) or isa   # programs not read: what they call is not known
    elif programs is not None and jax.default_backend() == "cpu":
        kernels = inventory(programs, xla_flags, settings, len(cpus), cap_in(xla_flags))
        if any(not k.pinned for k in kernels) and on_x86:
            isa = host_best(flags) or isa   # a kernel the CPU chooses: the CPU's best counts
        if any(k.blocked for k in kernels):
            l1d = l1d_size() or 0
    config: Any = jax.config   # its options are attributes at run time, not in its type stubs
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
        "cpu_isa": flags,
        "effective_isa": isa,
        "kernels": None if kernels is None else [k.to_json() for k in kernels],
        "l1d_cache": l1d,
        **({"kernels_error": programs_error} if programs_error else {}),
        "cpu_model": cpu_model(),
        "machine": _platform.machine(),
        "os": f"{_platform.system()} {_platform.release()}",
        "settings": {
            **settings,
            "jax_default_prng_impl": str(config.jax_default_prng_impl),
            "jax_threefry_partitionable": bool(config.jax_threefry_partitionable),
            "jax_default_matmul_precision": str(config.jax_default_matmul_precision),
            "jax_enable_x64": bool(config.jax_enable_x64),
        },
        "prng_canary": prng_canary(),
        "in_container": os.path.exists("/.dockerenv"),
    }


def installed_packages() -> list[str]:
    """Every distribution this interpreter sees, as sorted `name==version` lines (names
    normalised as PEP 503 does; the first on sys.path wins, as for imports). Taken inside a
    container it is the image's package fingerprint (repro.docker.image)."""
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
        if key == "kernels":
            from repro.env.kernels import describe
            a = [describe(k) for k in a] if isinstance(a, list) else a
            b = [describe(k) for k in b] if isinstance(b, list) else b
        if key == "settings" and isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                if a.get(k) != b.get(k):
                    out.append((f"settings.{k}", a.get(k), b.get(k), True))
        elif a != b:
            out.append((key, a, b, key in NUMERIC_FIELDS))
    return out


def packages_digest(packages: list[str]) -> str:
    """sha256 of an installed-package list (`installed_packages`), one line per package."""
    return hashlib.sha256("\n".join(packages).encode()).hexdigest()
