"""Finding specs: the one place that expands directories to spec files, loads them, and refuses
a spec whose name another spec already uses (names choose the record directory: two specs of
one name would overwrite each other's record). `repro run/record/verify`, `repro audit` and the
pytest plugin all call it, before anything runs.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from repro.errors import ReproError, SpecError
from repro.spec import Spec, find_specs, load_spec


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
