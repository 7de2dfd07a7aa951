"""`repro pin SPEC`: rewrite a spec's code commit and data hashes to what they are now.

The file is edited in place, value by value (`repro.yamlio.set_value`), so the user's
comments, key order and quoting survive; missing keys are inserted beside their siblings. The
result is re-validated before it is written (atomically).
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from repro.errors import DataPinError, SpecError
from repro.ioutil import atomic_write_text
from repro.pins.code import check_commit, code_repo, dirty_paths, head_commit, repo_root
from repro.pins.data import hash_paths, resolve_data_path
from repro.spec import default_name, load_spec, parse_spec
from repro.yamlio import load_with_lines, set_value

if TYPE_CHECKING:
    from repro.interop.dvc import DvcOut


def pin_spec(path: str | Path, *, commit: str | None = None
             ) -> tuple[list[tuple[str, Any, Any]], list[str]]:
    """Pin a spec to the current HEAD (or `commit`) and the current data hashes.

    Returns ([(key, old, new)] for each value changed, warnings).
    """
    path = Path(path)
    try:
        spec = load_spec(path, require_pins=False)
    except SpecError as exc:
        if exc.key_path != "code.commit":
            raise
        # a short or mistyped commit (the error tells the user to run `repro pin`): pinning
        # replaces it, so validate everything else with the commit left out
        data, lines = load_with_lines(path.read_text(encoding="utf-8"), str(path))
        assert isinstance(data, dict) and isinstance(data.get("code"), dict)  # it named code.commit
        data = {**data, "code": {**data["code"], "commit": None}}
        spec = parse_spec(data, file=str(path), lines=lines, require_pins=False,
                          default_name=default_name(path))
    root = repo_root(path)
    repo = code_repo(root, spec.code.repo)
    warnings = []
    if commit is not None:
        if not re.fullmatch(r"[0-9a-fA-F]{40}", commit):
            raise SpecError(f"--commit {commit!r}: a full 40-hex commit is required (`git "
                            f"rev-parse {commit}` prints it)", file=str(path),
                            key_path="code.commit")
        check_commit(repo, commit)   # `repro pin --commit X` never writes a commit that is not there
    new_commit = commit or head_commit(repo)
    if commit is None and (repo / ".git").exists():
        dirty = [p for p in dirty_paths(repo) if Path(repo, p).resolve() != path.resolve()
                 and not p.startswith("fixtures/records/")]
        if dirty:
            warnings.append(f"{len(dirty)} uncommitted change(s) in {repo} are not part of commit "
                            f"{new_commit[:12]} ({', '.join(dirty[:5])}); commit them and pin again "
                            "if the training code depends on them")
    wanted: dict[tuple, str] = {("code", "commit"): new_commit}
    # an entry fetched by URL whose path is absent keeps its sha256: it pins what the URL serves;
    # a DVC entry's hashes are what DVC tracks at the new commit (repro/interop/dvc.py)
    for name, e in spec.data.items():
        if e.dvc is not None:
            md5, sha = dvc_hashes(name, e.dvc, root, new_commit, warnings)
            wanted[("data", name, "dvc_md5")] = md5
            wanted[("data", name, "sha256")] = sha
    entries = {name: resolve_data_path(root, e.path) for name, e in spec.data.items()
               if e.dvc is None and (e.url is None or os.path.lexists(Path(root, e.path)))}
    for (name, _), (_, digest) in zip(entries.items(), hash_paths(list(entries.values()), root=root)):
        wanted[("data", name, "sha256")] = digest
    if spec.environment.image:
        image, warning = _current_image(spec.environment.image)
        if image:
            wanted[("environment", "image")] = image
        if warning:
            warnings.append(warning)
    text = path.read_text(encoding="utf-8")
    current = {k: _get(spec.model_dump(), k) for k in wanted}
    changes = [(".".join(k), current[k], v) for k, v in wanted.items() if current[k] != v]
    for key, _, value in changes:
        text = set_value(text, tuple(key.split(".")), value, str(path))
    if changes:
        # validate the edited text before writing it: a failed pin leaves the file as it was
        try:
            data, lines = load_with_lines(text, str(path))
        except SpecError as exc:
            raise SpecError(f"pinning produced invalid YAML (a bug in repro; the file is "
                            f"unchanged): {exc.reason}", file=str(path), line=exc.line) from None
        parse_spec(data, file=str(path), lines=lines, default_name=spec.name)
        atomic_write_text(path, text)
    return changes, warnings


def dvc_hashes(name: str, path: str, root: Path, commit: str, warnings: list[str]
               ) -> tuple[str, str]:
    """DVC's hash of `path` at `commit` (its .dvc file or dvc.lock stage) and the sha256 of that
    version: of the working tree's file when it is that version (its md5 is DVC's), else of
    the bytes DVC gives at that commit (kept in the machine's store by that sha256, where a
    verify finds them). The working tree is not written."""
    from repro.interop.dvc import locate, md5_and_sha256

    where = f"data {name!r} (dvc: {path})"
    out = locate(root, commit, path, where)
    if out.is_dir:
        return out.md5, _dir_sha256(name, path, root, commit, out, warnings)
    here = resolve_data_path(root, path) if os.path.lexists(root / path) else None
    if here is not None and here.is_file():
        md5, sha = md5_and_sha256(here)
        if md5 == out.md5:
            return out.md5, sha
        warnings.append(f"{where}: the working tree's {path} is not the version {out.source} "
                        f"tracks at {commit[:12]} (md5 {md5}, DVC's {out.md5}); pinned DVC's "
                        "version, read through DVC (`dvc add` and commit to pin yours)")
    # DVC's version, by the bytes it gives: sha256 is not known yet, so fetch into a name that
    # the bytes decide, then keep them under it
    return out.md5, _sha256_through_dvc(name, path, root, commit, out)


def _dir_sha256(name: str, path: str, root: Path, commit: str, out: DvcOut,
                warnings: list[str]) -> str:
    """The tree sha256 of DVC directory `out` at `commit` (docs/data-pins.md, "Hash format"):
    its files as DVC lists them, each hashed from the working tree when its md5 there is DVC's,
    else from the bytes DVC gives (kept in the machine's store)."""
    import hashlib

    from repro.interop.dvc import dir_files, dvc_filesystem, md5_and_sha256
    from repro.pins.data import tree_listing

    where = f"data {name!r} (dvc: {path})"
    items, through_dvc = [], 0
    with dvc_filesystem(root, commit, where) as fs:
        for rel, file in dir_files(fs, out, commit, where):
            sha = None
            try:
                here = resolve_data_path(root, file.path)
                if here.is_file():
                    md5, local = md5_and_sha256(here)
                    sha = local if md5 == file.md5 else None
            except DataPinError:
                pass
            if sha is None:
                sha, through_dvc = _sha256_through_dvc(name, file.path, root, commit, file, fs), \
                    through_dvc + 1
            items.append((rel, sha))
    if through_dvc:
        warnings.append(f"{where}: {through_dvc} of the {len(items)} files {out.source} tracks at "
                        f"{commit[:12]} are not in the working tree as DVC has them; pinned DVC's "
                        "version, read through DVC (`dvc add` and commit to pin yours)")
    return hashlib.sha256(tree_listing(items)).hexdigest()


def _sha256_through_dvc(name: str, path: str, root: Path, commit: str, out: DvcOut,
                       fs: Any = None) -> str:
    """The sha256 of the bytes DVC gives for `out` at `commit` (through `fs`, else a
    DVCFileSystem of its own), streamed into the machine's store and kept there only when their
    md5 is DVC's (where that is plain md5)."""
    import contextlib
    import hashlib

    from repro.interop.dvc import dvc_filesystem, file_chunks
    from repro.store.blobs import machine_store

    where = f"data {name!r} (dvc: {path}, commit {commit[:12]})"
    md5 = hashlib.md5(usedforsecurity=False)

    def counted(dvcfs: Any) -> Iterator[bytes]:
        for chunk in file_chunks(dvcfs, out, commit, where):
            md5.update(chunk)
            yield chunk

    def right(_: str) -> bool:
        return not out.plain_md5 or md5.hexdigest() == out.md5

    with contextlib.nullcontext(fs) if fs is not None else dvc_filesystem(root, commit, where) as own:
        sha = machine_store().take(counted(own), keep=right)
    if not right(sha):
        raise DataPinError(f"{where}: DVC gave bytes whose md5 is {md5.hexdigest()}, but "
                           f"{out.source} records {out.md5}; nothing was pinned or kept. The DVC "
                           "cache or remote holds other bytes under that hash: `dvc push` the "
                           "right file from a machine that has it")
    return sha


def _current_image(pinned: str) -> tuple[str | None, str | None]:
    """`NAME@<Id of the local image NAME now>`, or a warning saying why the pin was kept."""
    from repro.docker.image import split_pin
    from repro.errors import ReproError

    name, _ = split_pin(pinned)
    if not name:
        return None, "environment.image is a bare image Id: kept as it is (no name to look up)"
    try:
        from repro.docker.client import connect

        client = connect(timeout=10)
        image = client.images.get(name)
    except ReproError as exc:
        return None, f"environment.image kept: {exc}"
    except Exception as exc:  # docker.errors.ImageNotFound, APIError
        return None, (f"environment.image kept: no local image {name!r} "
                      f"({type(exc).__name__}); build it (`repro env build RECIPE`) and pin again")
    return f"{name}@{image.id}", None


def _get(tree: object, key: tuple) -> object:
    for part in key:
        if not isinstance(tree, dict):
            return None
        tree = tree.get(part)
    return tree
