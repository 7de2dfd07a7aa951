"""Content-addressed blobs: a directory of files named by the sha256 of their bytes
(`<root>/<2 hex>/<62 hex>`), so equal blobs are stored once and a blob can be checked against
its name (docs/checkpoints.md).

Two live on a machine: a record's own `blobs/` directory (in git, beside record.json: the small
blobs, replaced with the record atomically) and the machine's store under repro's cache
directory (`<cache>/store`: blobs too large for git). Writers are safe under concurrency: a blob
is written to a temporary file in its final directory and renamed into place, so no partial blob
is ever visible, and two writers of one blob write the same bytes. Reads re-hash: a damaged blob
is an error, never used. A blob that arrives from elsewhere (a remote, repro/store/remote.py) is
hashed as it is written to its temporary file and renamed into place only when the hash matches
its name (`install`).
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from repro.errors import RecordError
from repro.paths import cache_dir
from repro.proctree import alive

_SHA = re.compile(r"^[0-9a-f]{64}$")
_TMP = re.compile(r"^\.tmp-(\d+)-")   # a writer's temporary: `.tmp-<pid>-…`


def _tmp_prefix() -> str:
    return f".tmp-{os.getpid()}-"

CHUNK = 1 << 22                # 4 MiB: reads and writes of blobs are streamed in pieces this size
GIT_BLOB_MAX = 1 << 20   # blobs up to 1 MiB stay with the record (in git); larger ones go to the store


def machine_store() -> BlobStore:
    """The machine's store (`$REPRO_CACHE_DIR/store`, else `~/.cache/repro/store`)."""
    return BlobStore(cache_dir() / "store", repair="delete it and run `repro pull` (or record again)")


def array_bytes(arr: np.ndarray) -> bytes:
    """An array as .npy bytes (dtype, shape and order in the header): the blob of a leaf."""
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asarray(arr), allow_pickle=False)
    return buf.getvalue()


def bytes_array(data: bytes) -> np.ndarray:
    return np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)


class BlobStore:
    """Blobs under `root`, named by sha256."""

    def __init__(self, root: Path, repair: str = "restore it from git or record again"):
        self.root = Path(root)
        self.repair = repair   # what a user does about a damaged blob here

    def path(self, sha256: str) -> Path:
        if not _SHA.match(sha256):
            raise RecordError(f"{sha256!r} is not a sha256 blob name")
        return self.root / sha256[:2] / sha256[2:]

    def has(self, sha256: str) -> bool:
        """A blob of that name is here: a regular file (a link is not a blob)."""
        path = self.path(sha256)
        return path.is_file() and not path.is_symlink()

    def intact(self, sha256: str) -> bool:
        """A blob of that name is here and its bytes hash to it."""
        return self.has(sha256) and hash_file(self.path(sha256)) == sha256

    def put(self, data: bytes) -> str:
        """Store `data` (once) and return its sha256. A file already there is kept only when
        its bytes hash to its name; a damaged one, or a link, is replaced."""
        sha = hashlib.sha256(data).hexdigest()
        target = self.path(sha)
        if self.has(sha) and target.stat().st_size == len(data) and hash_file(target) == sha:
            return sha
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=_tmp_prefix())
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return sha

    def get(self, sha256: str, what: str) -> bytes:
        """The blob's bytes, re-hashed; RecordError naming `what` when missing or damaged."""
        target = self.path(sha256)
        try:
            from repro.ioutil import open_regular

            with open_regular(target) as f:
                data = f.read()
        except (FileNotFoundError, ValueError):
            raise RecordError(f"{what}: blob {sha256[:12]}… is missing from {self.root}") from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise RecordError(f"{what}: blob {target} is damaged (its sha256 is {actual[:12]}…, "
                              f"its name says {sha256[:12]}…); it is not used: {self.repair}")
        return data

    def shas(self) -> Iterator[str]:
        """The names of the blobs held (temporary files of writers at work are not blobs)."""
        if not self.root.is_dir():
            return
        for sub in sorted(self.root.iterdir()):
            if len(sub.name) != 2 or not sub.is_dir():
                continue
            for f in sorted(sub.iterdir()):
                if _SHA.match(sub.name + f.name) and f.is_file():
                    yield sub.name + f.name

    def sweep(self, directory: Path | None = None) -> list[Path]:
        """Remove the temporaries of writers that are gone (a process killed mid-write leaves
        `.tmp-<pid>-…`), in one blob directory or the whole store; returns what was removed.
        A live writer's temporary is never touched."""
        dirs = [directory] if directory is not None else (
            [d for d in self.root.iterdir() if d.is_dir() and len(d.name) == 2] if self.root.is_dir() else [])
        removed = []
        for d in dirs:
            try:
                names = os.listdir(d)
            except OSError:
                continue
            for name in names:
                m = _TMP.match(name)
                if m and not alive(int(m.group(1))):
                    try:
                        os.unlink(d / name)
                        removed.append(d / name)
                    except OSError:
                        pass
        return removed

    def install(self, sha256: str, chunks: Iterable[bytes]) -> str:
        """Write the bytes of `chunks` as blob `sha256`, hashing them on the way: renamed into
        place only when their sha256 is the name, else nothing is kept. Returns the sha256 of
        the bytes received (the caller compares it with `sha256`)."""
        return self.take(chunks, keep=lambda actual: actual == sha256,
                         directory=self.path(sha256).parent)

    def take(self, chunks: Iterable[bytes], keep: Callable[[str], bool] = lambda sha: True,
             directory: Path | None = None) -> str:
        """Write a stream whose hash is not known in advance as a blob: hashed as it is written
        to a temporary file (in `directory`, default the store's root), renamed to its sha256's
        place only when `keep(sha256)` says so (else nothing is kept). Returns the sha256."""
        tmp, sha = self.stage(chunks, directory)
        try:
            if keep(sha):
                self.adopt(tmp, sha)
        finally:
            tmp.unlink(missing_ok=True)
        return sha

    def stage(self, chunks: Iterable[bytes], directory: Path | None = None) -> tuple[Path, str]:
        """A stream written, fsynced and hashed into a temporary file of the store (not a blob
        yet: `adopt` it, or unlink it): its path and sha256. For blobs that are kept only
        together (a directory's files, once the directory's hash is known to match). The
        temporary file goes in `directory` (default the root), after what a writer killed
        there (kill -9 mid-download) left is swept."""
        directory = directory or self.root
        directory.mkdir(parents=True, exist_ok=True)
        self.sweep(directory)
        digest = hashlib.sha256()
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=_tmp_prefix())
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    digest.update(chunk)
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            os.unlink(tmp)
            raise
        return Path(tmp), digest.hexdigest()

    def adopt(self, tmp: Path, sha256: str) -> None:
        """A staged file (its bytes hash to `sha256`) renamed into its place as that blob."""
        target = self.path(sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)


def hash_file(path: Path) -> str:
    """sha256 of a file's bytes, read in CHUNK pieces (hashlib releases the GIL on each: threads
    hash files in parallel)."""
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        while n := f.readinto(buf):
            digest.update(view[:n])
    return digest.hexdigest()
