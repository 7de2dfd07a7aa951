"""Data pins: sha256 of files and directories, and their verification before a run.

A spec pins each data entry by path (relative to the repo root) and sha256. Before the child
starts, `verify_data` re-hashes every entry and refuses to run on anything else, naming each
entry that does not hold. Hashing is the only expensive part of a pin check, so:

- all files of all entries are hashed together, in one thread pool (hashlib releases the GIL on
  large updates and reads release it too, so threads use every core);
- unchanged files are not read at all: `repro.pins.hashcache.HashCache` vouches for them by
  (device, inode, size, mtime_ns).

Hash format (also in docs/data-pins.md; changing it breaks every pinned spec):

- a file: the sha256 of its bytes, as ``sha256sum`` prints it (64 lowercase hex);
- a directory: the sha256 of the text made of one line per regular file below it,
  ``f"{file_sha256}  {relpath}\\n"`` (two spaces, as ``sha256sum`` writes), where relpath is
  POSIX-style relative to the directory, sorted by the bytes of relpath, UTF-8 encoded (names that
  are not valid UTF-8 contribute their raw bytes). Hidden files count. Directories themselves
  (and so empty subdirectories), permissions and mtimes do not: like git, the hash is content
  and names only.

Decisions, each with its error message tested in tests/test_data_pins.py:

- A data entry that is an *empty* directory (no file anywhere below it) is an error: git does
  not store empty directories, so such a pin could never be reproduced from a clone.
- Symlinks inside a directory are followed and hashed as the content they point to, under the
  link's own relpath, when the target is inside the repository; a target outside the repo, a
  dangling link or a link cycle is an error. (Without a repo root, as in ``repro hash PATH``
  outside a repo, any target is followed.)
- FIFOs, sockets and devices are errors (reading a FIFO would hang); so are names containing a
  newline, which would make the directory listing ambiguous.
"""
from __future__ import annotations

import hashlib
import os
import stat as statmod
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath, PureWindowsPath

from repro.errors import DataPinError
from repro.pins.hashcache import HashCache, stat_key

CHUNK_SIZE = 1 << 20  # 1 MiB: large enough that per-call overhead vanishes, fits in L2-ish
REPIN_HINT = ("If the change is intended, run `repro pin SPEC` to re-pin; otherwise restore "
              "the data at the paths above.")

_local = threading.local()


class _Problem(Exception):
    """Why one entry cannot be hashed; the caller adds which entry it was."""


def default_workers() -> int:
    """Threads for hashing: the CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# -- one file ----------------------------------------------------------------------------------
def _buffer() -> memoryview:
    buf = getattr(_local, "buf", None)
    if buf is None:
        buf = _local.buf = memoryview(bytearray(CHUNK_SIZE))
    return buf


def _digest(path: str) -> tuple[str, os.stat_result]:
    """sha256 of the file and its fstat after reading (to tell whether it changed meanwhile)."""
    buf = _buffer()
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(buf[:n])
        return h.hexdigest(), os.fstat(f.fileno())


def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 (hex) of a file's bytes, read in 1 MiB chunks into a reused buffer. No cache."""
    return _digest(os.fspath(path))[0]


# -- walking -----------------------------------------------------------------------------------
def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _kind(mode: int) -> str:
    for test, name in ((statmod.S_ISFIFO, "a FIFO"), (statmod.S_ISSOCK, "a socket"),
                       (statmod.S_ISCHR, "a character device"),
                       (statmod.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def _scan(top: str, display: str, root: str | None) -> list[tuple[bytes, str, os.stat_result]]:
    """The regular files of `top` as (relpath bytes, real path to open, stat) triples.

    A file `top` gives one triple with relpath b"". Raises `_Problem` with a user message.
    """
    real_top = os.path.realpath(top)
    try:
        st = os.stat(real_top)
    except FileNotFoundError:
        raise _Problem(f"{display} does not exist") from None
    except OSError as e:
        raise _Problem(f"cannot stat {display}: {e.strerror}") from None
    if statmod.S_ISREG(st.st_mode):
        return [(b"", real_top, st)]
    if not statmod.S_ISDIR(st.st_mode):
        raise _Problem(f"{display} is {_kind(st.st_mode)}, not a file or directory")
    files: list[tuple[bytes, str, os.stat_result]] = []

    def show(rel: bytes) -> str:
        return f"{display.rstrip('/')}/{os.fsdecode(rel)}"

    def visit(real_dir: str, rel: bytes, ancestors: frozenset[str]) -> None:
        try:
            with os.scandir(real_dir) as it:
                entries = list(it)
        except OSError as exc:
            raise _Problem(f"cannot list directory {show(rel) if rel else display}: "
                           f"{exc.strerror}") from None
        for e in entries:
            name = os.fsencode(e.name)
            r = rel + name
            if b"\n" in name:
                raise _Problem(f"{show(r)!r}: file names containing a newline cannot be pinned "
                               "(the directory hash lists one name per line); rename it")
            path = os.path.join(real_dir, e.name)
            try:
                if e.is_symlink():
                    target = os.path.realpath(path)
                    if root is not None and not _inside(target, root):
                        raise _Problem(f"{show(r)} is a symlink to {target}, outside the "
                                       f"repository {root}; copy the data into the repository")
                    try:
                        tst = os.stat(target)
                    except FileNotFoundError:
                        raise _Problem(f"{show(r)} is a symlink to {target}, which does not "
                                       "exist") from None
                    if statmod.S_ISDIR(tst.st_mode):
                        if target in ancestors:
                            raise _Problem(f"{show(r)} is a symlink to {target}, a directory "
                                           "that contains it (a cycle)")
                        visit(target, r + b"/", ancestors | {target})
                    elif statmod.S_ISREG(tst.st_mode):
                        files.append((r, target, tst))
                    else:
                        raise _Problem(f"{show(r)} points to {_kind(tst.st_mode)}; only regular "
                                       "files and directories can be pinned")
                elif e.is_dir(follow_symlinks=False):
                    visit(path, r + b"/", ancestors | {path})
                else:
                    est = e.stat(follow_symlinks=False)
                    if not statmod.S_ISREG(est.st_mode):
                        raise _Problem(f"{show(r)} is {_kind(est.st_mode)}; only regular files "
                                       "and directories can be pinned")
                    files.append((r, path, est))
            except FileNotFoundError:
                continue  # vanished while listing: as if it had never been there
            except OSError as err:
                raise _Problem(f"cannot stat {show(r)}: {err.strerror}") from None

    visit(real_top, b"", frozenset({real_top}))
    if not files:
        raise _Problem(f"{display} is a directory with no files in it; git does not keep empty "
                       "directories, so this pin could not be reproduced from a clone. Put the "
                       "data in it, or remove the entry")
    return files


# -- hashing many files ------------------------------------------------------------------------
def _hash_files(files: Mapping[str, os.stat_result], cache: HashCache | None,
                workers: int) -> dict[str, str | OSError]:
    """sha256 of every path (or the OSError reading it), using and then updating the cache."""
    done: dict[str, str | OSError] = dict(cache.lookup(files.items())) if cache else {}
    todo = sorted((p for p in files if p not in done), key=lambda p: -files[p].st_size)
    started_ns = time.time_ns()
    fresh: list[tuple[str, os.stat_result, str]] = []
    lock = threading.Lock()
    queue = iter(todo)  # largest first, pulled by whichever worker is free: balanced tails

    def work() -> None:
        while True:
            with lock:
                path = next(queue, None)
            if path is None:
                return
            try:
                sha, after = _digest(path)
            except OSError as e:
                done[path] = e
                continue
            done[path] = sha
            if stat_key(after) == stat_key(files[path]):  # unchanged while we read it
                fresh.append((path, files[path], sha))

    n = max(1, min(workers, len(todo)))
    if n == 1:
        work()
    else:
        with ThreadPoolExecutor(n, thread_name_prefix="repro-hash") as pool:
            for f in [pool.submit(work) for _ in range(n)]:
                f.result()
    if cache and fresh:
        cache.store(fresh, started_ns)
    return done


def _read_problem(display: str, e: OSError) -> str:
    if isinstance(e, PermissionError):
        return (f"cannot read {display}: permission denied; make it readable by the user "
                "running repro")
    if isinstance(e, FileNotFoundError):
        return f"{display} disappeared while it was being hashed"
    return f"cannot read {display}: {e.strerror or e}"


def _hash_targets(targets: Mapping[str, tuple[str, str]], cache: HashCache | None | bool,
                  workers: int | None, root: str | None) -> dict[str, str | _Problem]:
    """key -> (path, display) to key -> sha256 or `_Problem`; every file in one pool."""
    own = cache is None or cache is True   # None/True: a cache of our own; False: none
    hc: HashCache | None = HashCache() if own else (cache if isinstance(cache, HashCache)
                                                    else None)
    try:
        scans: dict[str, list[tuple[bytes, str, os.stat_result]]] = {}
        out: dict[str, str | _Problem] = {}
        for key, (path, display) in targets.items():
            try:
                scans[key] = _scan(path, display, root)
            except _Problem as p:
                out[key] = p
        files = {p: st for scan in scans.values() for _, p, st in scan}
        hashes = _hash_files(files, hc, workers or default_workers())
    finally:
        if own and hc is not None:
            hc.close()
    for key, scan in scans.items():
        display = targets[key][1]
        failed = [(r, h) for r, p, _ in scan if isinstance(h := hashes[p], OSError)]
        if failed:
            rel, error = failed[0]
            shown = f"{display.rstrip('/')}/{os.fsdecode(rel)}" if rel else display
            out[key] = _Problem(_read_problem(shown, error))
        elif len(scan) == 1 and scan[0][0] == b"":
            out[key] = str(hashes[scan[0][1]])
        else:
            out[key] = _tree_digest((r, str(hashes[p])) for r, p, _ in scan)
    return out


def _tree_digest(items: Iterable[tuple[bytes, str]]) -> str:
    return hashlib.sha256(tree_listing(items)).hexdigest()


def tree_listing(items: Iterable[tuple[bytes, str]]) -> bytes:
    """The text a directory's hash is the sha256 of: one `<sha256>  <relpath>` line per file
    (relpath as bytes, '/'-separated), sorted by relpath. Also what the store keeps for a
    directory fetched file by file (its name is then the directory's hash)."""
    return b"".join(sha.encode("ascii") + b"  " + rel + b"\n" for rel, sha in sorted(items))


def parse_listing(data: bytes) -> list[tuple[bytes, str]] | None:
    """A directory listing's (relpath, sha256) lines, or None when `data` is not one (a relpath
    that is empty, absolute, leaves the directory or names `.`; lines out of order)."""
    out: list[tuple[bytes, str]] = []
    for line in data.split(b"\n")[:-1] if data.endswith(b"\n") else [None]:
        if line is None or len(line) < 67 or line[64:66] != b"  ":
            return None
        sha, rel = line[:64].decode("ascii", "replace"), line[66:]
        parts = rel.split(b"/")
        if not all(c in "0123456789abcdef" for c in sha) or rel.startswith(b"/") or \
                any(part in (b"", b".", b"..") for part in parts):
            return None
        out.append((rel, sha))
    return out if out and out == sorted(out) and len({r for r, _ in out}) == len(out) else None


# -- public API --------------------------------------------------------------------------------
def hash_paths(paths: Sequence[str | os.PathLike], cache: HashCache | None | bool = None, *,
               root: str | os.PathLike | None = None,
               workers: int | None = None) -> list[tuple[str, str]]:
    """[(path as given, sha256)] for files or directories, all files hashed in one pool.

    Args:
      cache: None: the user's persistent cache (`repro.paths.cache_dir()`); False: no cache,
        read everything; or a `HashCache`.
      root: when given, symlinks inside directories must resolve inside it (a repo root).
      workers: threads; default the CPUs available.
    Raises:
      DataPinError: naming every path that cannot be hashed, and why.
    """
    targets = {str(i): (os.fspath(p), os.fspath(p)) for i, p in enumerate(paths)}
    real_root = os.path.realpath(root) if root is not None else None
    res = _hash_targets(targets, cache, workers, real_root)
    bad = [str(v) for v in res.values() if isinstance(v, _Problem)]
    if bad:
        raise DataPinError("cannot hash:\n" + "\n".join(f"  - {b}" for b in bad))
    return [(targets[k][1], res[k]) for k in targets]  # type: ignore[misc]


def hash_path(path: str | os.PathLike, cache: HashCache | None | bool = None, *,
              root: str | os.PathLike | None = None, workers: int | None = None) -> str:
    """sha256 of a file or a directory (format in the module docstring). See `hash_paths`."""
    return hash_paths([path], cache, root=root, workers=workers)[0][1]


def resolve_data_path(repo_root: str | os.PathLike, rel: str) -> Path:
    """The real absolute path of data entry `rel`, which must exist inside `repo_root`.

    The spec validator already rejects absolute and ``..`` paths by their text; this checks again
    (the API is public) and then checks what the filesystem says, which text cannot: a symlink
    anywhere on the way that resolves outside the repository is rejected too.

    Raises:
      DataPinError: empty, absolute, leaving the repo (lexically or through a symlink), missing.
    """
    root = os.path.realpath(repo_root)
    text = os.fspath(rel)
    if not text.strip():
        raise DataPinError("data path is empty; give a path relative to the repository root")
    if os.path.isabs(text) or PureWindowsPath(text).drive or PureWindowsPath(text).root:
        raise DataPinError(f"data path {text!r} is absolute; data must live inside the "
                           f"repository {root} and be given relative to its root")
    norm = os.path.normpath(PurePosixPath(text).as_posix())
    if norm == os.pardir or norm.startswith(os.pardir + os.sep):
        raise DataPinError(f"data path {text!r} leaves the repository {root}; data must live "
                           "inside it")
    if norm == os.curdir:
        raise DataPinError(f"data path {text!r} names the repository root itself; pin a file or "
                           "directory inside it")
    joined = os.path.join(root, text)
    real = os.path.realpath(joined)
    if not _inside(real, root):
        raise DataPinError(f"data path {text!r} resolves through a symlink to {real}, outside "
                           f"the repository {root}; copy the data into the repository")
    if not os.path.exists(real):
        if os.path.lexists(joined):
            raise DataPinError(f"data path {text!r} is a symlink to {real}, which does not exist")
        raise DataPinError(f"data path {text!r} does not exist (looked for {joined})")
    return Path(real)


def verify_data(entries: Mapping[str, tuple[str, str | None]], repo_root: str | os.PathLike,
                cache: HashCache | None | bool = None, *,
                workers: int | None = None) -> dict[str, Path]:
    """Check every data pin; return data name -> real absolute path for the child.

    Args:
      entries: data name -> (path relative to the repo root, expected sha256 or None). None means
        "not pinned": the path is checked (inside the repo, exists) but its content is not read.
      repo_root: the repository the paths are relative to.
      cache: as in `hash_paths`.
    Raises:
      DataPinError: listing EVERY entry that does not hold (missing, outside the repo, unreadable,
        empty directory, content changed), each with name, path, expected and actual sha256, then
        what to do.
    """
    root = os.path.realpath(repo_root)
    resolved: dict[str, Path] = {}
    problems: dict[str, str] = {}
    targets: dict[str, tuple[str, str]] = {}
    for name, (rel, _) in entries.items():
        try:
            resolved[name] = resolve_data_path(root, rel)
        except DataPinError as e:
            problems[name] = str(e)
            continue
        if entries[name][1] is not None:
            targets[name] = (str(resolved[name]), rel)
    actual: dict[str, str] = {}
    for name, res in _hash_targets(targets, cache, workers, root).items():
        if isinstance(res, _Problem):
            problems[name] = str(res)
        elif res != str(entries[name][1]).strip().lower():
            problems[name], actual[name] = "content changed", res
    if problems:
        lines = [f"{len(problems)} of {len(entries)} data pins do not hold "
                 f"(repository {root}):"]
        for name in entries:  # spec order
            if name in problems:
                rel, expected = entries[name]
                lines += [f"  - data {name!r}: {rel}", f"      {problems[name]}",
                          f"      expected sha256 {expected or '(not pinned)'}",
                          f"      actual   sha256 {actual.get(name, '(none)')}"]
        lines.append(REPIN_HINT)
        raise DataPinError("\n".join(lines))
    return resolved
