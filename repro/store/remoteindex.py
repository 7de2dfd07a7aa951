"""What this machine knows a store remote holds: sha256 -> size of each blob it saw listed
there or sent there, kept under the cache (`<cache>/remote-index/`), one file a remote.

A cluster job ships its project through the store (repro/engines/parcel.py). With every blob of a parcel
known here, packing it opens no connection at all: no fsspec and s3fs imports (~0.6 s of CPU on
the driver, while the cluster's workers start on the same cores) and no listing of a remote that
grows with every record. The index is a cache, never the truth: a remote can lose a blob behind
it (a lifecycle rule, a manual delete, another machine's clean-up), so a worker that finds one
missing says so, and the driver forgets the remote's index, lists the remote and ships again
(repro/engines/rayexec.py). As DVC's remote index did, it trades one listing per run for that retry.

Writers append whole lines with one `write` to a file opened with O_APPEND (lines from
concurrent audits do not interleave), each after a newline (a line cut short by a killed writer
stays apart); a listing replaces the file by rename. A reader skips a line it cannot parse, so
the worst a damaged index costs is a listing.
"""
from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import Mapping
from pathlib import Path

from repro.ioutil import atomic_write_text
from repro.paths import cache_dir
from repro.store.remote import RemoteConfig

_LINE = re.compile(r"^([0-9a-f]{64}) (\d+)$")


def index_path(config: RemoteConfig) -> Path:
    """The index file of a remote: named by a hash of its URL and options."""
    name = hashlib.sha256(repr(config.key()).encode()).hexdigest()[:32]
    return cache_dir() / "remote-index" / f"{name}.txt"


class RemoteIndex:
    """The blobs this machine knows `config`'s remote holds (read once, then kept in memory
    and on disk as they are learned)."""

    def __init__(self, config: RemoteConfig):
        self.config = config
        self.path = index_path(config)
        self._lock = threading.Lock()
        self._known: dict[str, int] = {}
        try:
            text = self.path.read_text(encoding="ascii", errors="replace")
        except OSError:
            text = ""
        for line in text.splitlines():
            m = _LINE.match(line)
            if m:
                self._known[m.group(1)] = int(m.group(2))

    def has(self, sha256: str, size: int) -> bool:
        with self._lock:
            return self._known.get(sha256) == size

    def learn(self, blobs: Mapping[str, int]) -> None:
        """Blobs seen at the remote (sent, or found there): remembered here and on disk."""
        with self._lock:
            new = {s: n for s, n in blobs.items() if self._known.get(s) != n}
            if not new:
                return
            self._known.update(new)
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    # a leading newline ends a line another writer was killed in the middle of
                    os.write(fd, "".join(f"\n{s} {n}" for s, n in new.items()).encode("ascii") + b"\n")
                finally:
                    os.close(fd)
            except OSError:
                pass   # a cache that cannot be written costs a listing next time, nothing else

    def replace(self, listing: Mapping[str, int]) -> None:
        """What a full listing of the remote found: the index becomes exactly that."""
        with self._lock:
            self._known = dict(listing)
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(self.path, "".join(f"{s} {n}\n" for s, n in listing.items()))
            except OSError:
                pass

    def forget(self) -> None:
        """Drop everything known (a worker found a blob the index claimed missing)."""
        with self._lock:
            self._known = {}
            try:
                self.path.unlink()
            except OSError:
                pass
