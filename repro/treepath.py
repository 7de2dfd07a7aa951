"""Pytree leaf paths as users read them: ``params/dense_1/kernel``, never ``leaf 7``.

Used for record keys (arrays.npz) and for every message that names a leaf.
"""
from __future__ import annotations

from typing import Any


def key_to_str(key: object) -> str:
    """One pytree key (DictKey, SequenceKey, GetAttrKey, FlattenedIndexKey) as a path segment."""
    for attr in ("key", "idx", "name"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def flatten_with_paths(tree: object) -> list[tuple[str, object]]:
    """[(path, leaf)] in pytree order; a bare array gets the path ``""``.

    Raises ValueError if two leaves map to the same path (e.g. dict keys containing '/').
    """
    import jax

    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    out: list[tuple[str, object]] = []
    seen: set[str] = set()
    for keys, leaf in leaves:
        path = "/".join(key_to_str(k) for k in keys)
        if path in seen:
            raise ValueError(f"two pytree leaves share the path {path!r}; rename the keys")
        seen.add(path)
        out.append((path, leaf))
    return out


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
    its type, or ValueError for two leaves of one path."""
    import numpy as np

    out = []
    for path, leaf in named_leaves(tree, what):
        try:
            arr = np.asarray(leaf)
        except Exception as exc:  # an object numpy cannot turn into an array at all
            raise TypeError(f"{what}: leaf {path or '(root)'!r} is a {type(leaf).__name__}, "
                            f"not an array ({exc})") from None
        if arr.dtype.kind not in "biufc":
            raise TypeError(f"{what}: leaf {path or '(root)'!r} is a {type(leaf).__name__} "
                            f"(dtype {arr.dtype}), not a numeric array; a record keeps arrays of "
                            "numbers only (bool, int, float, complex)")
        out.append((path, arr))
    return out
