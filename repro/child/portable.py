"""`environment.isa` applied in the child: the portable recipe, from the CPU and the jaxlib that run.

XLA's own code follows `--xla_cpu_max_isa`, but the kernel libraries inside jaxlib pick their
code from CPUID at run time and ignore it (../docs/portability.md):
- YNNPACK (dots, convolutions, reductions): `--xla_cpu_enable_platform_dependent_math=false`
  asks for its consistent-arithmetic kernels, which exist only for CPUs with FMA;
- Eigen's contractions call oneDNN's sgemm: `ONEDNN_MAX_CPU_ISA` caps it.

`portable` applies all three on x86-64 CPUs with AVX2 and FMA; `native` none; an XLA ISA name
caps at that level and pins the libraries as far as the CPU allows. The decision is made here,
in the process that runs, from CPUID (an emulated CPU or a container's host is what counts) and
from the jaxlib that will read the flags: an unknown flag aborts XLA, so a flag this jaxlib's
libraries do not name is never passed. Standard library only (numpy, when importable, reads
CPUID for us).
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import platform
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from repro.env.cpu import cpuid_flags, proc_cpuinfo_flags
from repro.env.isa import PORTABLE, XLA_ISAS, cap_in, host_best, is_x86

CONSISTENT = "--xla_cpu_enable_platform_dependent_math=false"   # YNNPACK's consistent kernels
ONEDNN_VAR = "ONEDNN_MAX_CPU_ISA"
# XLA's ISA names -> oneDNN's (dnnl_cpu_isa_t names as ONEDNN_MAX_CPU_ISA takes them)
ONEDNN_ISA = {"SSE4_2": "SSE41", "AVX": "AVX", "AVX2": "AVX2", "AVX512": "AVX512_CORE",
              "AVX512_VNNI": "AVX512_CORE_VNNI", "AVX512_BF16": "AVX512_CORE_BF16",
              "AMX": "AVX512_CORE_AMX", "AMX_FP16": "AVX512_CORE_AMX_FP16"}
@dataclass(frozen=True)
class Recipe:
    """What `environment.isa` asks of one process on one CPU with one jaxlib."""

    xla_flags: tuple[str, ...]          # added before the spec's own environment.xla_flags
    env: Mapping[str, str]              # variables set before jaxlib loads
    notes: tuple[str, ...] = ()         # what could not be pinned here, and why


def resolve(isa: str, user_flags: str, cpu_flags: Iterable[str], machine: str,
            knows: Callable[[str], bool]) -> Recipe:
    """The flags and variables `isa` asks for here. Pure: `knows(flag_name)` says whether the
    jaxlib has a flag. A flag the spec's environment.xla_flags sets itself is left to it."""
    flags = set(cpu_flags)
    if not is_x86(machine) or isa == "native":
        return Recipe((), {})
    best = host_best(flags)
    if isa == "portable":
        if best is None or XLA_ISAS.index(best) < XLA_ISAS.index(PORTABLE):
            missing = [f for f in ("avx2", "fma") if f not in flags]
            return Recipe((), {}, (f"environment.isa portable: this CPU has no {' or '.join(missing)}"
                                   f" (its best is {best or 'below SSE4_2'}), so the portable recipe "
                                   "cannot be applied; a record made on an AVX2+FMA CPU compares "
                                   "within tolerance here",))
        cap = PORTABLE
    else:
        cap = isa
    out: list[str] = []
    notes: list[str] = []
    if cap_in(user_flags) is None:
        if knows("xla_cpu_max_isa"):
            out.append(f"--xla_cpu_max_isa={cap}")
        else:
            notes.append("this jaxlib has no --xla_cpu_max_isa: XLA's own code follows the CPU")
    if "xla_cpu_enable_platform_dependent_math" not in user_flags:
        if "fma" not in flags:
            notes.append("this CPU has no FMA: YNNPACK has no consistent-arithmetic kernels for "
                         "it, so its kernels are left to the CPU")
        elif knows("xla_cpu_enable_platform_dependent_math"):
            out.append(CONSISTENT)
        else:
            notes.append("this jaxlib has no --xla_cpu_enable_platform_dependent_math: its "
                         "library kernels are left to the CPU")
    return Recipe(tuple(out), {ONEDNN_VAR: ONEDNN_ISA[cap]}, tuple(notes))


def apply(isa: str, settings: Mapping[str, str], spec_flags: Iterable[str] = ()) -> tuple[dict[str, str], list[str]]:
    """Child side, before jax is imported: the recipe for this CPU and jaxlib put into
    os.environ. Returns the settings now in force (the fingerprint's) and notes for the verdict.
    An environment.xla_flags entry this jaxlib does not know is an error (XLA would abort)."""
    settings = dict(settings)
    spec_flags = list(spec_flags)
    names = [f[2:].split("=", 1)[0] for f in spec_flags if f.startswith("--xla_")]
    recipe_flags = [] if isa == "native" else ["xla_cpu_max_isa", "xla_cpu_enable_platform_dependent_math"]
    known = known_flags([*names, *recipe_flags]) if names or recipe_flags else {}   # one look-up
    unknown = [n for n in names if not known[n]]
    if unknown:
        raise UnknownFlag(unknown)
    flags = cpuid_flags()
    if flags is None:
        flags = proc_cpuinfo_flags()
    recipe = resolve(isa, settings.get("XLA_FLAGS", ""), flags, platform.machine(),
                     lambda name: known.get(name, False))
    if recipe.xla_flags:
        base = settings.get("XLA_FLAGS", "").split()
        own = [f for f in base if f in spec_flags]
        rest = [f for f in base if f not in spec_flags]
        settings["XLA_FLAGS"] = " ".join([*rest, *recipe.xla_flags, *own])
    settings.update(recipe.env)
    for key, value in settings.items():
        os.environ[key] = value
    return settings, list(recipe.notes)


class UnknownFlag(Exception):
    def __init__(self, names: list[str]):
        self.names = names
        super().__init__(", ".join(f"--{n}" for n in names))


def _jaxlib_libraries() -> list[str]:
    import importlib.util

    spec = importlib.util.find_spec("jaxlib")
    if spec is None or not spec.submodule_search_locations:
        return []
    root = list(spec.submodule_search_locations)[0]
    libs = glob.glob(os.path.join(root, "*.so*")) + glob.glob(os.path.join(root, "*", "*.so*"))
    return sorted(libs, key=lambda p: -os.path.getsize(p))   # the big one (XLA) first


def known_flags(names: Iterable[str]) -> dict[str, bool]:
    """Whether this jaxlib's libraries name each XLA flag (the flag table holds every name as a
    string). Read from the binaries, cached under the machine cache by their size and mtime:
    a scan of a 350 MB libjax_common.so takes ~0.4 s, a cached answer nothing."""
    names = sorted(set(names))
    libs = _jaxlib_libraries()
    if not libs:
        return {n: False for n in names}
    key = hashlib.sha256("\n".join(f"{p} {os.path.getsize(p)} {os.stat(p).st_mtime_ns}"
                                   for p in libs).encode()).hexdigest()[:32]
    from repro.paths import cache_dir
    path = cache_dir() / "xla-flags" / f"{key}.json"
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    missing = [n for n in names if not isinstance(cached.get(n), bool)]
    if missing:
        cached.update(_scan(libs, missing))
        try:
            from repro.ioutil import atomic_write_text
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps(cached, sort_keys=True))
        except OSError:
            pass   # a read-only cache (a sandboxed container): scan each time
    return {n: bool(cached[n]) for n in names}


def _scan(libs: list[str], names: list[str]) -> dict[str, bool]:
    import mmap

    found = {n: False for n in names}
    for lib in libs:
        left = [n for n in names if not found[n]]
        if not left:
            break
        try:
            with open(lib, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                for n in left:
                    # as a NUL-terminated C string: a longer flag's name does not count
                    found[n] = m.find(n.encode() + b"\0") >= 0
        except (OSError, ValueError):
            continue
    return found
