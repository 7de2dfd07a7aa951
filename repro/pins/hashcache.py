"""The stat-keyed hash cache: unchanged data files are not read again.

Re-verifying a pinned data tree is on the path of every `pytest` run, so it must cost a `stat` per
file, not a read. The cache remembers, per absolute path, the sha256 computed for the file together
with the file's `(st_dev, st_ino, st_size, st_mtime_ns)` at the time it was read; an entry is used
only while all four still match. This is the scheme of git's index and of dvc-data's `state`
(kept, as there, apart from the hashing itself: `repro.pins.data` asks this module and nothing
else knows about sqlite).

Storage: one sqlite database (stdlib) at ``cache_dir()/hashes.sqlite``, shared by every process of
the user (``pytest -n 2``, the CLI, nightly audits):

- WAL journal + a busy timeout, so readers never block and writers wait briefly for each other;
- lookups are bulk (one read transaction, a few ``IN (...)`` queries of 500 keys), never one
  round-trip per file;
- the cache is an optimisation only: a locked, unwritable or corrupt database degrades to
  re-hashing (a corrupt file is deleted and recreated), and never raises.

Racy mtime: a file written *while or just after* it was hashed can keep the same size and, at
coarse timestamp granularity, the same mtime, so its stat key would vouch for stale content. We
therefore never store an entry whose mtime is within `RACY_WINDOW_NS` (2 s, above the coarsest
common granularity: FAT's 2 s; ext4/xfs/btrfs are ns, but kernels stamp with a jiffy-coarse clock)
of the moment hashing started, or in the future. Such files are simply hashed again next time,
until they are old enough. What no stat-keyed cache can detect is a deliberate rewrite that
restores size and mtime (``os.utime``); pass ``cache=False`` to `repro.pins.data` to re-read.
"""
from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from repro.paths import cache_dir

log = logging.getLogger(__name__)

RACY_WINDOW_NS = 2_000_000_000
"""Entries whose mtime is this close to (or after) the start of hashing are not stored."""

DB_NAME = "hashes.sqlite"
_SCHEMA_VERSION = 1
_CHUNK = 500  # keys per IN (...) query: far below SQLITE_MAX_VARIABLE_NUMBER on any build
_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26

StatKey = tuple[int, int, int, int]


def stat_key(st: os.stat_result) -> StatKey:
    """The part of a stat result that vouches for unchanged content: device, inode, size, mtime.

    ctime is deliberately left out: it changes on chmod/chown/link and on every copy-back of the
    same bytes, which would make the cache miss without any change to the content.
    """
    return (_i64(st.st_dev), _i64(st.st_ino), st.st_size, st.st_mtime_ns)


def _i64(x: int) -> int:
    # sqlite integers are signed 64-bit; some filesystems hand out inode/device numbers >= 2**63.
    return x - (1 << 64) if x >= (1 << 63) else x


def _is_corrupt(e: sqlite3.Error) -> bool:
    code = getattr(e, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    msg = str(e).lower()
    return "not a database" in msg or "malformed" in msg


class HashCache:
    """Maps (absolute path, stat key) -> sha256, persistent in sqlite.

    Args:
      path: the database file; default ``repro.paths.cache_dir() / "hashes.sqlite"``.
      timeout: seconds to wait for another process's write lock before giving up on this
        lookup or store (the caller then just re-hashes / does not remember).
      racy_window_ns: see the module docstring.

    Attributes:
      disabled: None while the cache works; otherwise why it was switched off for this object
        (unwritable directory, persistent errors). Hashing goes on without it.

    The connection is opened lazily, reopened after a fork, and used from one thread at a time
    (the data module looks up before its thread pool starts and stores after it finished).
    """

    def __init__(self, path: str | os.PathLike | None = None, *, timeout: float = 2.0,
                 racy_window_ns: int = RACY_WINDOW_NS):
        self.path = Path(path) if path is not None else cache_dir() / DB_NAME
        self.timeout = timeout
        self.racy_window_ns = racy_window_ns
        self.disabled: str | None = None
        self._conn: sqlite3.Connection | None = None
        self._pid: int | None = None

    # -- public -------------------------------------------------------------------------------
    def lookup(self, items: Iterable[tuple[str, os.stat_result]]) -> dict[str, str]:
        """The cached sha256 of every `(path, stat)` whose stored stat key still matches.

        Paths absent from the result must be hashed. Never raises for cache trouble.
        """
        want: dict[bytes, tuple[str, StatKey]] = {
            os.fsencode(p): (p, stat_key(st)) for p, st in items}
        conn = self._connect()
        if conn is None or not want:
            return {}
        keys = list(want)
        found: dict[str, str] = {}
        try:
            conn.execute("BEGIN")  # one read snapshot for all chunks
            try:
                for i in range(0, len(keys), _CHUNK):
                    chunk = keys[i:i + _CHUNK]
                    marks = ",".join("?" * len(chunk))
                    for row in conn.execute(
                            "SELECT path, dev, ino, size, mtime_ns, sha256 FROM hashes "
                            f"WHERE path IN ({marks})", chunk):
                        p, key = want[row[0]]
                        if tuple(row[1:5]) == key:
                            found[p] = row[5]
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as e:
            self._trouble("lookup", e)
            return {}
        return found

    def store(self, items: Iterable[tuple[str, os.stat_result, str]], started_ns: int) -> int:
        """Remember `(path, stat, sha256)` triples hashed from `started_ns` (``time.time_ns()``).

        `stat` must be the one taken *before* the file was read. Racy entries (see module doc)
        are skipped. Returns how many entries were written (0 when the cache is unavailable).
        """
        limit = started_ns - self.racy_window_ns
        rows = [(os.fsencode(p), *stat_key(st), sha) for p, st, sha in items
                if st.st_mtime_ns < limit]
        if not rows:
            return 0
        conn = self._connect()
        if conn is None:
            return 0
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany("INSERT OR REPLACE INTO hashes "
                                 "(path, dev, ino, size, mtime_ns, sha256) "
                                 "VALUES (?, ?, ?, ?, ?, ?)", rows)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            self._trouble("store", e)
            return 0
        return len(rows)

    def close(self) -> None:
        if self._conn is not None and self._pid == os.getpid():
            try:
                self._conn.close()
            except sqlite3.Error:
                pass
        self._conn = None

    def __enter__(self) -> HashCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = f"disabled: {self.disabled}" if self.disabled else "enabled"
        return f"HashCache({str(self.path)!r}, {state})"

    # -- connection handling --------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection | None:
        if self.disabled:
            return None
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        self._conn = None  # inherited over fork: never reuse a parent's connection
        for attempt in (1, 2):
            try:
                self._conn, self._pid = self._open(), os.getpid()
                return self._conn
            except sqlite3.Error as e:
                if attempt == 1 and _is_corrupt(e):
                    log.warning("repro hash cache %s is corrupt; recreating it", self.path)
                    self._discard_files()
                    continue
                if "locked" in str(e).lower() or "busy" in str(e).lower():
                    log.debug("repro hash cache %s busy; hashing without it this time", self.path)
                    return None  # transient: try again on the next call
                self.disabled = f"cannot open {self.path}: {e}"
            except OSError as e:
                self.disabled = f"cannot create {self.path.parent}: {e.strerror or e}"
        log.debug("repro hash cache off: %s", self.disabled)
        return None

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None,
                               check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode=WAL")     # persistent once set; readers never block
            conn.execute("PRAGMA synchronous=NORMAL")   # a lost last write only costs a re-hash
            if conn.execute("PRAGMA user_version").fetchone()[0] != _SCHEMA_VERSION:
                conn.execute("BEGIN IMMEDIATE")
                # re-check under the write lock: another process may have just created it
                if conn.execute("PRAGMA user_version").fetchone()[0] == _SCHEMA_VERSION:
                    conn.execute("COMMIT")
                    return conn
                conn.execute("DROP TABLE IF EXISTS hashes")
                conn.execute("CREATE TABLE hashes (path BLOB PRIMARY KEY, dev INTEGER NOT NULL, "
                             "ino INTEGER NOT NULL, size INTEGER NOT NULL, "
                             "mtime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL) WITHOUT ROWID")
                conn.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
                conn.execute("COMMIT")
        except BaseException:
            conn.close()
            raise
        return conn

    def _trouble(self, what: str, e: sqlite3.Error) -> None:
        """Cache errors cost time, never correctness: note them and carry on without."""
        self.close()
        if _is_corrupt(e):
            log.warning("repro hash cache %s is corrupt (%s); recreating it", self.path, e)
            self._discard_files()
        else:
            log.debug("repro hash cache %s: %s failed (%s); continuing", self.path, what, e)

    def _discard_files(self) -> None:
        self.close()
        for suffix in ("", "-wal", "-shm", "-journal"):
            try:
                os.unlink(f"{self.path}{suffix}")
            except FileNotFoundError:
                pass
            except OSError as e:
                self.disabled = f"cannot remove corrupt {self.path}{suffix}: {e.strerror or e}"
