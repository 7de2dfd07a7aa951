"""DVC data (docs/integrations.md): a `data:` entry that names a DVC-tracked path.

    data:
      corpus: {dvc: data/corpus.txt}          # `repro pin` adds dvc_md5 and sha256

Two halves, kept apart on purpose:

- **Where DVC's hash is** (`locate`): read with git from the commit the spec pins — the
  `<path>.dvc` file, else the `dvc.lock` stage (or other `.dvc` file) whose outs hold the path.
  No DVC import: a verify whose working tree holds the pinned file needs neither DVC nor a
  network, and the hash is the commit's, not the working tree's (`dvc add` without a commit
  changes nothing a spec pins).
- **Getting the bytes** (`dvc_filesystem`, `file_chunks`, `dir_files` for a directory's
  files): DVC's own `DVCFileSystem` at that commit, which reads the DVC cache or the remote the
  commit's `.dvc/config` names and never writes the working tree (it may write its own
  `.dvc/tmp` and site cache). DVC does not check what a remote serves against its md5; the
  caller hashes every byte (repro/pins/fetch.py: sha256; `repro pin`: md5 too, where it is DVC
  3's plain md5) and keeps nothing that differs.

DVC is imported only here, only when bytes must be fetched, through `repro.interop.extras`:
without it, that is a `MissingExtra` naming `repro[dvc]` (exit 2).
"""
from __future__ import annotations

import contextlib
import hashlib
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from repro.errors import DataPinError
from repro.interop.extras import require
from repro.pins.code import git

FEATURE = "data: {NAME: {dvc: PATH}}"
CHUNK = 1 << 22   # 4 MiB reads from DVC's filesystem


@dataclass(frozen=True)
class DvcOut:
    """One DVC output as a commit records it."""

    path: str             # repo-relative POSIX path of the output
    md5: str              # DVC's hash: 32 hex, `.dir` appended for a directory
    size: int | None      # bytes (a file's), as DVC wrote it
    source: str           # what records it: `data/x.txt.dvc`, or `dvc.lock stage 'prepare'`
    file: str             # the file that holds it (`data/x.txt.dvc`, `dvc.lock`)
    plain_md5: bool       # DVC 3 (`hash: md5`): the md5 of the bytes; else DVC 2's, which
                          # normalises line ends of text files first

    @property
    def is_dir(self) -> bool:
        return self.md5.endswith(".dir")


def _show(repo: Path, commit: str, file: str) -> str | None:
    """The text of `file` at `commit`, None when the commit has no such file."""
    proc = git(["show", f"{commit}:{file}"], repo, check=False)
    return proc.stdout if proc.returncode == 0 else None


def _check_commit(repo: Path, commit: str, where: str) -> None:
    if git(["cat-file", "-e", f"{commit}^{{commit}}"], repo, check=False).returncode != 0:
        raise DataPinError(f"{where}: code.commit {commit} is not a commit of {repo}; a `dvc:` "
                           "entry is read from the spec's own repository at code.commit (pin a "
                           "commit of it with `repro pin`)")


def _parse(text: str, file: str, commit: str, where: str) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DataPinError(f"{where}: {file} at commit {commit[:12]} is not valid YAML "
                           f"({str(exc).splitlines()[0]}); fix it with DVC (`dvc add`, "
                           "`dvc repro`) and commit") from None
    return doc if isinstance(doc, dict) else {}


def _outs(doc: Any, base: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(repo-relative path, out entry) for each out of a .dvc file or a dvc.lock stage,
    `base` being the directory the out paths are relative to."""
    outs = doc.get("outs") if isinstance(doc, dict) else None
    for out in outs if isinstance(outs, list) else []:
        if isinstance(out, dict) and isinstance(out.get("path"), str):
            yield posixpath.normpath(posixpath.join(base, out["path"])), out


def _stage_wdir(repo: Path, commit: str, directory: str, stage: str) -> str:
    """A dvc.lock stage's working directory (its out paths are relative to it): `wdir` of the
    stage in the dvc.yaml beside it, else the dvc.yaml's directory."""
    text = _show(repo, commit, posixpath.join(directory, "dvc.yaml"))
    try:
        doc = yaml.safe_load(text) if text else None
    except yaml.YAMLError:
        doc = None
    stages = doc.get("stages") if isinstance(doc, dict) else None
    entry = stages.get(stage.split("@", 1)[0]) if isinstance(stages, dict) else None
    wdir = entry.get("wdir") if isinstance(entry, dict) else None
    return posixpath.join(directory, wdir) if isinstance(wdir, str) and "${" not in wdir \
        else directory


def _candidates(repo: Path, commit: str) -> tuple[list[str], list[str]]:
    """The `.dvc` files and the `dvc.lock` files of the commit's tree."""
    names = git(["ls-tree", "-r", "-z", "--name-only", commit], repo).stdout.split("\0")
    dvcfiles = [n for n in names if n.endswith(".dvc") and posixpath.basename(n) != ".dvc"]
    locks = [n for n in names if posixpath.basename(n) == "dvc.lock"]
    return dvcfiles, locks


def locate(repo: Path, commit: str, path: str, where: str) -> DvcOut:
    """DVC's record of `path` at `commit`: from `<path>.dvc`, else the dvc.lock stage or other
    `.dvc` file whose outs hold it. DataPinError naming `where` when the commit has none, or
    only a tracked directory above it, or an out without an md5 (cloud-versioned outs)."""
    _check_commit(repo, commit, where)
    path = posixpath.normpath(path)
    found: list[tuple[str, str, dict[str, Any]]] = []    # (source, file, out)
    above: list[tuple[str, str]] = []                     # (tracked dir, source)

    def scan(source: str, file: str, outs: Iterator[tuple[str, dict[str, Any]]]) -> None:
        for out_path, out in outs:
            if out_path == path:
                found.append((source, file, out))
            elif path.startswith(out_path.rstrip("/") + "/"):
                above.append((out_path, source))

    own = f"{path}.dvc"
    text = _show(repo, commit, own)
    if text is not None:
        doc = _parse(text, own, commit, where)
        scan(own, own, _outs(doc, _base(own, doc)))
    if not found:
        dvcfiles, locks = _candidates(repo, commit)
        for lock in locks:
            doc = _parse(_show(repo, commit, lock) or "", lock, commit, where)
            stages = doc.get("stages")
            for stage, body in (stages.items() if isinstance(stages, dict) else []):
                base = _stage_wdir(repo, commit, posixpath.dirname(lock), str(stage))
                scan(f"{lock} stage {stage!r}", lock, _outs(body, base))
        for file in dvcfiles:
            if file != own and not found:
                doc = _parse(_show(repo, commit, file) or "", file, commit, where)
                scan(file, file, _outs(doc, _base(file, doc)))
    if not found:
        if above:
            directory, source = above[0]
            raise DataPinError(f"{where}: {path} is inside {directory}, a directory DVC tracks "
                               f"as a whole ({source} at commit {commit[:12]}); name that "
                               f"directory in `dvc:`, or `dvc add` the file on its own")
        raise DataPinError(f"{where}: at commit {commit[:12]} no .dvc file and no dvc.lock "
                           f"stage tracks {path}; `dvc add {path}` (or `dvc repro` the stage "
                           f"that writes it), commit the .dvc file or dvc.lock, then `repro pin`")
    source, file, out = found[0]
    md5 = out.get("md5")
    if not isinstance(md5, str) or not md5:
        raise DataPinError(f"{where}: {source} at commit {commit[:12]} records {path} without "
                           "an md5 (a cloud-versioned or not yet computed output); repro pins "
                           "DVC outputs by their md5: `dvc commit` it, commit, then `repro pin`")
    size = out.get("size")
    return DvcOut(path=path, md5=md5, size=size if isinstance(size, int) else None,
                  source=source, file=file, plain_md5=out.get("hash") == "md5")


def _base(dvcfile: str, doc: dict[str, Any]) -> str:
    """The directory a `.dvc` file's out paths are relative to (its own, or its `wdir`)."""
    wdir = doc.get("wdir")
    base = posixpath.dirname(dvcfile)
    return posixpath.join(base, wdir) if isinstance(wdir, str) else base


def md5_and_sha256(path: Path) -> tuple[str, str]:
    """Both hashes of a file in one read: DVC 3's md5 and repro's sha256."""
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        while n := f.readinto(buf):
            md5.update(view[:n])
            sha.update(view[:n])
    return md5.hexdigest(), sha.hexdigest()


@contextlib.contextmanager
def dvc_filesystem(repo: Path, commit: str, where: str) -> Iterator[Any]:
    """DVC's `DVCFileSystem` of `repo` at `commit` (closed after use). It reads DVC's cache,
    else the remote the commit's `.dvc/config` names (with `.dvc/config.local` and the user's
    DVC config for credentials)."""
    api = require("dvc", "dvc.api", FEATURE)
    try:
        fs = api.DVCFileSystem(str(repo), rev=commit)
    except Exception as exc:   # DVC's own errors: not a DVC repository, a bad config
        raise DataPinError(f"{where}: DVC cannot open {repo} at commit {commit[:12]} "
                           f"({describe(exc)}); is it a DVC repository (`dvc init`, committed)?"
                           ) from None
    try:
        yield fs
    finally:
        with contextlib.suppress(Exception):
            fs.close()


def remote_of(fs: Any) -> str:
    """`remote 'NAME' (URL)` of DVC's default remote at that commit, for messages."""
    try:
        config = fs.repo.config
        name = config["core"].get("remote")
        url = config["remote"][name].get("url") if name else None
    except Exception:   # a message helper: DVC's config may be unreadable
        return "DVC's default remote"
    return f"DVC remote {name!r} ({url})" if name else "no default DVC remote"


def file_chunks(fs: Any, out: DvcOut, commit: str, where: str) -> Iterator[bytes]:
    """The bytes DVC gives for file `out` at `commit` (its cache, else its remote), in pieces.
    DataPinError naming `where`, the commit and the remote when DVC cannot give them."""
    try:
        info = fs.info(out.path)
        theirs = info.get("md5") or (info.get("dvc_info") or {}).get("md5")
        if theirs and out.md5 and theirs != out.md5:
            raise DataPinError(f"{where}: DVC says {out.path} at commit {commit[:12]} has md5 "
                               f"{theirs}, but {out.source} records {out.md5}; fix the .dvc "
                               "file or dvc.lock with DVC and commit, then `repro pin`")
        with fs.open(out.path, "rb") as f:
            while chunk := f.read(CHUNK):
                yield chunk
    except DataPinError:
        raise
    except Exception as exc:   # DVC's and its remote's client errors
        raise DataPinError(f"{where}: DVC cannot give {out.path} at commit {commit[:12]} "
                           f"({out.source}, md5 {out.md5}) from its cache or {remote_of(fs)}: "
                           f"{describe(exc)}. {_advice(exc)}") from None


def dir_files(fs: Any, out: DvcOut, commit: str, where: str) -> list[tuple[bytes, DvcOut]]:
    """The files of directory `out` at `commit` as DVC lists them (its `.dir` object, from its
    cache or remote): (path relative to the directory, as bytes; the file as a DvcOut, with
    DVC's md5). DataPinError naming `where` when DVC cannot list it, or a name could not be
    pinned (a newline in it, a path leaving the directory)."""
    try:
        found = fs.find(out.path, detail=True)
    except Exception as exc:   # DVC's and its remote's client errors
        raise DataPinError(f"{where}: DVC cannot list {out.path} at commit {commit[:12]} "
                           f"({out.source}, md5 {out.md5}) from its cache or {remote_of(fs)}: "
                           f"{describe(exc)}. {_advice(exc)}") from None
    files = []
    for name, info in sorted(found.items()):
        if info.get("type", "file") != "file":
            continue
        rel = posixpath.relpath(posixpath.normpath(str(name).lstrip("/")), out.path)
        if rel.startswith("..") or "\n" in rel or rel == ".":
            raise DataPinError(f"{where}: DVC lists {name!r} in {out.path}; a name that leaves "
                               "the directory or holds a newline cannot be pinned")
        md5 = info.get("md5") or (info.get("dvc_info") or {}).get("md5") or ""
        size = info.get("size")
        files.append((rel.encode(), DvcOut(path=posixpath.join(out.path, rel), md5=str(md5),
                                           size=size if isinstance(size, int) else None,
                                           source=out.source, file=out.file,
                                           plain_md5=out.plain_md5)))
    if not files:
        raise DataPinError(f"{where}: {out.source} at commit {commit[:12]} tracks {out.path} as "
                           "a directory with no files in it; a pin needs at least one file")
    return files


def _advice(exc: BaseException) -> str:
    name = type(exc).__name__
    if isinstance(exc, FileNotFoundError) or "Missing" in name:
        return ("Push it from a machine that has it (`dvc push`), or put the pinned file at the "
                "path in the working tree")
    if "NoRemote" in name:
        return ("Name a remote (`dvc remote add -d NAME URL`) and commit .dvc/config, or put "
                "the pinned file at the path in the working tree")
    return "Check the DVC remote's URL and credentials (`dvc pull` reaches the same remote)"


def describe(exc: BaseException) -> str:
    text = str(exc).strip() or repr(exc)
    return f"{type(exc).__name__}: {text}"
