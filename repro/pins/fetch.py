"""Data by hash (docs/data-pins.md): a `data:` entry with `url:` whose path is absent from the
repository is fetched by its sha256 into the machine's cache, and the training reads that copy.

    data:
      corpus: {path: data/corpus.txt, sha256: 6b1e..., url: "s3://bucket/corpus.txt"}

- The bytes go into the machine's store (`<cache>/store/<2 hex>/<62 hex>`, repro/store/blobs.py),
  hashed as they arrive and renamed into place only when their sha256 is the pinned one: a
  partial or wrong download is never visible, never used. A wrong hash at the URL is an error
  naming the entry, the URL, the expected and the actual sha256 (not retried: it is not
  transient).
- The training sees `<cache>/data/<sha256>/<file name of path>` (a hard link to the blob, a
  copy where links fail): the entry's own file name, read-only in a container as any data
  entry. Nothing is written into the user's working tree: a clone stays clean, and a path that
  is present is verified as before (the URL is then not used).
- Transient failures (a dropped connection, a timeout, HTTP 408/429/5xx) are retried
  ATTEMPTS times with doubling waits; a missing object or a refused permission is not.
- Before each use the cached copy is hashed again (through the stat-keyed hash cache, so an
  unchanged file is not re-read); a damaged one is dropped and fetched again.
- Single files only: a directory pinned by its tree hash cannot be fetched by URL.

Two more places the pinned bytes come from, into the same store and the same views:

- **DVC** (`dvc:` entries, repro/interop/dvc.py): DVC's hash is read at code.commit and must be
  the spec's `dvc_md5`; when the working tree lacks the pinned file (absent, or other bytes),
  DVC's own filesystem at that commit gives it, from DVC's cache or remote. The working tree is
  never written.
- **The project's store remote** (`[tool.repro] store`, docs/store.md): an entry without `url:`
  or `dvc:` whose path is absent is fetched from it by its sha256 (`repro push` sends it).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from repro.errors import DataPinError, ReproError, StoreError
from repro.interop.dvc import DvcOut, dir_files, dvc_filesystem, file_chunks, locate, remote_of
from repro.paths import cache_dir
from repro.pins.data import hash_path, parse_listing, resolve_data_path, tree_listing, verify_data
from repro.store.blobs import CHUNK, machine_store
from repro.store.remote import RemoteConfig, remote_config

if TYPE_CHECKING:
    from repro.spec import DataEntry

ATTEMPTS = 4            # tries of one fetch in all
BACKOFF_S = 0.5         # the wait after the first failure; doubled after each next one
_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
_FINAL = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


DEFAULT_MAX_BYTES = 4 << 30   # a data URL's body without a pinned `size`: $REPRO_DATA_MAX_BYTES


def max_bytes() -> int:
    """The machine-wide cap on a fetched data file without a pinned size (bytes)."""
    raw = os.environ.get("REPRO_DATA_MAX_BYTES", "")
    if not raw:
        return DEFAULT_MAX_BYTES
    if not raw.isdigit():
        raise DataPinError(f"$REPRO_DATA_MAX_BYTES is {raw!r}; give a whole number of bytes")
    return int(raw)


def resolve_data(entries: Mapping[str, DataEntry], repo_root: Path, timeout: float | None = None,
                 commit: str | None = None, notes: list[str] | None = None) -> dict[str, Path]:
    """Every data entry's file or directory for the training, by name (spec order): for a
    `dvc:` entry, the working tree's copy when it is the pinned one, else DVC's at `commit`
    (code.commit, where its DVC hash is read); fetched by URL when the entry has one and its
    path is absent from the repository; fetched from the project's store remote when it has
    neither and its path is absent; else its path in the repository, verified (pins/data.py:
    every entry that does not hold is named). `timeout` (the spec's): fetching that runs past it
    is an error naming the entry. `notes` gets a line for each entry whose working-tree copy was
    passed over."""
    root = Path(os.path.realpath(repo_root))
    deadline = None if timeout is None else time.monotonic() + timeout
    fetched: dict[str, Path] = {}
    for n, e in entries.items():
        if e.dvc is not None:
            fetched[n] = dvc_data(n, e, root, commit, deadline, timeout, notes)
        elif e.url is not None and not os.path.lexists(root / e.path):
            fetched[n] = fetch_data(n, e.path, e.sha256, e.url, root, e.size, deadline, timeout)
    absent = [n for n, e in entries.items() if n not in fetched and e.sha256 is not None
              and not os.path.lexists(root / e.path)]
    config = remote_config(root) if absent else None
    if config is not None:
        for n in absent:
            e = entries[n]
            fetched[n] = fetch_stored(n, e.path, str(e.sha256), config, e.size, deadline, timeout)
    here = verify_data({n: (e.path, e.sha256) for n, e in entries.items() if n not in fetched}, root)
    return {n: fetched[n] if n in fetched else here[n] for n in entries}


def data_view(sha256: str, path: str) -> Path:
    """Where the training reads a fetched entry: `<cache>/data/<sha256>/<file name>`."""
    return cache_dir() / "data" / sha256 / PurePosixPath(path).name


def fetch_data(name: str, path: str, sha256: str | None, url: str, repo_root: Path,
               size: int | None = None, deadline: float | None = None, timeout: float | None = None
               ) -> Path:
    """The cached copy of data entry `name` (absent at `path` in the repository), fetched from
    `url` by its sha256 when this machine lacks it. DataPinError naming the entry, the URL and
    what to do when it cannot be fetched or its content is not the pinned one."""
    where = f"data {name!r} ({path} is not in the repository; url {url})"
    if sha256 is None:
        raise DataPinError(f"{where}: a data entry fetched by URL needs its sha256 (`repro hash "
                           "FILE` prints it); add `sha256:` to the entry")
    cached = _cached(sha256, path)
    if cached is not None:
        return cached
    limit = _Limit(where, size, deadline, timeout)
    actual = _download(where, url, sha256, repo_root, limit)
    if actual != sha256:
        raise DataPinError(f"data {name!r}: the file at {url} is not the pinned one: expected "
                           f"sha256 {sha256}, actual sha256 {actual}; nothing was kept. Put the "
                           "pinned file at the URL, or re-pin the entry if the new content is "
                           "intended (`repro hash FILE` prints its sha256)")
    return _stored_view(sha256, path)


def _stored_view(sha256: str, path: str) -> Path:
    """The view the training reads of a blob just kept in the machine's store."""
    view = data_view(sha256, path)
    _link(machine_store().path(sha256), view)
    return view


def _cached(sha256: str, path: str) -> Path | None:
    """The view of a file this machine already holds (re-hashed through the hash cache: an
    unchanged one is not read again), or None. A damaged copy is dropped."""
    view = data_view(sha256, path)
    store = machine_store()
    for source in ("view", "store"):
        if source == "store" and store.has(sha256):
            _link(store.path(sha256), view)
        if view.is_file():
            if hash_path(view) == sha256:
                return view
            view.unlink()                      # a damaged cached copy: dropped, fetched again
            store.path(sha256).unlink(missing_ok=True)
    return None


def _limited(chunks: Iterable[bytes], limit: _Limit) -> Iterator[bytes]:
    """`chunks`, refused past the limit as they arrive."""
    received = 0
    for chunk in chunks:
        received += len(chunk)
        limit.check(received)
        yield chunk


# -- DVC -------------------------------------------------------------------------------------
def dvc_data(name: str, entry: DataEntry, repo_root: Path, commit: str | None,
             deadline: float | None = None, timeout: float | None = None,
             notes: list[str] | None = None) -> Path:
    """The file of `dvc:` entry `name`: the working tree's copy when its sha256 is the pinned
    one, else the pinned version through DVC at `commit`. First, DVC's hash at `commit` (its
    .dvc file or dvc.lock stage) must be the spec's `dvc_md5`: else a DataPinError naming that
    file and `repro pin`."""
    dvc_path = str(entry.dvc)
    where = f"data {name!r} (dvc: {dvc_path})"
    if commit is None or entry.sha256 is None or entry.dvc_md5 is None:
        raise DataPinError(f"{where}: not pinned (code.commit, dvc_md5 and sha256 are all "
                           "needed); run `repro pin SPEC`")
    out = locate(repo_root, commit, dvc_path, where)
    if out.md5 != entry.dvc_md5:
        raise DataPinError(f"{where}: the spec pins DVC hash {entry.dvc_md5}, but {out.source} "
                           f"at code.commit {commit[:12]} records {out.md5}; run `repro pin "
                           "SPEC` to pin what that commit tracks (it reads both hashes again)")
    here = repo_root / entry.path
    if os.path.lexists(here):
        try:
            real = resolve_data_path(repo_root, entry.path)
            actual: str | None = hash_path(real, root=repo_root)
        except DataPinError as exc:
            real, actual = None, f"unusable: {exc}"
        if real is not None and actual == entry.sha256:
            return real
        if notes is not None:
            notes.append(f"data {name!r}: {entry.path} in the working tree is not the pinned "
                         f"version (sha256 {actual}); the pinned one came through DVC at commit "
                         f"{commit[:12]} ({out.source})")
    fetch = fetch_dvc_dir if out.is_dir else fetch_dvc
    return fetch(name, entry.path, entry.sha256, repo_root, commit, out, deadline, timeout)


def fetch_dvc(name: str, path: str, sha256: str, repo_root: Path, commit: str, out: DvcOut,
              deadline: float | None = None, timeout: float | None = None) -> Path:
    """The cached copy of DVC output `out` at `commit`, by its sha256: from the machine's store
    when it holds it, else through DVC's filesystem, hashed as it arrives and kept only when it
    is the pinned file. Nothing is written into the working tree."""
    cached = _cached(sha256, path)
    if cached is not None:
        return cached
    where = f"data {name!r} (dvc: {path}, commit {commit[:12]})"
    limit = _Limit(where, out.size, deadline, timeout)
    with dvc_filesystem(repo_root, commit, where) as fs:
        # sha256 alone decides (the spec's dvc_md5 is the commit's, and `repro pin` took the
        # sha256 of that version): an md5 beside it would cost a quarter of a local fetch
        actual = machine_store().install(sha256, _limited(file_chunks(fs, out, commit, where),
                                                          limit))
        remote = remote_of(fs) if actual != sha256 else ""
    if actual != sha256:
        raise DataPinError(f"data {name!r}: DVC gave {path} at commit {commit[:12]} ({out.source}, "
                           f"md5 {out.md5}) from its cache or {remote}, but it is not the pinned "
                           f"file: expected sha256 {sha256}, actual sha256 {actual}; nothing was "
                           "kept. The DVC cache or remote holds other bytes under that hash: "
                           "`dvc push` the right file from a machine that has it (or repair the "
                           "remote); if the new content is intended, `dvc add` it, commit and "
                           "`repro pin`")
    return _stored_view(sha256, path)


def fetch_dvc_dir(name: str, path: str, sha256: str, repo_root: Path, commit: str, out: DvcOut,
                  deadline: float | None = None, timeout: float | None = None) -> Path:
    """The cached copy of DVC directory `out` at `commit`, by its tree sha256: rebuilt from the
    machine's store when it holds the directory's listing and files, else every file through
    DVC's filesystem, each hashed as it arrives into a temporary file of the store. Only when
    the listing of those hashes is the pinned one do the files become blobs (and the listing a
    blob named by the directory's hash); otherwise nothing is kept. The training reads
    `<cache>/data/<sha256>/<directory name>/`, a tree of links to the blobs."""
    cached = _cached_dir(sha256, path)
    if cached is not None:
        return cached
    where = f"data {name!r} (dvc: {path}, commit {commit[:12]})"
    limit = _Limit(where, out.size, deadline, timeout)
    store = machine_store()
    staged: list[tuple[bytes, Path, str]] = []
    received = [0]

    def counted(chunks: Iterable[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            received[0] += len(chunk)
            limit.check(received[0])
            yield chunk

    try:
        with dvc_filesystem(repo_root, commit, where) as fs:
            for rel, file in dir_files(fs, out, commit, where):
                tmp, sha = store.stage(counted(file_chunks(fs, file, commit, where)))
                staged.append((rel, tmp, sha))
            remote = remote_of(fs)
        listing = tree_listing((rel, sha) for rel, _, sha in staged)
        actual = hashlib.sha256(listing).hexdigest()
        if actual != sha256:
            raise DataPinError(f"data {name!r}: DVC gave the directory {path} at commit "
                               f"{commit[:12]} ({out.source}, md5 {out.md5}) from its cache or "
                               f"{remote}, but it is not the pinned one: expected sha256 "
                               f"{sha256}, actual sha256 {actual} ({len(staged)} files); nothing "
                               "was kept. The DVC cache or remote holds other bytes under those "
                               "hashes: `dvc push` the right files from a machine that has them "
                               "(or repair the remote); if the new content is intended, `dvc add` "
                               "it, commit and `repro pin`")
        for _, tmp, sha in staged:
            store.adopt(tmp, sha)
        store.put(listing)
    finally:
        for _, tmp, _ in staged:
            tmp.unlink(missing_ok=True)
    return _dir_view(sha256, path, [(rel, sha) for rel, _, sha in staged])


def _cached_dir(sha256: str, path: str) -> Path | None:
    """The view of a directory this machine holds: its view when that still hashes to
    `sha256`, else rebuilt from the store's listing blob (named `sha256`) and file blobs when
    all are there; or None."""
    view = data_view(sha256, path)
    if view.is_dir():
        try:
            if hash_path(view) == sha256:
                return view
        except DataPinError:
            pass
    store = machine_store()
    if not store.has(sha256):
        return None
    try:
        items = parse_listing(store.get(sha256, f"the listing of {path}"))
    except ReproError:
        return None
    if items is None or not all(store.has(sha) for _, sha in items):
        return None
    view = _dir_view(sha256, path, items)
    try:
        return view if hash_path(view) == sha256 else None   # a damaged blob: fetched again
    except DataPinError:
        return None


def _dir_view(sha256: str, path: str, items: list[tuple[bytes, str]]) -> Path:
    """`<cache>/data/<sha256>/<directory name>/`: each file a link to its blob (a copy where
    links fail), built beside its place and renamed into it whole."""
    view = data_view(sha256, path)
    view.parent.mkdir(parents=True, exist_ok=True)
    store = machine_store()
    tmp = Path(tempfile.mkdtemp(dir=view.parent, prefix=".tmp-"))
    try:
        for rel, sha in items:
            target = tmp / os.fsdecode(rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(store.path(sha), target)
            except OSError:
                shutil.copyfile(store.path(sha), target)
        if view.exists():
            shutil.rmtree(view)                  # a damaged view: replaced whole
        try:
            os.rename(tmp, view)
        except OSError:
            if not view.is_dir():                # another process's identical view won: fine
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return view


# -- the project's store ----------------------------------------------------------------------
def fetch_stored(name: str, path: str, sha256: str, config: RemoteConfig, size: int | None = None,
                 deadline: float | None = None, timeout: float | None = None) -> Path:
    """The cached copy of data entry `name`, absent at `path`, fetched by its sha256 from the
    project's store remote (where `repro push` put it) when this machine lacks it. DataPinError
    naming the entry, the remote and what to do when it is not there or not the pinned file."""
    from repro.store.remote import Remote, remote_failure

    cached = _cached(sha256, path)
    if cached is not None:
        return cached
    where = f"data {name!r} ({path} is not in the repository; store {config.url})"
    limit = _Limit(where, size, deadline, timeout)
    try:
        remote = Remote(config)
        actual = machine_store().install(sha256, _limited(remote.chunks(sha256, size), limit))
    except FileNotFoundError:
        raise DataPinError(f"{where}: the file is not at the path and the store remote has no "
                           f"blob {sha256}; put the pinned file at {path}, or `repro push` from "
                           "a machine that has it (a directory is not carried by the store: "
                           "put it at the path)") from None
    except StoreError as exc:
        raise DataPinError(f"{where}: {exc}") from None
    except Exception as exc:   # the filesystem's client: OSError, botocore's
        if not remote_failure(exc):
            raise
        raise DataPinError(f"{where}: cannot fetch blob {sha256[:12]}… ({_describe(exc)}); "
                           "check the store remote, then run again") from None
    if actual != sha256:
        raise DataPinError(f"data {name!r}: the store's blob {remote.url(sha256)} is not the "
                           f"pinned file: expected sha256 {sha256}, actual sha256 {actual}; "
                           "nothing was kept. Push it again (`repro push`) from a machine that "
                           "has the file, or put the file at the path")
    return _stored_view(sha256, path)


class _Limit:
    """How much a data URL may send, and until when: a body longer than the entry's `size` (or,
    without one, than $REPRO_DATA_MAX_BYTES), or one still arriving at the spec's timeout, is
    refused as it arrives, naming the entry (nothing is kept)."""

    def __init__(self, where: str, size: int | None, deadline: float | None, timeout: float | None):
        self.where, self.size, self.deadline, self.timeout = where, size, deadline, timeout
        self.cap = size if size is not None else max_bytes()

    def check(self, received: int) -> None:
        if received > self.cap:
            why = (f"longer than its pinned size ({self.size} bytes)" if self.size is not None else
                   f"past $REPRO_DATA_MAX_BYTES ({self.cap} bytes); pin the entry's `size`, or raise "
                   "the limit")
            raise DataPinError(f"{self.where}: the body is {why}; nothing was kept")
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise DataPinError(f"{self.where}: fetching ran past the spec's timeout ({self.timeout:g} s; "
                               f"{received} bytes had arrived); nothing was kept. Raise `timeout:` or "
                               "--timeout, or fetch from a faster place")


def _download(where: str, url: str, sha256: str, repo_root: Path, limit: _Limit | None = None) -> str:
    """Stream `url` into the machine's store as blob `sha256` (renamed into place only when the
    hash matches); the sha256 of the bytes received. Transient failures are retried."""
    from repro.store.remote import url_fs, url_options

    try:
        fs, target = url_fs(url, url_options(url, repo_root), where)
    except StoreError as exc:
        raise DataPinError(str(exc)) from None
    wait, last = BACKOFF_S, None
    for attempt in range(1, ATTEMPTS + 1):
        try:
            info = fs.info(target)
            if info.get("type", "file") != "file":
                raise DataPinError(f"{where}: the URL names a {info.get('type')}, not a file; "
                                   "only single files can be fetched by URL (a directory pinned "
                                   "by its tree hash must be in the repository)")
            return machine_store().install(sha256, _chunks(fs, target, url, limit))
        except DataPinError:
            raise
        except Exception as exc:   # fsspec's backends raise OSError and their own client errors
            if not _transient(exc):
                chain = _chain(exc)
                if any(type(e).__name__ == "TooManyRedirects" for e in chain):
                    raise DataPinError(f"{where}: the URL redirects without end (a redirect loop "
                                       "at the server); fix the URL or the server's redirects") from None
                missing = any(isinstance(e, FileNotFoundError) for e in chain)
                raise DataPinError(f"{where}: " + ("there is no file at that URL" if missing else
                                   f"cannot fetch it ({_describe(exc)})") + "; put the pinned "
                                   "file there, or the file at the path in the repository") from None
            last = exc
        if attempt < ATTEMPTS:
            time.sleep(wait)
            wait *= 2
    raise DataPinError(f"{where}: cannot fetch it after {ATTEMPTS} attempts (last: "
                       f"{_describe(last)}); check the network and the URL, then run again")


def _chunks(fs: Any, target: str, url: str, limit: _Limit | None = None) -> Iterator[bytes]:
    # http(s): one streamed GET (block_size 0); ranged reads need a server that honours Range
    block = 0 if url.startswith(("http://", "https://")) else CHUNK
    received = 0
    with fs.open(target, "rb", block_size=block) as f:
        while chunk := f.read(CHUNK):
            received += len(chunk)
            if limit is not None:
                limit.check(received)
            yield chunk


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and e not in out:
        out.append(e)
        e = e.__cause__ or e.__context__
    return out


def _transient(exc: BaseException) -> bool:
    """A failure worth another try: an HTTP status that says "later" (fsspec's HTTP reports
    even those as FileNotFoundError, with the response error as its cause), a dropped
    connection, a timeout, an I/O error — not a missing object or a refused permission."""
    chain = _chain(exc)
    if any(isinstance(e, ConnectionError | TimeoutError) for e in chain):
        return True
    if any(c.__name__ in ("ClientConnectionError", "ClientPayloadError", "ServerTimeoutError")
           for e in chain for c in type(e).__mro__):
        return True                        # aiohttp's (a body cut short, a reset), not all OSErrors
    for e in chain:
        status = getattr(e, "status", None)
        if isinstance(status, int):
            return status in _RETRY_STATUS
    return isinstance(exc, OSError) and not isinstance(exc, _FINAL)


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "no error"
    deepest = _chain(exc)[-1]
    text = f"{type(deepest).__name__}: {deepest}" if deepest is not exc else ""
    return f"{type(exc).__name__}: {exc}" + (f" ({text})" if text else "")


def _link(blob: Path, view: Path) -> None:
    """`view` becomes the blob's content under the entry's file name, atomically (a hard link,
    or a copy where the filesystem refuses links)."""
    view.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=view.parent, prefix=".tmp-")
    os.close(fd)
    try:
        os.unlink(tmp)
        try:
            os.link(blob, tmp)
        except OSError:
            shutil.copyfile(blob, tmp)
        os.replace(tmp, view)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
