"""Atomic, defensive file I/O for the files that matter (run results, records).

A write goes to a temp file in the same directory, is fsynced, then renamed over the target:
a reader sees the old file or the new one, never half of one.
"""
from __future__ import annotations

import errno
import json
import os
import stat
import tempfile
import zipfile
from collections.abc import Callable
from io import BufferedReader
from pathlib import Path
from typing import BinaryIO


def _atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())  # mkstemp's 0600 would hide records
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json_atomic(path: Path, data: object) -> None:
    text = json.dumps(data, indent=1, sort_keys=True, allow_nan=False, default=_json_default)
    _atomic_write(path, lambda f: f.write(text.encode() + b"\n"))


def _json_default(obj: object) -> object:
    if hasattr(obj, "item") and hasattr(obj, "dtype"):  # numpy scalars
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def write_npz_atomic(path: Path, arrays: dict) -> None:
    import numpy as np

    _atomic_write(path, lambda f: np.savez(f, **arrays))


def open_regular(path: Path) -> BufferedReader:
    """Open a regular file for reading without following a symbolic link at its last component.

    Files a run wrote (run.json, arrays.npz) sit in a directory the sandboxed code could write:
    a link there must never make the host read, or show, a file of its own choosing. Raises
    FileNotFoundError when absent, ValueError when it is a link, a FIFO or anything but a file.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ValueError(f"{path} is a symbolic link, not a file") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ValueError(f"{path} is not a regular file")
    return os.fdopen(fd, "rb")


def read_npz(path: Path) -> dict:
    """Load every array of an .npz eagerly (allow_pickle=False); raise ValueError on damage
    (a link or a non-file counts as damage: see open_regular)."""
    import numpy as np

    try:
        with open_regular(path) as f:
            _check_inflation(f, os.fstat(f.fileno()).st_size)
            with np.load(f, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError, zipfile.LargeZipFile) as exc:
        raise ValueError(f"{type(exc).__name__}: {exc}") from None


MAX_INFLATION = 100   # uncompressed / compressed: np.savez stores arrays uncompressed (1x)


def _check_inflation(f: BinaryIO, size: int) -> None:
    """Refuse a zip whose members inflate far beyond the file (a decompression bomb from a run's
    output would exhaust this process's memory); `f` is rewound."""
    with zipfile.ZipFile(f) as z:
        unpacked = sum(info.file_size for info in z.infolist())
    f.seek(0)
    if unpacked > MAX_INFLATION * max(size, 1 << 20):
        raise ValueError(f"its members unpack to {unpacked:,} bytes from a file of {size:,}: "
                         "not an array file repro wrote")


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Replace a text file atomically, keeping its permission bits."""
    path = Path(path)
    mode = os.stat(path).st_mode & 0o777 if path.exists() else 0o644

    def write(f: BinaryIO) -> None:
        f.write(text.encode("utf-8"))
        os.fchmod(f.fileno(), mode)
    _atomic_write(path, write)
