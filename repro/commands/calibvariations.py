"""The variation matrix of `repro calibrate`: what this host can vary (ISA levels, cores, the
compile cache, PYTHONHASHSEED, listing order, GPU ops, emulated CPUs), what it cannot and why,
and which kind each variation is. Kept apart so the matrix can be read and tested without runs,
statistics or spec edits.
"""
from __future__ import annotations

import os
import platform
import shutil
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from repro.env.cpu import cpu_isa, cpu_model
from repro.env.isa import XLA_ISAS, cap_in, ceiling, effective, host_best, is_x86
from repro.errors import ReproError
from repro.spec import EnvironmentSpec, Spec
from repro.variation import BASELINE, Variation

KINDS = ("isa", "cpus", "compile-cache", "hash-seed", "listing", "gpu-ops", "cpu")
# `--meshes 8x1,4x2`: the same training on other meshes (same devices and global batch); their
# deviations go to tolerance.mesh, which applies only when the mesh is the one difference.
MESH = "mesh"
# The kinds whose deviations the proposed tolerances absorb: rounding that differs between
# environments a verify can meet (another host's ISA, a cold or warm cache, another core count
# once environment.cpus is changed: a numeric fingerprint field, so compared within tolerance). The
# others change *what* is computed, not how it is rounded: code that depends on them is named,
# and is to be fixed, not tolerated. PYTHONHASHSEED is 0 in every repro run, so a verify never
# meets another one; a listing order that matters means data read in another order; repro's GPU
# runs always set --xla_gpu_deterministic_ops=true, so a verify never meets it off (gpu-ops).
TOLERATED = ("isa", "cpus", "compile-cache", "cpu")
HASH_SEEDS = ("1", "2")      # the baseline runs under PYTHONHASHSEED=0 (repro's default)

# -- what this host can vary ------------------------------------------------------------------
@dataclass(frozen=True)
class Host:
    """The machine calibrate runs on: what it can vary (ISA levels, cores) and its name."""

    machine: str
    cpu_flags: tuple[str, ...]
    cores: int
    model: str = ""

    @classmethod
    def here(cls) -> Host:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
            os.cpu_count() or 1)
        return cls(platform.machine(), tuple(cpu_isa()), cores, cpu_model())

    @property
    def best_isa(self) -> str | None:
        """The highest XLA ISA level this CPU reaches (None off x86-64)."""
        return host_best(self.cpu_flags) if is_x86(self.machine) else None

    def summary(self) -> str:
        model = f" ({self.model})" if self.model else ""
        return f"{self.machine} {self.best_isa or ''}{model}, {self.cores} cores".replace("  ", " ")


def effective_isa(env: EnvironmentSpec, host: Host) -> str:
    """The ISA XLA's code generation may use for runs of `env` on `host` (env/isa.py)."""
    cap = cap_in(" ".join(env.xla_flags)) or ceiling(env.isa, host.cpu_flags, host.machine)
    return effective(f"--xla_cpu_max_isa={cap}" if cap else "", host.cpu_flags, host.machine)


def variation_kind(variation: Variation) -> str:
    """Which of KINDS a variation belongs to ('baseline' for the plain run)."""
    if variation.mesh is not None:
        return MESH
    if variation.emulate_cpu is not None:
        return "cpu"
    if variation.isa is not None:
        return "isa"
    if variation.cpus is not None:
        return "cpus"
    if variation.compile_cache is not None:
        return "compile-cache"
    if variation.hash_seed != BASELINE.hash_seed:
        return "hash-seed"
    if variation.listing_order != BASELINE.listing_order:
        return "listing"
    if variation.deterministic_ops is not None:
        return "gpu-ops"
    return "baseline"


def isa_variations(spec: Spec, host: Host) -> tuple[list[Variation], str | None]:
    env = spec.environment
    if not is_x86(host.machine):
        return [], f"isa: {host.machine} is not x86-64; XLA has no ISA ceiling there"
    if env.platform == "gpu":
        return [], "isa: environment.platform is gpu; the CPU ISA ceiling does not apply"
    if cap_in(" ".join(env.xla_flags)):
        return [], "isa: environment.xla_flags sets --xla_cpu_max_isa, which no variation overrides"
    best = host.best_isa
    if best is None:
        return [], "isa: this CPU does not reach SSE4_2, the lowest XLA ISA level"
    own = effective_isa(env, host)
    out = []
    for level in XLA_ISAS[: XLA_ISAS.index(best) + 1]:
        if level == own:
            continue
        if level == best:  # the host's best: no ceiling at all, as `isa: native` runs
            out.append(Variation(f"isa=native ({level})", isa="native"))
        else:
            out.append(Variation(f"isa={level}", isa=level))
    return out, None


def cpu_variations(spec: Spec, host: Host) -> tuple[list[Variation], str | None]:
    """Other CPUs, emulated (env/emulate.py): what a CI runner of that kind would compute."""
    from repro.env.emulate import CALIBRATE_MODELS, INSTALL, QEMU

    if not is_x86(host.machine):
        return [], f"cpu: {host.machine} is not x86-64; qemu-user emulates x86-64 CPUs on x86-64 hosts"
    if spec.environment.platform == "gpu":
        return [], "cpu: environment.platform is gpu; an emulated CPU has no GPU"
    if not shutil.which(QEMU):
        return [], f"cpu: {QEMU} is not installed: {INSTALL}"
    return [Variation(f"cpu={m}", emulate_cpu=m) for m in CALIBRATE_MODELS], None


def variations_for(spec: Spec, host: Host) -> list[Variation]:
    """Every variation this host can run the spec under (none is the spec's own setting):
    each XLA ISA level up to the host's best other than the spec's effective one (the best as
    `native`), 1, 2 and all cores, the compile cache off and warm, two other PYTHONHASHSEEDs,
    and directory listings reversed."""
    out, _ = isa_variations(spec, host)
    own = spec.environment.cpus
    out += [Variation(f"cpus={n}", cpus=n) for n in sorted({1, 2, host.cores})
            if n != own and n <= host.cores]
    out += [Variation("compile-cache=off", compile_cache=False),
            Variation("compile-cache=warm", compile_cache=True)]
    out += [Variation(f"PYTHONHASHSEED={s}", hash_seed=s) for s in HASH_SEEDS]
    out.append(Variation("listing=reversed", listing_order="reversed"))
    if spec.environment.platform == "gpu":
        out.append(Variation("deterministic-ops=off", deterministic_ops=False))
    out += cpu_variations(spec, host)[0]
    return out


def unavailable(spec: Spec, host: Host) -> list[str]:
    """What variations_for leaves out on this host, and why."""
    _, why = isa_variations(spec, host)
    out = [why] if why else []
    _, why = cpu_variations(spec, host)
    out += [why] if why else []
    if host.cores == 1:
        out.append("cpus: this host lets runs use one core only")
    if spec.environment.platform != "gpu":
        out.append("gpu-ops: environment.platform is not gpu; XLA's GPU deterministic ops do "
                   "not apply")
    return out


def select(variations: Sequence[Variation], only: Collection[str] | None) -> list[Variation]:
    """The variations of the kinds in `only` (when None: all but `cpu`, whose emulated runs are
    20-50x slower and are asked for by name); unknown kinds are an error."""
    if only is None:
        return [v for v in variations if variation_kind(v) != "cpu"]
    unknown = sorted(set(only) - set(KINDS))
    if unknown:
        raise ReproError(f"unknown variation kind(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(KINDS)}")
    return [v for v in variations if variation_kind(v) in only]


def parse_meshes(text: str, spec: Spec) -> list[Variation]:
    """`8x1,4x2,2x4` as mesh variations of `spec` (its own mesh left out): one size per axis of
    environment.mesh, in its order, multiplying to environment.devices. ReproError saying what
    is wrong otherwise."""
    from repro.invariance import mesh_variation

    env = spec.environment
    if not env.mesh:
        raise ReproError("--meshes needs a spec with environment.mesh (the axes the sizes are "
                         "for), e.g. `environment: {devices: 8, mesh: {data: 4, model: 2}}`")
    axes, own = list(env.mesh), tuple(env.mesh.values())
    out: list[Variation] = []
    for item in (t.strip() for t in text.split(",")):
        try:
            sizes = tuple(int(n) for n in item.split("x"))
        except ValueError:
            raise ReproError(f"--meshes: {item!r} is not a mesh; write sizes joined by x, one per "
                             f"axis of environment.mesh ({', '.join(axes)}), e.g. "
                             f"{'x'.join(str(n) for n in own)}") from None
        if len(sizes) != len(axes) or any(n < 1 for n in sizes):
            raise ReproError(f"--meshes: {item!r} needs {len(axes)} sizes of at least 1, one per "
                             f"axis of environment.mesh ({', '.join(axes)})")
        product = 1
        for n in sizes:
            product *= n
        if product != env.devices * env.processes:
            given = (f"environment.devices is {env.devices}" if env.processes == 1 else
                     f"devices x processes is {env.devices * env.processes}")
            raise ReproError(f"--meshes: {item!r} has {product} places but {given}; every mesh "
                             "uses the same devices")
        if sizes != own and all(v.mesh != sizes for v in out):
            out.append(mesh_variation(sizes))
    return out
