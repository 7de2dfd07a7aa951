"""Pytree leaf paths as users read them: ``params/dense_1/kernel``, never ``leaf 7``.

Used for record keys (arrays.npz) and for every message that names a leaf. Paths come from jax's
own key paths (DictKey, SequenceKey, GetAttrKey, FlattenedIndexKey), so any registered pytree
node names itself: dicts and Flax's FrozenDict and nnx.State by key, lists and tuples by index,
namedtuples (optax states) and dataclasses (flax.struct) by field. One rule on top: a wrapper
whose only child is its ``value`` attribute (Flax's nnx.Variable: Param, BatchStat, RngKey, ...)
adds no segment, so an NNX model's kernel is ``linear1/kernel``, not ``linear1/kernel/value``.
Nothing here imports Flax: the rule is about the tree's shape, not its types.
"""
from __future__ import annotations

from typing import Any


def key_to_str(key: object) -> str:
    """One pytree key (DictKey, SequenceKey, GetAttrKey, FlattenedIndexKey) as a path segment."""
    for attr in ("key", "idx", "name"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


WRAPPED = "value"   # the attribute a one-child wrapper node holds its content in (nnx.Variable)


def flatten_with_paths(tree: object) -> list[tuple[str, object]]:
    """[(path, leaf)] in pytree order; a bare array gets the path ``""``.

    Raises ValueError if two leaves map to the same path (e.g. dict keys containing '/').
    """
    import jax

    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    wrappers = _wrappers([keys for keys, _ in leaves], jax.tree_util.GetAttrKey(WRAPPED))
    out: list[tuple[str, object]] = []
    seen: set[str] = set()
    for keys, leaf in leaves:
        path = "/".join(key_to_str(k) for i, k in enumerate(keys)
                        if not wrappers or (keys[:i], k) not in wrappers)
        if path in seen:
            raise ValueError(f"two pytree leaves share the path {path!r}; rename the keys")
        seen.add(path)
        out.append((path, leaf))
    return out


def _wrappers(paths: list[tuple[Any, ...]], wrapped: Any) -> set[tuple[tuple[Any, ...], Any]]:
    """The (prefix, key) pairs to leave out of paths: a ``GetAttrKey("value")`` below a node
    every one of whose leaves passes through it, i.e. the node only wraps its ``value``. Leaving
    such a key out cannot make two paths equal: nothing else hangs from that node."""
    found = {keys[:i] for keys in paths for i, k in enumerate(keys) if k == wrapped}
    if not found:
        return set()
    for keys in paths:
        for i in range(len(keys)):
            if keys[i] != wrapped and keys[:i] in found:
                found.discard(keys[:i])
    return {(prefix, wrapped) for prefix in found}


def named_leaves(tree: object, what: str) -> list[tuple[str, object]]:
    """`flatten_with_paths`, its ValueError prefixed with `what` (the tree's name in errors)."""
    try:
        return flatten_with_paths(tree)
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None


def numeric_leaves(tree: object, what: str) -> list[tuple[str, Any]]:
    """[(path, numpy array)] of a pytree whose every leaf must be a numeric array (bool, int,
    float, complex): what a record can store and compare. `what` names the tree in errors
    ("the returned params", "ctx.log_grads at step 3"). Raises TypeError naming the leaf and
    its type, or ValueError for two leaves of one path. A typed PRNG key (`jax.random.key`, the
    keys in Flax's nnx.Rngs) is kept as its key data (`jax.random.key_data`, uint32)."""
    from repro.child.sharding import global_value

    out = []
    for path, leaf in named_leaves(tree, what):
        typed = prng_key_data(leaf)
        if typed is not None:   # a typed PRNG key (nnx.Rngs): its key data, uint32
            out.append((path, typed[1]))
            continue
        try:
            arr = global_value(leaf)   # a sharded jax.Array: its whole value
        except Exception as exc:  # an object numpy cannot turn into an array at all
            raise TypeError(f"{what}: leaf {path or '(root)'!r} is a {type(leaf).__name__}, "
                            f"not an array ({exc})") from None
        if arr.dtype.kind not in "biufc":
            raise TypeError(f"{what}: leaf {path or '(root)'!r} is a {type(leaf).__name__} "
                            f"(dtype {arr.dtype}), not a numeric array; a record keeps arrays of "
                            "numbers only (bool, int, float, complex)")
        out.append((path, arr))
    return out


def prng_key_data(leaf: object) -> tuple[str, Any] | None:
    """(implementation name, key data as a numpy array) of a typed PRNG key array
    (`jax.random.key(0)`: dtype ``key<fry>``), None for anything else. numpy cannot hold a
    typed key; its uint32 key data and the implementation's name give it back exactly."""
    dtype = getattr(leaf, "dtype", None)
    if dtype is None or type(dtype).__module__.startswith("numpy"):
        return None
    import jax
    import numpy as np

    if not isinstance(leaf, jax.Array) or not jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        return None
    return str(jax.random.key_impl(leaf)), np.asarray(jax.random.key_data(leaf))


def tree_specs(tree: object, prefix: str) -> dict[str, Any]:
    """`prefix/<leaf path>` -> PartitionSpec of every sharded leaf of `tree` (none: {}), keyed
    as the record keys the leaf's array (`weights/params/w`, `grads/3/params/w`)."""
    from repro.child.sharding import spec_json

    out = {}
    for path, leaf in flatten_with_paths(tree):
        spec = spec_json(leaf)
        if spec is not None:
            out[f"{prefix}/{path}" if path else prefix] = spec
    return out

