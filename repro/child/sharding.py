"""Sharded values in the child (docs/sharding.md): the mesh a spec asks for, a sharded
`jax.Array` as its global value plus its PartitionSpec, and a kept value placed back onto the
mesh.

A PartitionSpec is kept as JSON: one entry per dimension, `null` (replicated), an axis name, or
a list of axis names (`P('data', None)` -> `["data", null]`; `P(('data', 'model'))` ->
`[["data", "model"]]`). A sharding that is not a `NamedSharding` is kept as its description (a
string): compared, never placed back. A value on one device has no entry at all, so a record of
an unsharded run holds nothing new. Runs in the child: numpy and jax only.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

# A kept PartitionSpec: one entry per dimension (None, an axis, a list of axes), or the
# description of a sharding that is not a NamedSharding.
SpecJSON = list[Any] | str


def build_mesh(devices: int, axes: Sequence[tuple[str, int]]) -> Any:
    """`jax.sharding.Mesh` over the first `devices` devices sorted by id, shaped by `axes`:
    the same device at the same place of the mesh in every run."""
    import jax
    from jax.sharding import Mesh

    found = sorted(jax.devices(), key=lambda d: d.id)
    if len(found) < devices:
        raise RuntimeError(f"environment.devices is {devices}, but jax shows {len(found)} "
                           f"{jax.default_backend()} device(s)")
    grid = np.array(found[:devices], dtype=object).reshape([n for _, n in axes])
    return Mesh(grid, tuple(name for name, _ in axes))


def spec_json(leaf: object) -> SpecJSON | None:
    """The PartitionSpec of a jax.Array spread over more than one device, as JSON; None for a
    value on one device (or not a jax.Array)."""
    import jax

    if not isinstance(leaf, jax.Array):
        return None
    try:
        sharding = leaf.sharding
    except Exception:   # a deleted or donated array: the value read reports it
        return None
    if len(sharding.device_set) <= 1:
        return None
    if isinstance(sharding, jax.sharding.NamedSharding):
        out: list[Any] = []
        for entry in sharding.spec:
            out.append(list(entry) if isinstance(entry, tuple) else entry)
        while out and out[-1] is None:   # P('data') and P('data', None) shard alike
            out.pop()
        return out
    return str(sharding)


def describe(spec: SpecJSON | None) -> str:
    """A kept PartitionSpec as code writes it: `P('data', None)`; `unsharded` for None."""
    if spec is None:
        return "unsharded (one device)"
    if isinstance(spec, str):
        return spec
    parts = ["None" if e is None else repr(e) if isinstance(e, str)
             else "(" + ", ".join(repr(a) for a in e) + ")" for e in spec]
    return f"P({', '.join(parts)})"


def global_value(leaf: object) -> np.ndarray:
    """The whole value of a (possibly sharded) array as numpy. A jax.Array every shard of which
    this process holds is gathered by numpy itself; one spread over processes is gathered from
    all of them first (multi-process runs: planned, issue #27)."""
    import jax

    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
    return np.asarray(leaf)


def place(value: np.ndarray, spec: SpecJSON | None, mesh: Any, where: str) -> Any:
    """`value` as a jax.Array laid out on `mesh` as `spec` says (a value restored from a
    checkpoint back onto the spec's mesh). ValueError naming `where`, the spec and the mesh
    when the spec does not fit it: an axis the mesh lacks, or a size that does not divide the
    dimension."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec

    if spec is None or isinstance(spec, str):
        return jnp.asarray(value)
    shape_text = "{" + ", ".join(f"{a}: {n}" for a, n in mesh.shape.items()) + "}" \
        if mesh is not None else "none (environment.mesh is not set)"
    problem = None
    if mesh is None:
        problem = "this run has no mesh"
    elif len(spec) > value.ndim:
        problem = f"it names {len(spec)} dimensions and the value has {value.ndim}"
    else:
        for dim, entry in enumerate(spec):
            axes = [] if entry is None else [entry] if isinstance(entry, str) else list(entry)
            missing = [a for a in axes if a not in mesh.shape]
            if missing:
                problem = f"the mesh has no axis {', '.join(map(repr, missing))}"
                break
            size = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
            if value.shape[dim] % size:
                problem = (f"dimension {dim} has size {value.shape[dim]}, which "
                           f"{'x'.join(axes)} = {size} does not divide")
                break
    if problem is not None:
        raise ValueError(f"{where} was recorded sharded as {describe(spec)}, which does not fit "
                         f"this run's mesh {shape_text}: {problem}. Restore it on the mesh it was "
                         "recorded on (environment.mesh), or record again")
    pspec = PartitionSpec(*[tuple(e) if isinstance(e, list) else e for e in spec])
    return jax.device_put(value, NamedSharding(mesh, pspec))


def valid_spec(value: object) -> bool:
    """Whether `value` is a kept PartitionSpec as JSON gives it back (None: none kept)."""
    if value is None or isinstance(value, str):
        return True
    if not isinstance(value, (list, tuple)):
        return False
    return all(e is None or isinstance(e, str) or
               (isinstance(e, (list, tuple)) and all(isinstance(a, str) for a in e)) for e in value)
