"""The environment fingerprint taken inside the run: what the run's process was (versions,
device, CPUs and their instruction sets, the determinism settings in force, the library kernels
its programs call, a PRNG canary), the CPUs it may use and the packages it sees.

Runs in the child (local process or container); it imports only the standard library at module
level, so the runner can load it in any image. What the fields mean and how two fingerprints
compare: repro/env/fingerprint.py.
"""
from __future__ import annotations

import hashlib
import os
import platform as _platform
from types import ModuleType
from typing import Any

from repro.env.cpu import cpu_isa, cpu_model
from repro.env.fingerprint import Fingerprint


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
                programs_error: str | None = None,
                mesh: tuple[tuple[str, int], ...] = (), processes: int = 1) -> Fingerprint:
    """Everything about the running environment that a result may depend on (child side).
    `programs`: the optimized HLO of every program the run compiled (env/kernels.py). Built as
    the JSON document run.json holds (its keys in this order, `kernels_error` only when set) and
    read into the typed fingerprint, so its shape is checked where it is made."""
    import importlib.metadata as md

    import jax
    import numpy as np

    from repro.child.kernels import inventory, l1d_size
    from repro.env.isa import cap_in, effective, host_best

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
    return Fingerprint.from_json({
        "python": _platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib_version,
        "numpy": np.__version__,
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        **({"mesh": [[name, size] for name, size in mesh]} if mesh else {}),   # environment.mesh
        **({"process_count": processes} if processes > 1 else {}),   # environment.processes
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
    })


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
