"""This CPU's instruction sets and model, as the parent (/proc/cpuinfo, no numpy) and the
child (CPUID through numpy's runtime dispatch: an emulated CPU counts as what it is) see them.
Standard library only; a shared leaf of the parent and the child."""
from __future__ import annotations

import platform as _platform

# numpy's CPUID feature names -> /proc/cpuinfo's flag names (the fingerprint's vocabulary)
_NUMPY_FLAGS = {"SSE": "sse", "SSE2": "sse2", "SSE3": "sse3", "SSSE3": "ssse3", "SSE41": "sse4_1",
                "SSE42": "sse4_2", "POPCNT": "popcnt", "AVX": "avx", "F16C": "f16c", "FMA3": "fma",
                "AVX2": "avx2", "BMI": "bmi1", "BMI2": "bmi2", "AVX512F": "avx512f",
                "AVX512CD": "avx512cd", "AVX512BW": "avx512bw", "AVX512DQ": "avx512dq",
                "AVX512VL": "avx512vl", "AVX512VNNI": "avx512_vnni", "AVX512BF16": "avx512_bf16",
                "AVX512IFMA": "avx512ifma", "AVX512VBMI": "avx512vbmi",
                "AVX512VBMI2": "avx512_vbmi2", "AVX512BITALG": "avx512_bitalg",
                "AVX512VPOPCNTDQ": "avx512_vpopcntdq", "AVX512FP16": "avx512_fp16"}


def cpuid_flags() -> list[str] | None:
    """The CPU's instruction-set flags as CPUID reports them to this process (numpy's runtime
    dispatch reads CPUID and the OS's XSAVE support), in /proc/cpuinfo's names. Under qemu-user
    this is the emulated CPU, where /proc/cpuinfo still shows the host's. AMX is not reported by
    numpy: its flags come from /proc/cpuinfo, only when CPUID shows AVX-512. None: no numpy."""
    import importlib
    features: dict[str, bool] | None = None
    for module in ("numpy._core._multiarray_umath", "numpy.core._multiarray_umath"):  # numpy 2, 1
        try:
            features = getattr(importlib.import_module(module), "__cpu_features__", None)
        except ImportError:
            continue
        if features is not None:
            break
    if features is None:
        return None
    flags = {name for key, name in _NUMPY_FLAGS.items() if features.get(key)}
    if "avx512f" in flags:
        flags.update(f for f in proc_cpuinfo_flags() if f.startswith("amx"))
    return sorted(flags)



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
