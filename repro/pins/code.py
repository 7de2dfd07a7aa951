"""The code pin: find the spec's git repository, check the pinned commit exists, and export the
tree at that commit once into a read-only cache (or use the working tree, and say if it is dirty).

Exports are keyed by commit id alone: a commit names its tree's content, whichever clone it
came from. Writers race safely (export to a temp dir, then rename). A tree in use is never
removed: each run holds a shared lock on its commit's export (`CodePin.in_use`), and replacing an
altered export takes the exclusive lock, so it waits until no run of that tree is going on.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from repro.errors import CodePinError
from repro.paths import cache_dir

_COMPLETE = ".repro-export"


@dataclass(frozen=True)
class CodePin:
    """Where the child will import the training code from, and what that tree is."""

    mode: str                    # "pinned" | "worktree"
    commit: str                  # the pinned commit, or HEAD for a worktree run
    tree: Path                   # directory the child puts first on sys.path
    repo: str                    # the repository the commit was found in
    dirty: list[str] = field(default_factory=list)  # worktree only: changed/untracked paths
    notes: list[str] = field(default_factory=list)  # e.g. an altered export was replaced

    @contextlib.contextmanager
    def in_use(self) -> Iterator[None]:
        """While a run uses the exported tree: a shared lock, so that no other process replaces
        it meanwhile (a worktree run uses the checkout: nothing to hold)."""
        if self.mode != "pinned":
            yield
            return
        with _tree_lock(self.commit, fcntl.LOCK_SH):
            yield

    def describe(self) -> str:
        if self.mode == "pinned":
            return f"code at pinned commit {self.commit[:12]}"
        state = f"dirty: {len(self.dirty)} changed file(s)" if self.dirty else "clean"
        return f"code from the working tree (HEAD {self.commit[:12]}, {state})"


def git(args: list[str], cwd: Path | str, *, check: bool = True, text: bool = True,
        stdout: int | IO[Any] | None = subprocess.PIPE) -> subprocess.CompletedProcess:
    """Run git with a clean, predictable environment (no pager, no prompts, C locale)."""
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C", "GIT_PAGER": "cat"}
    for var in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"):
        env.pop(var, None)
    try:
        proc = subprocess.run(["git", *args], cwd=cwd, env=env, stdout=stdout,
                              stderr=subprocess.PIPE, text=text)
    except FileNotFoundError:
        if not Path(cwd).is_dir():   # the same exception: say which one it is
            raise CodePinError(f"{cwd} does not exist (git was to run there)") from None
        raise CodePinError("git is not installed; repro needs git to read code pins") from None
    if check and proc.returncode != 0:
        err = proc.stderr if text else proc.stderr.decode(errors="replace")
        raise CodePinError(f"`git {' '.join(args)}` failed in {cwd}: {err.strip()}")
    return proc


def repo_root(start: Path) -> Path:
    """The root of the git working tree holding `start` (a file or directory)."""
    start = Path(start).resolve()
    directory = start if start.is_dir() else start.parent
    proc = git(["rev-parse", "--show-toplevel"], directory, check=False)
    if proc.returncode != 0:
        raise CodePinError(f"{start} is not inside a git repository; a spec lives in the git "
                           "repository whose commits it pins (run `git init` and commit first)")
    return Path(proc.stdout.strip()).resolve()


def _is_url(repo: str) -> bool:
    return "://" in repo or (":" in repo.split("/")[0] and "@" in repo.split(":")[0])


def code_repo(spec_repo_root: Path, repo: str) -> Path:
    """The local git repository named by `code.repo`: a path relative to the spec's repository,
    or a URL mirrored once into the cache."""
    if not _is_url(repo):
        path = (spec_repo_root / repo).resolve()
        if not path.exists():
            raise CodePinError(f"code.repo {repo!r} does not exist (resolved to {path})")
        return repo_root(path)
    mirror = cache_dir() / "repos" / (hashlib.sha256(repo.encode()).hexdigest()[:24] + ".git")
    if not mirror.exists():
        mirror.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=mirror.parent, prefix=".clone-"))
        # `--`: a code.repo that starts with '-' is a repository name, never an option of git
        proc = git(["clone", "--mirror", "--quiet", "--", repo, str(tmp)], mirror.parent,
                   check=False)
        if proc.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise CodePinError(f"cannot clone code.repo {repo}: {proc.stderr.strip()}")
        try:
            os.rename(tmp, mirror)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)  # another process won the race
    return mirror


def head_commit(repo: Path) -> str:
    proc = git(["rev-parse", "--verify", "HEAD^{commit}"], repo, check=False)
    if proc.returncode != 0:
        raise CodePinError(f"the repository {repo} has no commits yet; commit the training code "
                           "first, then run `repro pin`")
    return proc.stdout.strip()


def dirty_paths(repo: Path) -> list[str]:
    """Tracked files changed and untracked files not ignored, as `git status` names them."""
    out = git(["status", "--porcelain", "--untracked-files=all"], repo).stdout
    return [line[3:] for line in out.splitlines() if line.strip()]


def changed_files(repo: Path | str, old: str, new: str) -> list[str] | None:
    """Paths that differ between two commits (None when either is not in the repository)."""
    proc = git(["diff", "--name-only", "--no-renames", old, new, "--"], repo, check=False)
    return proc.stdout.split("\n")[:-1] if proc.returncode == 0 else None


def check_commit(repo: Path, commit: str) -> None:
    """Raise CodePinError naming the commit if the repository does not have it."""
    if git(["cat-file", "-e", f"{commit}^{{commit}}"], repo, check=False).returncode == 0:
        return
    if _is_url(str(repo)) or repo.suffix == ".git":
        git(["fetch", "--quiet", "origin", "+refs/*:refs/*"], repo, check=False)
        if git(["cat-file", "-e", f"{commit}^{{commit}}"], repo, check=False).returncode == 0:
            return
    shallow = git(["rev-parse", "--is-shallow-repository"], repo, check=False).stdout.strip()
    hint = (" This clone is shallow: fetch the full history (`git fetch --unshallow`)."
            if shallow == "true" else
            " Was it never pushed, or rewritten? `git log --all --oneline` lists what exists;"
            " `repro pin SPEC` pins the current HEAD.")
    raise CodePinError(f"pinned commit {commit} does not exist in {repo}.{hint}")


@contextlib.contextmanager
def _tree_lock(commit: str, how: int) -> Iterator[None]:
    """flock on `<cache>/trees/<commit>.lock`: shared while a run uses the export, exclusive
    while an altered one is replaced."""
    path = cache_dir() / "trees" / f"{commit}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, how)
        yield
    finally:
        os.close(fd)   # closing releases the lock


def export_commit(repo: Path, commit: str, notes: list[str] | None = None) -> Path:
    """The tree at `commit`, exported once into `<cache>/trees/<commit>` and made read-only.

    Before every use the export is checked against the manifest taken when it was made (stat
    keys; a file whose size, mtime, ctime or inode moved is re-hashed): code that rewrote its
    own exported tree (root ignores read-only bits) must not run as "the pinned commit". An
    altered export is re-exported from git, and the event is added to `notes`."""
    check_commit(repo, commit)
    target = cache_dir() / "trees" / commit
    if (target / _COMPLETE).exists():
        try:
            if tree_changes(target) == []:
                return target
        except OSError:
            pass   # being replaced by another process: decided again under the lock
    # every change to the export (made, or replaced) happens under the exclusive lock, so a
    # process never removes a tree another has just made; it waits for runs of it (in_use)
    with _tree_lock(commit, fcntl.LOCK_EX):
        altered = tree_changes(target) if (target / _COMPLETE).exists() else None
        if altered == []:   # made or repaired by another process while this one waited
            return target
        if altered and notes is not None:  # None: none yet, or no manifest (an older export)
            notes.append(f"the exported tree of commit {commit[:12]} had been changed since it "
                         f"was exported ({', '.join(altered[:5])}"
                         f"{' …' if len(altered) > 5 else ''}); it was exported again from git")
        if target.exists():
            make_writable(target)
            shutil.rmtree(target, ignore_errors=True)
        return _export(repo, commit, target)


def _export(repo: Path, commit: str, target: Path) -> Path:
    """`git archive` of `commit` into a temporary directory renamed to `target` (read-only,
    with its manifest). Called under the commit's exclusive lock, with `target` absent."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{commit[:12]}-"))
    try:
        archive = git(["archive", "--format=tar", commit], repo, text=False)
        with tempfile.TemporaryFile() as buf:
            buf.write(archive.stdout)
            buf.seek(0)
            with tarfile.open(fileobj=buf) as tar:
                tar.extractall(tmp, filter="tar")
        (tmp / _COMPLETE).write_text(f"{commit}\n")
        _make_read_only(tmp)
        manifest = _take_manifest(tmp)
        os.rename(tmp, target)
        _write_manifest(target, _restat(manifest, tmp, target))
    finally:
        if tmp.exists():
            make_writable(tmp)
            shutil.rmtree(tmp, ignore_errors=True)
    return target


# -- the export's manifest: what each exported entry is, keyed by its stat ----------------------
def _manifest_path(tree: Path) -> Path:
    return tree.with_name(tree.name + ".manifest.json")


def _stat_key(st: os.stat_result) -> list[int]:
    # ctime cannot be set from user space: restoring mtime after an edit (os.utime) still shows
    return [st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _entry_digest(path: str, st: os.stat_result) -> str:
    if stat.S_ISLNK(st.st_mode):
        return "link:" + os.readlink(path)
    if stat.S_ISDIR(st.st_mode):
        return "dir"
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _walk_entries(root: Path) -> dict[str, os.stat_result]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            out[os.path.relpath(path, root)] = os.lstat(path)
    return out


def _take_manifest(root: Path) -> dict[str, list[object]]:
    """relpath -> [stat key, digest] of every entry of a fresh export."""
    return {rel: [_stat_key(st), _entry_digest(os.path.join(root, rel), st)]
            for rel, st in _walk_entries(root).items()}


def _restat(manifest: dict[str, list[object]], old: Path, new: Path) -> dict[str, list[object]]:
    """After the rename the directories' ctimes moved; take the stat keys again (same digests)."""
    entries = _walk_entries(new)
    return {rel: [_stat_key(entries[rel]), digest] for rel, (_, digest) in manifest.items()
            if rel in entries}


def _write_manifest(tree: Path, manifest: dict[str, list[object]]) -> None:
    import json

    from repro.ioutil import atomic_write_text
    atomic_write_text(_manifest_path(tree), json.dumps(manifest, sort_keys=True))


def tree_changes(tree: Path) -> list[str] | None:
    """Paths of an export that differ from its manifest (changed, added or removed); None when
    the manifest is missing or unreadable. Entries whose stat key is unchanged are not read
    again."""
    import json

    try:
        manifest = json.loads(_manifest_path(tree).read_text())
        assert isinstance(manifest, dict)
    except (OSError, ValueError, AssertionError):
        return None
    changed = []
    entries = _walk_entries(tree)
    for rel in sorted(set(manifest) | set(entries)):
        if rel not in entries or rel not in manifest:
            changed.append(rel)
            continue
        key, digest = manifest[rel]
        st = entries[rel]
        if key == _stat_key(st):
            continue
        if stat.S_ISDIR(st.st_mode) and digest == "dir" and st.st_mode == key[0]:
            continue   # a directory's times move when an entry is listed or renamed: its
            #            content is its entries, each checked on its own
        if _entry_digest(os.path.join(tree, rel), st) != digest or st.st_mode != key[0]:
            changed.append(rel)
    return changed


def _make_read_only(root: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                os.chmod(p, stat.S_IMODE(os.lstat(p).st_mode) & ~0o222)
    for dirpath, _, _ in os.walk(root, topdown=False):
        os.chmod(dirpath, 0o555)


def make_writable(root: Path) -> None:
    for dirpath, dirnames, _filenames in os.walk(root):
        os.chmod(dirpath, 0o755)
        for name in dirnames:
            os.chmod(os.path.join(dirpath, name), 0o755)


def resolve_code(spec, spec_repo_root: Path, mode: str = "pinned") -> CodePin:
    """Resolve a spec's code pin to a tree the child can import from.

    Args:
      spec: the loaded Spec.
      spec_repo_root: root of the git repository holding the spec file.
      mode: "pinned" (the tree at code.commit) or "worktree" (the current checkout, as is).
    """
    repo = code_repo(spec_repo_root, spec.code.repo)
    if mode == "pinned":
        notes: list[str] = []
        tree = export_commit(repo, spec.code.commit, notes)
        return CodePin("pinned", spec.code.commit, tree, str(repo), notes=notes)
    if mode == "worktree":
        if repo.suffix == ".git" and not (repo / ".git").exists():
            raise CodePinError(f"--code worktree needs a checkout, but code.repo {spec.code.repo} "
                               "is a remote; run from a clone of it")
        return CodePin("worktree", head_commit(repo), repo, str(repo), dirty_paths(repo))
    raise ValueError(f"code mode must be 'pinned' or 'worktree', not {mode!r}")
