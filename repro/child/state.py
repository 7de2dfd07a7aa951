"""A training state pytree as arrays and back: what `ctx.checkpoint` keeps and `ctx.restore`
gives back (docs/checkpoints.md).

A state is any pytree — params, optax state (namedtuples included), a numpy Generator's
`bit_generator.state` (a dict holding a 128-bit Python int and a string), counters. Every leaf
becomes one numpy array plus a *kind* that says how to give it back exactly:

  jax           a jax.Array (its weak_type kept: a weakly typed scalar restored strongly typed
                would change the jitted program's types)
  numpy         a numpy array;  numpy-scalar  a numpy scalar (np.float32(1.0))
  int           a Python int that fits int64;  bigint  any other Python int (little-endian
                two's-complement bytes as uint8, at least 32 of them)
  float, complex, bool   Python scalars (float64, complex128, bool_)
  str           a Python str (its UTF-8 bytes as uint8)
  key:<impl>    a typed jax PRNG key array (`jax.random.key`, the keys of Flax's nnx.Rngs): its
                uint32 key data, given back with `jax.random.wrap_key_data(data, impl=<impl>)`

Flax state needs nothing more: nnx.State, nnx.Variable (Param, RngCount, RngKey, ...), Linen's
FrozenDict and flax.struct dataclasses are pytree nodes, named by `repro.child.treepath` and rebuilt
from the template like any other node.

Restoring takes its structure from the state the training function passes to `ctx.restore`
(the template), so namedtuples, custom nodes and dict order come back as the function builds
them; leaves are matched by path, and a template whose paths or kinds differ from the
checkpoint's is an error naming them. Runs in the child: numpy and jax only.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from repro.child.sharding import SpecJSON, global_value, place, spec_json, valid_spec
from repro.child.treepath import flatten_with_paths, named_leaves, prng_key_data

KINDS = ("jax", "numpy", "numpy-scalar", "int", "bigint", "float", "complex", "bool", "str")
KEY_KIND = "key:"   # + the PRNG implementation's name (threefry2x32, rbg, unsafe_rbg, ...)


def known_kind(kind: object) -> bool:
    """A kind `decode_leaf` can give back: one of KINDS, or ``key:<implementation name>``."""
    if not isinstance(kind, str):
        return False
    if kind.startswith(KEY_KIND):
        impl = kind[len(KEY_KIND):]
        return bool(impl) and impl.replace("_", "").isalnum() and impl.isascii()
    return kind in KINDS


@dataclass(frozen=True)
class LeafKind:
    """How one state leaf is given back: its path, kind, (jax) weak type and, for a jax.Array
    spread over a mesh, its PartitionSpec (child/sharding.py; None: one device)."""

    path: str
    kind: str
    weak: bool = False
    sharding: SpecJSON | None = None

    def as_list(self) -> list[Any]:
        # [path, kind, weak] as before; the sharding only where there is one
        base: list[Any] = [self.path, self.kind, self.weak]
        return base if self.sharding is None else [*base, self.sharding]

    @classmethod
    def from_list(cls, item: Sequence[Any]) -> LeafKind:
        if not isinstance(item, (list, tuple)) or len(item) not in (3, 4):
            raise ValueError(f"not a state leaf description: {item!r}")
        path, kind, weak = item[:3]
        sharding = item[3] if len(item) == 4 else None
        if not isinstance(path, str) or not known_kind(kind) or not isinstance(weak, bool) \
                or not valid_spec(sharding):
            raise ValueError(f"not a state leaf description: {item!r}")
        return cls(path, kind, weak, _frozen(sharding))


def encode_state(tree: object, what: str) -> list[tuple[LeafKind, np.ndarray]]:
    """[(kind, array)] of every leaf in pytree order; TypeError naming a leaf that cannot be
    kept (a function, an arbitrary object)."""
    import jax

    return [_encode_leaf(path, leaf, what, jax.Array) for path, leaf in named_leaves(tree, what)]


def _encode_leaf(path: str, leaf: object, what: str, jax_array: type) -> tuple[LeafKind, np.ndarray]:
    typed = prng_key_data(leaf) if isinstance(leaf, jax_array) else None
    if typed is not None:
        impl, arr = typed
        kind, weak = KEY_KIND + impl, False
    elif isinstance(leaf, jax_array):
        arr = global_value(leaf)   # a sharded array: its whole value (its spec: below)
        kind, weak = "jax", bool(getattr(leaf, "weak_type", False))
    elif isinstance(leaf, np.ndarray):
        arr, kind, weak = leaf, "numpy", False
    elif isinstance(leaf, np.generic):
        arr, kind, weak = np.asarray(leaf), "numpy-scalar", False
    elif isinstance(leaf, bool):
        arr, kind, weak = np.asarray(leaf, np.bool_), "bool", False
    elif isinstance(leaf, int):
        if -2**63 <= leaf < 2**63:
            arr, kind, weak = np.asarray(leaf, np.int64), "int", False
        else:
            # whole 64-bit words, at least four, so a counter or an RNG state keeps its shape
            # from one checkpoint to the next (compared per leaf across steps)
            n = max(32, 8 * ((leaf.bit_length() + 64) // 64))
            arr = np.frombuffer(leaf.to_bytes(n, "little", signed=True), np.uint8).copy()
            kind, weak = "bigint", False
    elif isinstance(leaf, float):
        arr, kind, weak = np.asarray(leaf, np.float64), "float", False
    elif isinstance(leaf, complex):
        arr, kind, weak = np.asarray(leaf, np.complex128), "complex", False
    elif isinstance(leaf, str):
        arr, kind, weak = np.frombuffer(leaf.encode("utf-8"), np.uint8).copy(), "str", False
    else:
        raise TypeError(f"{what}: leaf {path or '(root)'!r} is a {type(leaf).__name__}; a "
                        "checkpoint keeps arrays (jax or numpy), numbers and strings")
    if arr.dtype.kind not in "biufc":
        raise TypeError(f"{what}: leaf {path or '(root)'!r} has dtype {arr.dtype}, not a number")
    sharding = spec_json(leaf) if kind == "jax" else None
    return LeafKind(path or "(root)", kind, weak, _frozen(sharding)), arr


def _frozen(spec: SpecJSON | None) -> Any:
    """A PartitionSpec's JSON as tuples (LeafKind is frozen and hashable); as_list gives
    lists back through JSON either way."""
    if isinstance(spec, list):
        return tuple(tuple(e) if isinstance(e, list) else e for e in spec)
    return spec


def decode_leaf(kind: LeafKind, arr: np.ndarray, mesh: Any = None) -> object:
    """The leaf `encode_state` turned into (kind, arr), as it was; a sharded jax.Array placed
    back onto `mesh` (the spec's) with its recorded PartitionSpec."""
    if kind.kind == "jax" and kind.sharding is not None and not isinstance(kind.sharding, str):
        spec = [list(e) if isinstance(e, tuple) else e for e in kind.sharding]
        placed = place(arr, spec, mesh, f"leaf {kind.path!r}")
        return _weakly_typed(placed) if kind.weak else placed
    k = kind.kind
    if k.startswith(KEY_KIND):
        import jax
        import jax.numpy as jnp

        return jax.random.wrap_key_data(jnp.asarray(arr), impl=k[len(KEY_KIND):])
    if k == "jax":
        import jax.numpy as jnp

        return _weakly_typed(jnp.asarray(arr)) if kind.weak else jnp.asarray(arr)
    if k == "numpy":
        return arr
    if k == "numpy-scalar":
        return arr[()]
    if k == "int":
        return int(arr)
    if k == "bigint":
        return int.from_bytes(arr.astype(np.uint8).tobytes(), "little", signed=True)
    if k == "float":
        return float(arr)
    if k == "complex":
        return complex(arr)
    if k == "bool":
        return bool(arr)
    if k == "str":
        return arr.astype(np.uint8).tobytes().decode("utf-8")
    raise ValueError(f"unknown state leaf kind {k!r}")


def _weakly_typed(x: Any) -> Any:
    """`x` as a weakly typed array of its dtype (what a Python scalar becomes in jax). jax has
    no public spelling for it; the private one is guarded so that a jax without it restores a
    strongly typed array (which may retrace, never change a value)."""
    try:
        from jax._src.lax.lax import _convert_element_type
    except ImportError:
        return x
    return _convert_element_type(x, x.dtype, weak_type=True)


def decode_state(template: object, leaves: Mapping[str, tuple[LeafKind, np.ndarray]],
                 step: int, mesh: Any = None) -> object:
    """`template` with every leaf replaced by the checkpoint's leaf of the same path. Raises
    ValueError naming the paths the template has and the checkpoint lacks (or the reverse), or
    a leaf whose kind changed (the state's structure changed since it was recorded)."""
    import jax

    flat = flatten_with_paths(template)
    paths = [p or "(root)" for p, _ in flat]
    missing = [p for p in paths if p not in leaves]
    extra = [p for p in leaves if p not in set(paths)]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"the state passed to ctx.restore has leaves the checkpoint at step "
                         f"{step} lacks: {', '.join(missing[:6])}")
        if extra:
            parts.append(f"the checkpoint has leaves the state lacks: {', '.join(extra[:6])}")
        raise ValueError("; ".join(parts) + " — the state's structure changed since it was "
                         "recorded: record again")
    values = []
    for (path, leaf), name in zip(flat, paths):
        kind, arr = leaves[name]
        _, now = _encode_leaf(path, leaf, "ctx.restore", jax.Array)
        if now.shape != arr.shape and kind.kind not in ("bigint", "str"):
            raise ValueError(f"ctx.restore: leaf {name!r} has shape {now.shape} in the state "
                             f"passed, {arr.shape} in the checkpoint at step {step}: the state "
                             "changed since it was recorded; record again")
        values.append(decode_leaf(kind, arr, mesh))
    treedef = jax.tree_util.tree_structure(template)
    return jax.tree_util.tree_unflatten(treedef, values)
