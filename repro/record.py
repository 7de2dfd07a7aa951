"""Recorded versions: `fixtures/records/<spec name>/<platform key>/{record.json, arrays.npz}`.

A record is written as a whole directory next to its final place and swapped in with one atomic
`renameat2(RENAME_EXCHANGE)` (Linux), so a reader — or a writer killed at any instant — sees the
previous record or the new one, never a mix. Where the kernel or filesystem lacks the exchange,
two renames are used and a reader recovers the previous record from the `.old` directory left
between them. Reads check the arrays file against the sha256 in record.json.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from repro.errors import RecordError
from repro.ioutil import fsync_dir, read_npz, write_json_atomic, write_npz_atomic

RECORD_FORMAT = 1
RECORDS_DIR = Path("fixtures") / "records"
ARRAYS_FILE = "arrays.npz"
# A spec name or platform key becomes one directory name under the records root: nothing else.
_COMPONENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_component(value: object, what: str) -> str:
    """`value` if it is safe as one path component (letters, digits, '.', '_', '-'; no
    separator, no '..'), else RecordError. Spec names and platform keys name record
    directories; a value that a run reported must never choose a host path."""
    if not isinstance(value, str) or not _COMPONENT.match(value) or ".." in value:
        raise RecordError(f"{what} {value!r} cannot name a record directory: use letters, "
                          "digits, '.', '_' and '-' (at most 128, starting with a letter or digit)")
    return value


@dataclass
class Record:
    """A recorded version: its metadata (record.json) and arrays (weights, kept gradients)."""

    path: Path
    meta: dict
    arrays: dict  # key -> numpy array

    @property
    def metrics(self) -> dict:
        return self.meta.get("metrics", {})

    @property
    def fingerprint(self) -> dict:
        return self.meta.get("fingerprint", {})


def record_dir(repo_root: Path, name: str, platform_key: str, root: Path | None = None) -> Path:
    """Where a spec's record for a platform lives (`root` overrides fixtures/records)."""
    base = Path(root) if root is not None else Path(repo_root) / RECORDS_DIR
    return base / check_component(name, "spec name") / check_component(platform_key, "platform key")


def sha256_bytes_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_record(directory: Path, meta: dict, arrays: dict) -> Path:
    """Write record.json + arrays.npz into `directory`, replacing any previous record atomically."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    _clean_leftovers(directory)
    staging = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.new-"))
    try:
        write_npz_atomic(staging / ARRAYS_FILE, arrays)
        meta = {**meta, "format": RECORD_FORMAT,
                "arrays": {"file": ARRAYS_FILE, "sha256": sha256_bytes_of(staging / ARRAYS_FILE),
                           "index": {k: {"shape": list(v.shape), "dtype": str(v.dtype)}
                                     for k, v in sorted(arrays.items())}}}
        write_json_atomic(staging / "record.json", meta)
        os.chmod(staging, 0o755)
        fsync_dir(staging)
        if not directory.exists():
            os.rename(staging, directory)
        elif not _exchange(staging, directory):
            old = directory.parent / f".{directory.name}.old-{os.getpid()}"
            os.rename(directory, old)
            os.rename(staging, directory)
            shutil.rmtree(old, ignore_errors=True)
        fsync_dir(directory.parent)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)  # after an exchange: the previous record
    return directory


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE). False if unsupported."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    AT_FDCWD, RENAME_EXCHANGE = -100, 2
    rc = renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE)
    return rc == 0


def _clean_leftovers(directory: Path) -> None:
    """Remove staging dirs of writers that were killed (and old dirs once a record exists)."""
    for p in directory.parent.glob(f".{directory.name}.*-*"):
        if ".new-" in p.name or (".old-" in p.name and (directory / "record.json").exists()):
            shutil.rmtree(p, ignore_errors=True)


def check_record(directory: Path) -> tuple[Path, dict]:
    """Find a record and check it without loading arrays (no numpy): record.json parses, is of
    this format, and the arrays file has the sha256 it names. Returns (directory, meta)."""
    directory = Path(directory)
    if directory.is_file():
        directory = directory.parent
    if not (directory / "record.json").exists():
        olds = sorted(directory.parent.glob(f".{directory.name}.old-*"))
        if olds and (olds[-1] / "record.json").exists():
            directory = olds[-1]  # a writer was killed between its two renames
        else:
            raise RecordError(f"no recorded version at {directory}; run `repro record SPEC` "
                              "(or `pytest --repro-record`) to create it, then commit it")
    meta_path = directory / "record.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecordError(f"{meta_path} is corrupted ({exc}); restore it from git "
                          "(`git checkout -- <path>`) or record again") from None
    if not isinstance(meta, dict) or meta.get("format") != RECORD_FORMAT:
        raise RecordError(f"{meta_path} is not a repro record of format {RECORD_FORMAT} "
                          f"(found format {meta.get('format') if isinstance(meta, dict) else '?'}); "
                          "record again with this version of repro")
    index = meta.get("arrays")
    if not isinstance(index, dict):
        raise RecordError(f"{meta_path} is corrupted: it has no arrays index; record again")
    if index.get("file", ARRAYS_FILE) != ARRAYS_FILE:
        # the name is fixed: a record.json pointing elsewhere (../../x.npz, /etc/...) is damage
        raise RecordError(f"{meta_path} is corrupted: its arrays.file is "
                          f"{index.get('file')!r}, not {ARRAYS_FILE!r}; restore it from git "
                          "or record again")
    arrays_path = directory / ARRAYS_FILE
    if not arrays_path.is_file():
        raise RecordError(f"{arrays_path} is missing; restore it from git or record again")
    actual = sha256_bytes_of(arrays_path)
    if actual != index.get("sha256"):
        raise RecordError(f"{arrays_path} is corrupted or truncated: its sha256 is {actual}, "
                          f"record.json expects {index.get('sha256')}; restore it from git "
                          "(`git checkout -- <path>`) or record again")
    return directory, meta


def read_record(directory: Path) -> Record:
    """Load and check a record. Raise RecordError naming the file and what to do."""
    directory, meta = check_record(directory)
    index = meta["arrays"]
    arrays_path = directory / ARRAYS_FILE
    try:
        arrays = read_npz(arrays_path)
    except ValueError as exc:
        raise RecordError(f"{arrays_path} is corrupted: it cannot be read ({exc}); restore it "
                          "from git or record again") from None
    expected = set(index.get("index", {}))
    if set(arrays) != expected:
        raise RecordError(f"{arrays_path} holds {sorted(set(arrays) ^ expected)[:5]} that "
                          "record.json does not list (or misses some); record again")
    return Record(directory, meta, arrays)
