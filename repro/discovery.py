"""Finding specs: the one place that expands directories to spec files, loads them, and refuses
a spec whose name another spec already uses (names choose the record directory: two specs of
one name would overwrite each other's record). `repro run/record/verify`, `repro audit` and the
pytest plugin all call it, before anything runs.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from repro.errors import ReproError, SpecError, StoreError
from repro.spec import Spec, find_specs, load_spec

if TYPE_CHECKING:
    from repro.store.sync import DataFile, Project


class DuplicateNameError(ReproError):
    """Two specs share a name."""


@dataclass(frozen=True)
class FoundSpec:
    """A spec file and what loading it gave: the spec, or the problem that stops it running."""

    path: Path
    spec: Spec | None
    problem: ReproError | None = None


def expand(paths: Iterable[Path]) -> list[Path]:
    """Directories become the spec files below them (sorted); files stay as given."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = find_specs(path)
            if not found:
                raise ReproError(f"no spec files (YAML with `repro:`) under {path}")
            out += found
        else:
            out.append(path)
    return out


def duplicate_name_problems(named: Sequence[tuple[Path, str]]) -> dict[Path, DuplicateNameError]:
    """For every spec after the first of a name: the error that stops it."""
    first: dict[str, Path] = {}
    out = {}
    for path, name in named:
        if name in first and first[name].resolve() != path.resolve():
            out[path] = DuplicateNameError(
                f"spec name {name!r} is also used by {first[name]}; names must be unique (they "
                "name the record directory: one would overwrite the other's record). Set a "
                "different `name:` in one of them")
        else:
            first.setdefault(name, path)
    return out


def discover(paths: Iterable[Path]) -> list[FoundSpec]:
    """Every spec under `paths`, loaded, with duplicate names refused (the later files)."""
    loaded: list[FoundSpec] = []
    for path in expand(paths):
        try:
            loaded.append(FoundSpec(path, load_spec(path)))
        except SpecError as exc:
            loaded.append(FoundSpec(path, None, exc))
    dups = duplicate_name_problems([(f.path, f.spec.name) for f in loaded
                                    if f.spec is not None and f.spec.name])
    return [FoundSpec(f.path, f.spec, dups.get(f.path, f.problem)) for f in loaded]


DEFAULT_SPECS = Path("specs")


def named_or_default(names: Sequence[str | Path], required: bool = True) -> list[Path]:
    """The specs a store command works on: those named, else specs/ (here). None named and no
    specs/: an error when `required` (push, pull), else nothing (store verify: the store alone)."""
    if names:
        return [Path(n) for n in names]
    if DEFAULT_SPECS.is_dir():
        return [DEFAULT_SPECS]
    if required:
        raise ReproError("no specs/ directory here: name the specs (SPEC or DIR)")
    return []


def projects(specs: Iterable[Path], records_root: Path | None = None, data: bool = False
             ) -> list[Project]:
    """The specs' records and the store blobs they point to, grouped by the repository (and so
    by the remote): what `repro push`, `pull` and `store verify` move and check. With `data`
    (a push), also the specs' pinned data files that the store carries (`data_files`)."""
    from repro.pins.code import repo_root
    from repro.record import check_record, record_dir
    from repro.store.recordblobs import blob_refs
    from repro.store.remote import remote_config
    from repro.store.sync import Project

    by_root: dict[Path, Project] = {}
    for found in discover(specs):
        if found.problem is not None or found.spec is None:
            raise found.problem or StoreError(f"{found.path}: not a spec")
        root = repo_root(found.spec.path or found.path)
        proj = by_root.get(root)
        if proj is None:
            proj = by_root[root] = Project(remote_config(root), [], root)
        if data:
            proj.data += data_files(found.spec, root)
        spec_records = record_dir(root, found.spec.name or "", "any", records_root).parent
        if not spec_records.is_dir():
            continue
        for d in sorted(spec_records.iterdir()):
            if d.name.startswith(".") or not (d / "record.json").is_file():
                continue
            directory, meta = check_record(d, blobs=False)
            assert meta.arrays is not None   # check_record made sure
            proj.blobs += blob_refs(directory, meta.checkpoints, meta.arrays.index)
    return list(by_root.values())


def data_files(spec: Spec, root: Path) -> list[DataFile]:
    """The spec's data files that `repro push` sends to the store by sha256: entries without
    `url:` or `dvc:` (those have their own home), pinned to a file. Each is found in the
    working tree when its sha256 there is the pinned one (through the hash cache), else in the
    machine's store, else nowhere (the push names it)."""
    import os

    from repro.pins.data import hash_path, resolve_data_path
    from repro.store.blobs import machine_store
    from repro.store.sync import DataFile

    out = []
    for name, e in spec.data.items():
        if e.url is not None or e.dvc is not None or e.sha256 is None:
            continue
        what = f"data {name!r} ({e.path}) of {spec.path or spec.name}"
        where: Path | None = None
        try:
            real = resolve_data_path(root, e.path)
            if real.is_dir():
                continue   # files only: a directory is verified in the working tree
            if hash_path(real, root=root) == e.sha256:
                where = real
        except ReproError:
            pass
        store = machine_store()
        if where is None and store.has(e.sha256):
            where = store.path(e.sha256)
        size = os.stat(where).st_size if where is not None else 0
        out.append(DataFile(e.sha256, size, where, what))
    return out
