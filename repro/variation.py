"""A `Variation`: one way to run a spec differently without changing any pin.

`repro calibrate` runs a spec under each variation this host can do (ISA ceilings, core counts,
compile cache off/warm, PYTHONHASHSEED, the order directory listings come back in) to measure
how far the numbers move when only the environment moves (on a GPU also XLA's deterministic
ops off, which repro's own runs never are). The pipeline applies a variation in
`make_job`; the default variation is the plain run.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from repro.spec import EnvironmentSpec

ListingOrder = Literal["native", "reversed"]


@dataclass(frozen=True)
class Variation:
    """What differs from the spec's own run (None / defaults: nothing)."""

    name: str = "baseline"
    isa: str | None = None                  # environment.isa for this run
    cpus: int | None = None                 # environment.cpus for this run
    compile_cache: bool | None = None       # False: compile everything afresh
    hash_seed: str = "0"                    # PYTHONHASHSEED of the child
    listing_order: ListingOrder = "native"  # reversed: os.listdir/os.scandir come back reversed
    deterministic_ops: bool | None = None   # False: --xla_gpu_deterministic_ops=false
    emulate_cpu: str | None = None          # run under `qemu-x86_64 -cpu MODEL` (local backend)
    mesh: tuple[int, ...] | None = None     # environment.mesh's sizes, its axes kept in order

    def environment(self, env: EnvironmentSpec) -> EnvironmentSpec:
        """The spec's environment block as this variation runs it."""
        changes: dict[str, object] = {}
        if self.isa is not None:
            changes["isa"] = self.isa
        if self.cpus is not None:
            changes["cpus"] = self.cpus
        if self.mesh is not None:   # same axis names, same devices (checked by the caller)
            changes["mesh"] = dict(zip(env.mesh or {}, self.mesh, strict=True))
        return env.model_copy(update=changes) if changes else env

    def check(self, backend: str) -> None:
        """Refuse, before anything runs, a variation this machine cannot run (env/emulate.py)."""
        if self.emulate_cpu is not None:
            from repro.env.emulate import check
            check(self.emulate_cpu, backend)

    def settings(self, settings: dict[str, str]) -> dict[str, str]:
        """The child's determinism settings (env/settings.py) as this variation runs them."""
        if self.deterministic_ops is None:
            return settings
        on, off = "--xla_gpu_deterministic_ops=true", "--xla_gpu_deterministic_ops=false"
        want = on if self.deterministic_ops else off
        flags = [f for f in settings.get("XLA_FLAGS", "").split() if f not in (on, off)]
        return {**settings, "XLA_FLAGS": " ".join([*flags, want])}


BASELINE = Variation()
