"""A spec's project, packed into the store by hash and unpacked on a machine that shares no
filesystem with this one (docs/ray.md): what a cluster executor ships with each job.

`pack` (here) puts into the store remote every file a verify of the spec reads — the spec file,
pyproject.toml, the data entries, the spec's records (and the large record blobs of the
machine's store, as `repro push` sends them) — and a git pack holding only the commits the job
needs (the pinned commit, the records' commits, a bisect probe's), each object named by its
sha256. The `Parcel` that travels is a small typed value: relative paths and hashes.

`unpack` (there) fetches those blobs by hash (re-hashed before use), lays the files out under a
private directory at the same relative paths, and makes that directory a shallow git repository
holding exactly the packed commits. `pipeline` then runs there unchanged: the code pin is checked
and exported by git from the commit object, the data pins re-hashed, the record checked.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from repro.errors import ReproError, StoreError
from repro.pins.code import code_repo, git, repo_root
from repro.spec import Spec
from repro.store.remote import Remote, RemoteConfig, remote_config


@dataclass(frozen=True)
class Shipped:
    """One file of the project: where it goes (relative, POSIX) and the blob that holds it."""

    rel: str
    sha256: str
    executable: bool = False


@dataclass(frozen=True)
class Parcel:
    """What a worker needs to rebuild a spec's project: all by hash, no path of this machine
    except `origin` (to map the verdict's paths back)."""

    store: RemoteConfig
    origin: str                       # the spec's repository root here
    spec_rel: str                     # the spec file, relative to the root
    files: tuple[Shipped, ...]
    git_pack: str                     # sha256 of a git pack with the commits below (no history)
    commits: tuple[str, ...]
    records_rel: str | None = None    # --records DIR, relative to the root (None: default)
    stored: tuple[str, ...] = ()      # the records' blobs that live in a machine store


def store_for(root: Path) -> RemoteConfig:
    """The remote a cluster job's inputs travel through: the project's store (StoreError when
    there is none: a cluster shares no filesystem, so there is no other way)."""
    config = remote_config(root)
    if config is None:
        raise StoreError(f"{root}: --engine ray ships every input through the project's store, "
                         "and none is configured: add `[tool.repro] store = \"s3://bucket/prefix\"` "
                         "to its pyproject.toml (any fsspec URL every node can reach), or set "
                         "$REPRO_STORE")
    return config


def _inside(path: Path, root: Path, what: str) -> str:
    try:
        return Path(path).resolve().relative_to(root).as_posix()
    except ValueError:
        raise ReproError(f"{what} {path} is outside the repository {root}; --engine ray ships "
                         "only files inside it (move it there)") from None


def _files_below(path: Path) -> Iterable[Path]:
    if path.is_file():
        yield path
    elif path.is_dir():
        for dirpath, _dirs, names in os.walk(path, followlinks=True):
            for name in sorted(names):
                if os.path.isfile(os.path.join(dirpath, name)):
                    yield Path(dirpath) / name


def _record_commits(records: Path) -> set[str]:
    import json

    out = set()
    for meta in records.glob("*/record.json"):
        try:
            commit = json.loads(meta.read_text(encoding="utf-8")).get("code", {}).get("commit")
        except (OSError, ValueError, AttributeError):
            continue   # a broken record is the worker's verify to report, as it is here
        if isinstance(commit, str):
            out.add(commit)
    return out


class Shipping:
    """One store remote as the parcels of a batch see it: what this machine's index
    (repro/store/remoteindex.py) says it holds, and the remote itself, opened and listed only when a
    parcel has a blob the index does not know (an upload adds to the index)."""

    def __init__(self, config: RemoteConfig):
        from repro.store.remoteindex import RemoteIndex

        self.config = config
        self.index = RemoteIndex(config)
        self._lock = threading.Lock()
        self._remote: Remote | None = None

    def remote(self) -> Remote:
        with self._lock:
            if self._remote is None:
                remote = Remote(self.config)
                self.index.replace(remote.listing())
                self._remote = remote
            return self._remote

    def put(self, data: bytes) -> str:
        """The blob's name, once the remote holds it (sent unless known to be there)."""
        sha = hashlib.sha256(data).hexdigest()
        if not self.index.has(sha, len(data)):
            remote = self.remote()
            if not self.index.has(sha, len(data)):
                remote.upload(sha, data)
                self.index.learn({sha: len(data)})
        return sha

    def forget(self) -> None:
        """The index was wrong (a worker missed a blob it claimed): list the remote again."""
        with self._lock:
            self.index.forget()
            self._remote = None


class Listings:
    """The remotes of a batch of parcels packed side by side, each a `Shipping`. A blob two
    parcels share may be sent twice at once: the same bytes under the same name."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by: dict[tuple[str, str], Shipping] = {}

    def of(self, config: RemoteConfig) -> Shipping:
        with self._lock:
            if config.key() not in self._by:
                self._by[config.key()] = Shipping(config)
            return self._by[config.key()]


@dataclass(frozen=True)
class StaleParcel:
    """A worker's answer when a blob its parcel names is not at the remote though the driver's
    index said it was: the driver lists the remote and ships the job again (repro/engines/rayexec.py)."""

    message: str


def pack(spec: Spec, records_root: Path | None = None, commits: Sequence[str] = (),
         listings: Listings | None = None) -> Parcel:
    """Put the spec's project into its store and say where it is. `commits`: more commits the
    job checks out (a bisect probe's). `listings`: what the remote holds, shared by a batch
    (shared between the parcels of one batch, so each blob is sent once)."""
    from repro.discovery import projects
    from repro.record import record_dir
    from repro.store.sync import push

    if spec.path is None:
        raise ReproError("a spec without a file cannot be shipped to a cluster")
    root = repo_root(spec.path)
    config = store_for(root)
    target = (listings or Listings()).of(config)
    records = record_dir(root, spec.name or "", "any", records_root).parent
    paths = [Path(spec.path)] + [p for p in [root / "pyproject.toml"] if p.is_file()]
    for entry in spec.data.values():
        paths.extend(_files_below(root / entry.path))
    paths.extend(_files_below(records))
    files = []
    for path in paths:
        data = path.read_bytes()
        files.append(Shipped(_inside(path, root, "file"), target.put(data),
                             os.access(path, os.X_OK)))
    stored: dict[str, int] = {}   # the records' large blobs in the machine store
    for p in projects([Path(spec.path)], records_root):
        mine = {b.sha256: b.size for b in p.blobs}
        stored.update({b.sha256: b.size for b in p.blobs if b.place == "store"})
        if all(target.index.has(sha, size) for sha, size in mine.items()):
            continue
        sent = push(p)    # as `repro push` sends them (it lists the remote itself)
        if sent.problems:
            raise StoreError("; ".join(x.message for x in sent.problems))
        target.index.learn(mine)
    repo = code_repo(root, spec.code.repo)
    if repo != root:
        raise ReproError(f"code.repo {spec.code.repo!r}: --engine ray ships the spec's own "
                         "repository only (code.repo: .)")
    wanted = sorted({c for c in (spec.code.commit, *commits, *_record_commits(records)) if c})
    present = [c for c in wanted
               if git(["cat-file", "-e", f"{c}^{{commit}}"], root, check=False).returncode == 0]
    objects = git(["rev-list", "--objects", "--no-walk", *present], root).stdout if present else ""
    packed = subprocess.run(["git", "pack-objects", "--stdout", "-q"], cwd=root, input=objects.encode(),
                            capture_output=True, check=True).stdout
    return Parcel(config, str(root), _inside(Path(spec.path), root, "spec"), tuple(files),
                  target.put(packed), tuple(present),
                  _inside(records_root, root, "--records") if records_root else None,
                  tuple(sorted(stored)))


class _Fetcher:
    """Blobs by hash through the node's own store: a blob fetched once serves every later job
    there (re-hashed on each read). The remote is opened only when a blob is missing, so a node
    that holds a parcel's blobs already never imports fsspec and its scheme's package."""

    def __init__(self, config: RemoteConfig):
        from repro.store.blobs import machine_store

        self.config = config
        self.store = machine_store()
        self._remote: Remote | None = None

    def ensure(self, sha: str) -> None:
        """The blob in this node's store (BlobMissing when the remote lacks it)."""
        if not self.store.has(sha):
            if self._remote is None:
                self._remote = Remote(self.config)
            self._remote.download(sha, self.store)

    def get(self, sha: str) -> bytes:
        self.ensure(sha)
        return self.store.get(sha, "a shipped file")


def inside(into: Path, rel: str, what: str) -> Path:
    """`into / rel` for a name that came in a parcel, refused unless it is relative, has no
    '..' and no .git component, and resolves under `into` (a parcel is data from the shared
    store: it must not write, or point, anywhere else, nor set git's config or hooks)."""
    parts = Path(rel).parts
    if not rel or Path(rel).is_absolute() or ".." in parts or any(p.lower() == ".git" for p in parts):
        raise ReproError(f"the parcel names {what} {rel!r}: not a relative path inside the project "
                         "(absolute, '..' or .git); it was not unpacked")
    target = into / rel
    root = os.path.realpath(into)
    real = os.path.realpath(target)
    if not real.startswith(root + os.sep):
        raise ReproError(f"the parcel names {what} {rel!r}, which resolves to {real}, outside the "
                         "job directory; it was not unpacked")
    return target


def unpack(parcel: Parcel, into: Path) -> Path:
    """Rebuild the project under `into` (a fresh directory) from the store; the spec's path.
    The records' large blobs are fetched into this node's store first, so a blob the remote
    lacks is a BlobMissing here, before anything runs. Every name is checked (`inside`), and
    the repository is made before any file is written: a parcel never writes git's own files."""
    spec = inside(into, parcel.spec_rel, "the spec")
    if parcel.records_rel is not None:
        inside(into, parcel.records_rel, "the records directory")
    for f in parcel.files:
        inside(into, f.rel, "a file")
    fetch = _Fetcher(parcel.store)
    for sha in parcel.stored:
        fetch.ensure(sha)
    git(["init", "-q"], into)
    for f in parcel.files:
        target = inside(into, f.rel, "a file")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(fetch.get(f.sha256))
        if f.executable:
            target.chmod(0o755)
    with tempfile.TemporaryFile() as buf:
        buf.write(fetch.get(parcel.git_pack))
        buf.seek(0)
        subprocess.run(["git", "unpack-objects", "-q"], cwd=into, stdin=buf, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # a shallow repository: the packed commits are complete; their parents are not here
    (into / ".git" / "shallow").write_text("".join(f"{c}\n" for c in parcel.commits))
    return spec


def workspace() -> Path:
    """A private directory for one job on this node (under its cache: never the origin's),
    named after this worker process; those of workers that died (a retried task's first try)
    are removed here."""
    import re

    from repro.paths import cache_dir
    from repro.proctree import alive

    base = cache_dir() / "cluster-work"
    base.mkdir(parents=True, exist_ok=True)
    for old in base.iterdir():
        m = re.match(r"^job-(\d+)-", old.name)
        if m and int(m.group(1)) != os.getpid() and not alive(int(m.group(1))):
            remove(old)
    return Path(tempfile.mkdtemp(dir=base, prefix=f"job-{os.getpid()}-"))


def remove(path: Path) -> None:
    from repro.pins.code import make_writable

    make_writable(path)
    shutil.rmtree(path, ignore_errors=True)
