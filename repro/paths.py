"""Where repro keeps files that belong to the machine, not to a repository.

Only caches live here: anything under `cache_dir()` may be deleted at any time and is rebuilt
(the hash cache re-hashes, the code cache re-exports). Nothing that decides a verdict is stored
here, so a missing or corrupt cache can cost time, never correctness.
"""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The directory for repro's machine-local caches (not created here).

    Order: ``$REPRO_CACHE_DIR``, else ``$XDG_CACHE_HOME/repro``, else ``~/.cache/repro``
    (the XDG base-directory convention, so users can move or wipe every cache in one place).
    Empty variables count as unset, as the XDG specification asks.
    """
    explicit = os.environ.get("REPRO_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):  # XDG: relative values are invalid and must be ignored
        return Path(xdg) / "repro"
    return Path.home() / ".cache" / "repro"
