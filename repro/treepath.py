"""Pytree leaf paths as users read them: ``params/dense_1/kernel``, never ``leaf 7``.

Used for record keys (arrays.npz) and for every message that names a leaf.
"""
from __future__ import annotations


def key_to_str(key) -> str:
    """One pytree key (DictKey, SequenceKey, GetAttrKey, FlattenedIndexKey) as a path segment."""
    for attr in ("key", "idx", "name"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def flatten_with_paths(tree) -> list[tuple[str, object]]:
    """[(path, leaf)] in pytree order; a bare array gets the path ``""``.

    Raises ValueError if two leaves map to the same path (e.g. dict keys containing '/').
    """
    import jax

    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    out, seen = [], set()
    for keys, leaf in leaves:
        path = "/".join(key_to_str(k) for k in keys)
        if path in seen:
            raise ValueError(f"two pytree leaves share the path {path!r}; rename the keys")
        seen.add(path)
        out.append((path, leaf))
    return out
