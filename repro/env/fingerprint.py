"""The environment fingerprint's meaning: which fields decide the arithmetic, how two
fingerprints differ, a kernel entry in words, the package-list digest. Pure standard library, a
shared leaf: the child takes the fingerprint (repro/child/fingerprint.py), the parent compares.
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

# Fingerprint fields that decide the arithmetic. When all are equal, `tolerance.mode: auto`
# demands bitwise equality; any other field (hostname, CPU model name, python patch) only informs.
NUMERIC_FIELDS = ("jax", "jaxlib", "numpy", "backend", "device_kind", "device_count", "cpus",
                  "effective_isa", "l1d_cache", "settings", "prng_canary", "machine")
# (the host's raw `cpu_isa` flags only inform: what decides is the effective ISA, env/isa.py;
# `l1d_cache` is set only when the programs hold contractions summed in L1-sized slices, and
# `kernels` says which library kernels the programs call and what pins them: child/kernels.py)

# a contraction of at most this many terms is one slice on every CPU with an L1d of 32 KiB or
# more (repro/child/kernels.py); longer ones make the fingerprint carry `l1d_cache`
SLICE_SAFE_K = 256


def describe_kernel(kernel: Mapping[str, Any]) -> str:
    """One kernel entry of a fingerprint, short: `YNNPACK dot_general ×7 pinned`."""
    k = f", contractions up to {kernel['longest_k']}" if kernel.get("blocked") else ""
    state = "pinned" if kernel.get("pinned") else "unpinned"
    return f"{kernel.get('library')} {kernel.get('op')} ×{kernel.get('count')} {state}{k}"


def fingerprint_changes(recorded: dict, current: dict) -> list[tuple[str, object, object, bool]]:
    """[(field, recorded, current, numeric?)] for every field that differs."""
    out = []
    for key in sorted(set(recorded) | set(current)):
        a, b = recorded.get(key), current.get(key)
        if key == "kernels":
            a = [describe_kernel(k) for k in a] if isinstance(a, list) else a
            b = [describe_kernel(k) for k in b] if isinstance(b, list) else b
        if key == "settings" and isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                if a.get(k) != b.get(k):
                    out.append((f"settings.{k}", a.get(k), b.get(k), True))
        elif a != b:
            out.append((key, a, b, key in NUMERIC_FIELDS))
    return out


def packages_digest(packages: list[str]) -> str:
    """sha256 of an installed-package list (`installed_packages`), one line per package."""
    return hashlib.sha256("\n".join(packages).encode()).hexdigest()
