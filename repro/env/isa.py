"""The CPU instruction-set ceiling of XLA's code generation (`environment.isa`).

XLA:CPU compiles for the host it runs on: an AVX-512 host and an AVX2-only host emit different
code, and the results differ in the last bits. `--xla_cpu_max_isa` caps what it may use. With
`isa: portable` (the default) x86-64 hosts that have AVX2 are capped at AVX2 (x86-64-v3), so
hosts with and without AVX-512 compute the same bits; `native` removes the cap; an XLA ISA name
sets it. The *effective* ISA — what code generation may use: the lower of the cap and the host's
best — is in the fingerprint and decides, with the other numeric fields, whether a comparison is
bitwise. Standard library only (the runner takes the fingerprint).

Not x86-64 (aarch64): XLA has no ISA ceiling there; the effective ISA is the machine's name,
so records made on such hosts compare bitwise only with hosts of the same kind.
"""
from __future__ import annotations

import platform
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from repro.env.fingerprint import Fingerprint

# XLA's names (--xla_cpu_max_isa), lowest first.
XLA_ISAS = ("SSE4_2", "AVX", "AVX2", "AVX512", "AVX512_VNNI", "AVX512_BF16", "AMX", "AMX_FP16")
PORTABLE = "AVX2"          # x86-64-v3: every AVX2 host, AMD and Intel, with or without AVX-512

# /proc/cpuinfo flags that make a host reach each level (all of them needed).
_NEEDS = {"SSE4_2": ("sse4_2",), "AVX": ("avx",), "AVX2": ("avx2", "fma"),
          "AVX512": ("avx512f", "avx512bw", "avx512dq", "avx512vl"),
          "AVX512_VNNI": ("avx512_vnni",), "AVX512_BF16": ("avx512_bf16",),
          "AMX": ("amx_tile", "amx_bf16", "amx_int8"), "AMX_FP16": ("amx_fp16",)}


def is_x86(machine: str | None = None) -> bool:
    return (machine or platform.machine()).lower() in ("x86_64", "amd64", "i686", "i386")


def host_best(flags: Iterable[str]) -> str | None:
    """The highest XLA ISA level the CPU flags reach (None: not even SSE4.2)."""
    have = set(flags)
    best = None
    for level in XLA_ISAS:
        if not all(f in have for f in _NEEDS[level]):
            break
        best = level
    return best


def ceiling(isa: str, flags: Iterable[str], machine: str | None = None) -> str | None:
    """The --xla_cpu_max_isa value `environment.isa` asks for on this host (None: no flag).

    `portable` caps at AVX2 on hosts that have it; a host below it gets no cap (it computes
    with what it has, and a verdict against an AVX2 record is then within tolerance)."""
    if not is_x86(machine) or isa == "native":
        return None
    if isa == "portable":
        best = host_best(flags)
        return PORTABLE if best is not None and XLA_ISAS.index(best) >= XLA_ISAS.index(PORTABLE) \
            else None
    return isa


def cap_in(xla_flags: str) -> str | None:
    """The last --xla_cpu_max_isa value in an XLA_FLAGS string (XLA reads the last one)."""
    found = re.findall(r"--xla_cpu_max_isa=(\S+)", xla_flags or "")
    return found[-1].upper() if found else None


def effective(xla_flags: str, flags: Iterable[str], machine: str | None = None) -> str:
    """What XLA's code generation may use here: the lower of the cap and the host's best."""
    machine = machine or platform.machine()
    if not is_x86(machine):
        return machine
    best = host_best(flags) or "baseline"
    cap = cap_in(xla_flags)
    if cap not in XLA_ISAS or best not in XLA_ISAS:
        return best
    return XLA_ISAS[min(XLA_ISAS.index(cap), XLA_ISAS.index(best))]


def effective_of(fingerprint: Fingerprint) -> str | None:
    """A fingerprint's effective ISA; derived from its flags and XLA_FLAGS for records made
    before it was a field of its own."""
    if fingerprint.effective_isa:
        return fingerprint.effective_isa
    if fingerprint.cpu_isa is None or fingerprint.machine is None:
        return None
    return effective(fingerprint.xla_flags, fingerprint.cpu_isa, fingerprint.machine)
