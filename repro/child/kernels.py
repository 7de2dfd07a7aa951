"""Which library kernels a run's compiled programs call, and whether anything pins their choice.

XLA:CPU hands some ops to kernel libraries that choose their code from the CPU at run time, not
from `--xla_cpu_max_isa` (docs/portability.md). After the training, the runner reads every
program it compiled (optimized HLO, also for programs loaded from the compilation cache) and
lists those ops:

| library | in the optimized HLO | pinned by |
| --- | --- | --- |
| YNNPACK | a fusion with `"kind":"__ynn_fusion"` | consistent arithmetic (platform-dependent math off) |
| XNNPACK | a fusion with `"kind":"__xnn_fusion"` | nothing (its consistent flag is ignored by the shim) |
| oneDNN | `custom_call_target="__onednn$…"` | `ONEDNN_MAX_CPU_ISA` at the ceiling |
| Eigen (oneDNN sgemm) | a `dot` or `convolution` outside any fusion | `ONEDNN_MAX_CPU_ISA` at the ceiling, one thread |
| other | any other `custom-call` (LAPACK, …) | nothing known |

Pinned there means: the same code on every CPU of the ceiling's level. One more thing moves the
bits: a long contraction is summed in slices whose length follows the L1 data cache the library
reads from CPUID (Eigen's blocking; YNNPACK's tiling), so CPUs with different L1 sizes add in
different orders. With one thread a slice is at least 288 floats on any CPU with a 32 KiB L1 or
larger (every AVX2 CPU), so a contraction of at most `SLICE_SAFE_K` is one slice everywhere; a
longer one is `blocked`, and then the L1 size is a numeric fact of the run (measured: the zoo's
LM, contractions of 1536, differs between a 48 KiB-L1 Zen 5 and an emulated 32 KiB Haswell, and
equals bitwise between a 32 KiB Zen 4 and the same emulation). More threads block by L2/L3 and
the thread count: never pinned.

The fingerprint keeps the list; an unpinned kernel makes the run's effective ISA the CPU's best
(env/isa.py), a blocked one puts the L1 size among the numeric fields, so `auto` demands
bitwise only where the programs can give the same bits. Child
side, standard library only; `parse` is pure.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from repro.env.fingerprint import SLICE_SAFE_K, KernelEntry  # (shared with the comparison)

_HEADER = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) \(.*\{\s*$")
_INSTR = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (.*)$")
_OP = re.compile(r"(?:^|[\s)}\]])([a-z][a-z0-9\-]*)\(")
_SHAPE = re.compile(r"^[a-z]+\d*\[([\d,]*)\]")
_OP_NAME = re.compile(r'op_name="([^"]*)"')


@dataclass
class _Call:
    library: str
    op: str
    k: int = 0


def _dims(shape: str) -> list[int]:
    m = _SHAPE.match(shape.strip())
    return [int(d) for d in m.group(1).split(",") if d] if m else []


def _attr(rest: str, name: str) -> str:
    m = re.search(name + r"=\{?([^},]*(?:,[^}=]*)*)\}?", rest)
    return m.group(1) if m else ""


_JAX_NAMES = {"dot": "dot_general", "convolution": "conv_general_dilated"}


def _primitive(rest: str, fallback: str) -> str:
    """The jax primitive an op computes, from its metadata ("(backward)": in a transposed jvp)."""
    m = _OP_NAME.search(rest)
    if fallback in _JAX_NAMES:
        return _JAX_NAMES[fallback] + (" (backward)" if m and "transpose(" in m.group(1) else "")
    return m.group(1).rsplit("/", 1)[-1] if m else fallback


def _contraction(op: str, operands: list[str], rest: str, shapes: Mapping[str, str]) -> int:
    """The length of the sums one output element takes (dot: contracting dims; convolution:
    the kernel's size over everything but its output features)."""
    if op == "dot":
        lhs = _dims(shapes.get(operands[0], "")) if operands else []
        dims = [int(d) for d in re.findall(r"\d+", _attr(rest, "lhs_contracting_dims"))]
        k = 1
        for d in dims:
            k *= lhs[d] if d < len(lhs) else 1
        return k
    rhs = _dims(shapes.get(operands[1], "")) if len(operands) > 1 else []
    labels = re.search(r"dim_labels=\w+_(\w+)->", rest)
    if not rhs or not labels or len(labels.group(1)) != len(rhs):
        return 0
    k = 1
    for label, size in zip(labels.group(1), rhs):
        if label != "o":
            k *= size
    return k


_READ_OPS = frozenset({"custom-call", "dot", "convolution", "fusion", "reduce", "reduce-window"})
_OPERAND = re.compile(r"%([\w.\-]+)")


def _after_close(body: str, start: int) -> int:
    """The index just past the ")" that closes the "(" before `start` (operand lists hold tuple
    shapes, so parentheses nest); len(body) + 1 when it is never closed."""
    depth, i = 1, start
    while depth:
        j = body.find(")", i)
        if j < 0:
            return len(body) + 1
        depth += body.count("(", i, j) - 1
        i = j + 1
    return i


def parse(hlo_text: str) -> list[_Call]:
    """The run-time-dispatched kernel calls of one optimized HLO module's text."""
    comps: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in hlo_text.splitlines():
        header = _HEADER.match(line)
        if header:
            current = comps.setdefault(header.group(1), [])
        elif line.strip() == "}":
            current = None
        elif current is not None:
            current.append(line)
    fused: dict[str, str] = {}      # computation -> the fusion library that runs it
    calls: list[_Call] = []
    parsed: dict[str, list[tuple[str, str, str, list[str], str]]] = {}
    for comp, lines in comps.items():
        rows: list[tuple[str, str, str, list[str], str]] = []
        for line in lines:
            m = _INSTR.match(line)
            if not m:
                continue
            name, body = m.groups()
            op_m = _OP.search(body)
            if not op_m:
                continue
            op = op_m.group(1)
            shape = body[:op_m.start(1)].strip()
            if op not in _READ_OPS:   # only its shape matters (an operand of a dot)
                rows.append((name, shape, op, [], ""))
                continue
            args_start = op_m.end()
            i = _after_close(body, args_start)
            operands = _OPERAND.findall(body, args_start, i - 1)
            rows.append((name, shape, op, operands, body[i:]))
            if op == "fusion":
                callee = re.search(r"calls=%?([\w.\-]+)", body[i:])
                kind = re.search(r'"kind":"(__\w+_fusion)"', body[i:])
                if callee:
                    fused[callee.group(1)] = {"__ynn_fusion": "YNNPACK", "__xnn_fusion": "XNNPACK"}.get(
                        kind.group(1) if kind else "", "XLA")
        parsed[comp] = rows
    for comp, rows in parsed.items():
        shapes = {r[0]: r[1] for r in rows}
        library = fused.get(comp)
        for _name, _shape, op, operands, rest in rows:
            if op == "custom-call":
                target = re.search(r'custom_call_target="([^"]+)"', rest)
                t = target.group(1) if target else "?"
                calls.append(_Call("oneDNN" if t.startswith("__onednn") else t, _primitive(rest, t)))
            elif op in ("dot", "convolution"):
                if library in ("YNNPACK", "XNNPACK"):
                    calls.append(_Call(library, _primitive(rest, op), _contraction(op, operands, rest, shapes)))
                elif library is None:   # outside any fusion: a thunk, run by Eigen's contraction
                    calls.append(_Call("Eigen", _primitive(rest, op), _contraction(op, operands, rest, shapes)))
            elif library in ("YNNPACK", "XNNPACK") and op in ("reduce", "reduce-window"):
                calls.append(_Call(library, _primitive(rest, op)))
    return calls


def pinning(library: str, xla_flags: str, env: Mapping[str, str], cpus: int,
            ceiling: str | None) -> tuple[bool, str]:
    """Whether what a call computes is pinned across CPUs here, and what pins it (or why not)."""
    from repro.child.portable import CONSISTENT, ONEDNN_ISA, ONEDNN_VAR

    onednn = env.get(ONEDNN_VAR)
    capped = ceiling is not None and onednn is not None and onednn == ONEDNN_ISA.get(ceiling)
    if library == "YNNPACK":
        flags = xla_flags.split()
        consistent = CONSISTENT in flags and "--xla_cpu_enable_platform_dependent_math=true" not in \
            flags[flags.index(CONSISTENT) + 1:]
        return (True, "consistent arithmetic (--xla_cpu_enable_platform_dependent_math=false)") if consistent \
            else (False, "YNNPACK chooses its kernels from the CPU (platform-dependent math is on)")
    if library == "XNNPACK":
        return False, "XNNPACK chooses its kernels from the CPU and has no consistent mode here"
    if library in ("oneDNN", "Eigen") and not capped:
        return False, f"oneDNN chooses its kernels from the CPU ({ONEDNN_VAR} is not at the ceiling)"
    if library == "oneDNN":
        return True, f"{ONEDNN_VAR}={onednn}"
    if library == "Eigen":
        if cpus != 1:
            return False, (f"Eigen blocks contractions by the caches and {cpus} threads: the order "
                           "of its sums follows the CPU model")
        return True, f"{ONEDNN_VAR}={onednn}, one thread"
    return False, f"a library call ({library}) whose kernels repro cannot tell"


def inventory(modules: Iterable[str], xla_flags: str, env: Mapping[str, str], cpus: int,
              ceiling: str | None) -> list[KernelEntry]:
    """The kernels of every module, grouped by library, op and pinning (sorted, stable)."""
    groups: dict[tuple[str, str, bool, str, bool], list[int]] = {}
    for text in modules:
        for call in parse(text):
            pinned, how = pinning(call.library, xla_flags, env, cpus, ceiling)
            blocked = call.k > SLICE_SAFE_K
            groups.setdefault((call.library, call.op, pinned, how, blocked), []).append(call.k)
    return [KernelEntry(lib, op, len(ks), pinned, how, max(ks), blocked)
            for (lib, op, pinned, how, blocked), ks in sorted(groups.items())]


def l1d_size() -> int | None:
    """The L1 data cache size CPUID reports to this process (glibc's sysconf reads CPUID: under
    qemu-user the emulated CPU's), in bytes; None where the C library does not say."""
    import ctypes
    import sys
    if not sys.platform.startswith("linux"):
        return None
    try:
        size = int(ctypes.CDLL(None).sysconf(_SC_LEVEL1_DCACHE_SIZE))
    except (OSError, AttributeError):
        return None
    return size if size > 0 else None


_SC_LEVEL1_DCACHE_SIZE = 188   # glibc's <bits/confname.h>


class ProgramWatch:
    """Keeps the optimized HLO of every program jax compiles or loads from its cache in this
    process (a wrap of jax's `compile_or_get_cached`; the executable is returned unchanged)."""

    def __init__(self) -> None:
        self.modules: list[str] = []
        self.error: str | None = None

    def start(self) -> None:
        try:
            from jax._src import compiler
        except ImportError as exc:
            self.error = f"jax's compiler module could not be read ({exc})"
            return
        original: Callable[..., Any] | None = getattr(compiler, "compile_or_get_cached", None)
        if original is None:
            self.error = "this jax has no compiler.compile_or_get_cached to watch"
            return

        def watched(*args: Any, **kwargs: Any) -> Any:
            executable = original(*args, **kwargs)
            try:
                self.modules.extend(m.to_string() for m in executable.hlo_modules())
            except Exception as exc:  # noqa: BLE001 - a program we cannot read is reported, not fatal
                self.error = f"a compiled program could not be read ({type(exc).__name__}: {exc})"
            return executable

        compiler.compile_or_get_cached = watched
