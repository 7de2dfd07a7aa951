"""Moving blobs between this machine and a project's remote (docs/store.md): `repro push`,
`repro pull`, `repro store verify`, and the fetch a verify does before anything trains.

The blobs of a spec are the ones its records point to (record.json's checkpoint leaves and its
arrays over 1 MiB, repro/store/recordblobs.py): small ones live in the record's `blobs/` (git), large
ones in the machine's store. A push sends every
one the remote lacks (by name and size: a push killed part-way, re-run, sends only the rest); a
pull fetches the large ones this machine lacks, each re-hashed before it is renamed into place.
Transfers and hashing run in a thread pool (hashlib and the network release the GIL).
"""
from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from repro.errors import StoreError
from repro.store.blobs import BlobStore, hash_file, machine_store
from repro.store.recordblobs import BlobRef
from repro.store.remote import CorruptBlob, Remote, RemoteConfig, find_remote_config
from repro.store.remoteindex import RemoteIndex

JOBS = 8   # transfers at a time: the network waits, it does not take a core
T = TypeVar("T")


@dataclass(frozen=True)
class DataFile:
    """A spec's pinned data file that `repro push` sends to the store by its sha256, as `dvc
    push` does: what a verify on another machine fetches when the file is not at its path and
    the entry has no `url:` (repro/pins/fetch.py). DVC's and URL entries have their own home."""

    sha256: str
    size: int
    path: Path | None     # where the pinned bytes are here: the working tree's file or the
                          # machine store's blob; None: neither holds them
    what: str             # "data 'xy' (data/xy.npz) of specs/tiny.yaml", for messages


@dataclass
class Project:
    """The records of some specs and the remote their repository names (and, for a push, the
    specs' data files)."""

    remote: RemoteConfig | None
    blobs: list[BlobRef]
    repo_root: Path
    data: list[DataFile] = field(default_factory=list)


@dataclass
class Problem:
    sha256: str
    what: str                 # "missing" | "corrupt"
    message: str


@dataclass
class Transfer:
    """What a push, pull or verify did."""

    action: str
    blobs: int = 0            # blobs considered
    done: int = 0             # sent, fetched or hashed
    skipped: int = 0          # already there
    bytes: int = 0
    seconds: float = 0.0
    seed: int | None = None
    where: str = ""
    swept: int = 0            # verify: temporaries of killed writers removed from the store
    data: int = 0             # push: data files considered (beside `blobs`)
    data_done: int = 0        # push: data files sent
    data_skipped: int = 0     # push: data files already there
    problems: list[Problem] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, nbytes: int) -> None:
        with self.lock:
            self.done += 1
            self.bytes += nbytes

    @property
    def exit_code(self) -> int:
        return 2 if self.problems else 0

    def rate(self) -> str:
        mb = self.bytes / 1e6
        return f"{mb:,.1f} MB in {self.seconds:.2f} s ({mb / max(self.seconds, 1e-9):,.0f} MB/s)"

    def summary(self) -> str:
        """One line: what was done, where, how fast, what is wrong."""
        verb = {"push": "sent", "pull": "fetched", "verify": "re-hashed"}[self.action]
        line = f"{self.action} {self.where or '(no remote)'}: {verb} {self.done} of {self.blobs} blobs"
        if self.action != "verify":
            line += f" ({self.skipped} already there)"
        if self.data:
            line += f" and {self.data_done} of {self.data} data files ({self.data_skipped} already there)"
        line += f", {self.rate()}"
        if self.seed is not None:
            line += f"; sample seed {self.seed}"
        if self.swept:
            line += f"; removed {self.swept} temporary file(s) left by killed writers"
        missing = sum(p.what == "missing" for p in self.problems)
        corrupt = sum(p.what == "corrupt" for p in self.problems)
        return line + (f"; {missing} missing, {corrupt} corrupt" if self.problems else "; ok")


def _unique(blobs: Iterable[BlobRef]) -> list[BlobRef]:
    seen: dict[str, BlobRef] = {}
    for b in blobs:
        seen.setdefault(b.sha256, b)
    return list(seen.values())


def _need_remote(proj: Project) -> Remote:
    if proj.remote is None:
        raise StoreError(f"{proj.repo_root}: no store remote is configured: add `[tool.repro] "
                         "store = \"s3://bucket/prefix\"` (any fsspec URL) to its pyproject.toml, "
                         "or set $REPRO_STORE")
    return Remote(proj.remote)


def _pool(work: Callable[[T], None], blobs: Sequence[T], jobs: int) -> None:
    with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="repro-store") as pool:
        for f in [pool.submit(work, b) for b in blobs]:
            f.result()


def push(proj: Project, jobs: int = JOBS, limit: int | None = None) -> Transfer:
    """Send every blob of the project's records the remote lacks (name and size), each
    re-hashed before it leaves (a damaged local blob is reported, never sent). `limit`: send
    at most that many (tests; a push cut short)."""
    remote = _need_remote(proj)
    t0 = time.perf_counter()
    out = Transfer("push", where=remote.config.url)
    blobs = _unique(proj.blobs)
    there = remote.listing()
    todo = [b for b in blobs if there.get(b.sha256) != b.size]
    out.blobs, out.skipped = len(blobs), len(blobs) - len(todo)
    todo = todo[:limit] if limit is not None else todo

    def send(b: BlobRef) -> None:
        path = b.local().path(b.sha256)
        try:
            data = path.read_bytes()
        except OSError:
            where = "its record's blobs/ (restore it from git)" if b.place == "record" else \
                "this machine's store (pull it or record again on a machine that has it)"
            out.problems.append(Problem(b.sha256, "missing", f"{b.named()} is missing from {where}"))
            return
        import hashlib
        actual = hashlib.sha256(data).hexdigest()
        if actual != b.sha256:
            out.problems.append(Problem(b.sha256, "corrupt", f"{b.named()} at {path} is damaged "
                                        f"(its sha256 is {actual}); not sent"))
            return
        remote.upload(b.sha256, data)
        out.count(len(data))

    _pool(send, todo, jobs)
    sent = _push_data(remote, proj.data, there, out, jobs)
    failed = {x.sha256 for x in out.problems}
    index = RemoteIndex(remote.config)   # what a cluster executor ships next need not be listed
    index.replace(there)
    index.learn({b.sha256: b.size for b in todo if b.sha256 not in failed} | sent)
    out.seconds = time.perf_counter() - t0
    return out


def _push_data(remote: Remote, files: Sequence[DataFile], there: dict[str, int], out: Transfer,
               jobs: int) -> dict[str, int]:
    """Send the data files the remote lacks (name and size), each re-hashed as it is read (a
    file changed since it was hashed is reported, never sent); sha256 -> size of those sent."""
    unique: dict[str, DataFile] = {}
    for d in files:
        if d.sha256 not in unique or unique[d.sha256].path is None:
            unique[d.sha256] = d
    todo = [d for d in unique.values() if there.get(d.sha256) != d.size]
    out.data, out.data_skipped = len(unique), len(unique) - len(todo)
    sent: dict[str, int] = {}

    def send(d: DataFile) -> None:
        if d.path is None:
            out.problems.append(Problem(d.sha256, "missing", f"{d.what}: the pinned file "
                                        f"(sha256 {d.sha256}) is neither at its path nor in this "
                                        "machine's store; not sent (put it back, or push from a "
                                        "machine that has it)"))
            return
        try:
            remote.upload_file(d.sha256, d.path, d.size)
        except CorruptBlob as exc:
            out.problems.append(Problem(d.sha256, "corrupt", f"{d.what}: {d.path} changed since "
                                        f"it was hashed (its sha256 is now {exc.actual}); not "
                                        "sent: re-pin (`repro pin`) or restore it, then push"))
            return
        with out.lock:
            out.data_done += 1
            out.bytes += d.size
            sent[d.sha256] = d.size

    _pool(send, todo, jobs)
    return sent


def pull(proj: Project, jobs: int = JOBS) -> Transfer:
    """Fetch the large blobs of the project's records this machine's store lacks, or holds
    damaged (every local blob is re-hashed: "already there" means intact; a damaged one or a
    link is replaced)."""
    t0 = time.perf_counter()
    blobs = _unique(b for b in proj.blobs if b.place == "store")
    store = machine_store()
    intact: dict[str, bool] = {}
    _pool(lambda b: intact.__setitem__(b.sha256, store.intact(b.sha256)), blobs, jobs)
    todo = [b for b in blobs if not intact[b.sha256]]
    out = Transfer("pull", blobs=len(blobs), skipped=len(blobs) - len(todo),
                   where=proj.remote.url if proj.remote else "")
    if todo:
        remote = _need_remote(proj)
        problems = fetch(remote, todo, store, jobs)
        out.problems += problems
        out.done = len(todo) - len(problems)
        out.bytes = sum(b.size for b in todo if b.sha256 not in {p.sha256 for p in problems})
    out.seconds = time.perf_counter() - t0
    return out


def fetch(remote: Remote, blobs: Sequence[BlobRef], store: BlobStore, jobs: int = JOBS) -> list[Problem]:
    """Download blobs into `store`, each re-hashed before its rename; the ones that could not
    be fetched (not at the remote, corrupt there) as problems naming them."""
    problems: list[Problem] = []

    def one(b: BlobRef) -> None:
        try:
            remote.download(b.sha256, store, b.size)
        except CorruptBlob as exc:
            problems.append(Problem(b.sha256, "corrupt", f"{b.named()}: {exc}"))
        except StoreError as exc:
            problems.append(Problem(b.sha256, "missing", f"{b.named()}: {exc}"))

    _pool(one, blobs, jobs)
    return problems


def fetch_missing(directory: Path, refs: Sequence[BlobRef]) -> None:
    """Before a verify trains: fetch the record's missing store blobs (kept states' leaves,
    large arrays) from the remote its repository names (re-hashed before use). StoreError naming
    the blob and what needs it when there is no remote, the remote lacks it, or its copy is
    corrupt."""
    refs = _unique(refs)
    config = find_remote_config(directory)
    if config is None:
        b = refs[0]
        raise StoreError(f"{directory}: {b.what} (blob {b.sha256[:12]}…, {b.size:,} bytes) is "
                         f"missing from this machine's store {machine_store().root} (blobs over "
                         "1 MiB stay out of git) and no store remote is configured: run `repro "
                         "pull` where `[tool.repro] store` names the remote that has it, or record "
                         "again here")
    problems = fetch(Remote(config), refs, machine_store())
    if problems:
        p = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        hint = "" if p.what == "corrupt" else \
            "; push it from the machine that recorded it (`repro push`), then `repro pull`"
        raise StoreError(f"{p.message}{more}{hint}")


def verify(projs: Sequence[Project], sample: float | None = None, seed: int | None = None,
           use_remote: bool = False, jobs: int | None = None) -> Transfer:
    """Re-hash blobs — this machine's store and the records' blobs/, or the remote's — all or a
    random fraction `sample` (seeded; the seed is reported), and name the missing ones (those
    the records point to that are not there) and the corrupt ones."""
    import os

    t0 = time.perf_counter()
    out = Transfer("verify")
    refs = _unique(b for p in projs for b in p.blobs)
    if sample is not None:
        out.seed = seed if seed is not None else random.SystemRandom().randrange(1 << 31)
    rng = random.Random(out.seed)

    def pick(shas: list[str]) -> list[str]:
        if sample is None:
            return shas
        return sorted(rng.sample(shas, k=min(len(shas), max(1, round(len(shas) * sample)))))

    if use_remote:
        configs = {p.remote.key(): p.remote for p in projs if p.remote is not None}
        if not configs:
            raise StoreError("no store remote is configured for these specs: add `[tool.repro] "
                             "store = \"s3://bucket/prefix\"` to the project's pyproject.toml")
        for config in configs.values():
            remote = Remote(config)
            there = remote.listing()
            out.where = ", ".join(filter(None, [out.where, config.url]))
            for b in refs:
                if b.sha256 not in there:
                    out.problems.append(Problem(b.sha256, "missing", f"{b.named()} is not at "
                                                f"the remote {remote.url(b.sha256)}"))
            chosen = pick(sorted(there))

            def rehash(sha: str, remote: Remote = remote, there: dict[str, int] = there) -> None:
                actual = remote.remote_hash(sha)
                if actual != sha:
                    out.problems.append(Problem(sha, "corrupt", str(CorruptBlob(sha, remote.url(sha), actual))))
                out.count(there[sha])

            _hash_all(rehash, chosen, jobs or JOBS)
            out.blobs += len(there)
    else:
        store = machine_store()
        out.swept = len(store.sweep())
        files = {sha: store.path(sha) for sha in store.shas()}
        for b in refs:
            if b.place == "record":
                path = b.local().path(b.sha256)
                if path.is_file():
                    files[b.sha256] = path
                    continue
            if b.sha256 not in files:
                out.problems.append(Problem(b.sha256, "missing", f"{b.named()} is missing from "
                                            f"{'its record' if b.place == 'record' else store.root}"))
        out.where = str(store.root)
        chosen = pick(sorted(files))

        def rehash_local(sha: str) -> None:
            actual = hash_file(files[sha])
            if actual != sha:
                out.problems.append(Problem(sha, "corrupt", f"blob {sha} at {files[sha]} is "
                                            f"corrupt: expected sha256 {sha}, actual {actual}; "
                                            "it is not used (delete it and `repro pull`)"))
            out.count(files[sha].stat().st_size)

        _hash_all(rehash_local, chosen, jobs or min(8, (os.cpu_count() or 1) * 2))
        out.blobs = len(files)
    out.seconds = time.perf_counter() - t0
    return out


def _hash_all(work: Callable[[str], None], shas: Sequence[str], jobs: int) -> None:
    with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="repro-hash") as pool:
        for f in [pool.submit(work, s) for s in shas]:
            f.result()
