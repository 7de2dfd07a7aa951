"""What changed between a record and now (or between two records): the "likely causes" half
of a verdict. Pure functions over record metadata, a spec and a fingerprint."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from repro.env.fingerprint import Fingerprint, describe_mesh
from repro.errors import ReproError
from repro.interop.dvc import locate
from repro.pins.code import CodePin, changed_files
from repro.record import RecordMeta, read_record
from repro.spec import Spec, ToleranceSpec, load_spec, spec_changes
from repro.verdict import FAIL, PASS, Change, ChangeKind, Verdict, error_verdict


def changes_since_record(meta: RecordMeta, spec: Spec, code: CodePin,
                         fingerprint: Fingerprint, backend: str,
                         shardings: Mapping[str, Any] | None = None) -> list[Change]:
    """What differs between the record's pins, spec and environment and the current ones,
    most likely causes first (code, data, spec keys, environment, then the layout of sharded
    arrays: `shardings`, the run's record key -> PartitionSpec; None: not compared)."""
    out: list[Change] = []
    if meta.code.mode != code.mode:
        out.append(Change("code", "code mode", meta.code.mode, code.mode))
    if meta.code.commit != code.commit and code.mode == "worktree":
        out.append(Change("code", "code commit (worktree HEAD)", meta.code.commit, code.commit))
    if code.dirty:
        out.append(Change("code", "uncommitted changes", None, f"{len(code.dirty)} file(s)"))
    for key, a, b in spec_changes(meta.spec.canonical, spec.canonical):
        what: ChangeKind = ("code" if key.startswith("code.") else
                            "data" if key.startswith("data.") else "spec")
        informational = key.startswith(("tolerance.", "description", "timeout", "record.metrics"))
        change = Change(what, key, a, b, numeric=not informational)
        if key == "code.commit" and isinstance(a, str) and isinstance(b, str):
            _commit_files(change, code, spec, a, b)
        if what == "data":
            _dvc_source(change, spec, code)
        out.append(change)
    if meta.backend and meta.backend != backend:
        out.append(Change("backend", "backend", meta.backend, backend, numeric=False))
    # an imported record has no fingerprint: its environment is unknown, so none is compared
    for key, a, b, numeric in meta.fingerprint.changes(fingerprint) if meta.fingerprint else ():
        out.append(Change("environment", f"environment.{key}", _env_value(key, a),
                          _env_value(key, b), numeric))
    if shardings is not None:
        kept = set(meta.arrays.index) if meta.arrays is not None else set()
        out += sharding_changes(meta.shardings or {}, {k: v for k, v in shardings.items() if k in kept})
    order = {"code": 0, "data": 1, "spec": 2, "backend": 3, "environment": 4, "sharding": 5}
    out.sort(key=lambda c: (not c.numeric, order[c.what]))
    return out


def _env_value(key: str, value: Any) -> Any:
    """A fingerprint value as a change shows it: a mesh as `{data: 2, model: 4}` (its JSON is
    a list of pairs, which a change would show as items lost and gained)."""
    return describe_mesh(value) if key == "mesh" and isinstance(value, list) else value


def sharding_changes(recorded: Mapping[str, Any], current: Mapping[str, Any],
                     limit: int = 8) -> list[Change]:
    """A Change per array of `current` (the run's arrays both sides kept: record key -> its
    PartitionSpec, None for one device) whose PartitionSpec differs from the record's. A layout
    decides how reductions are split, so it is numeric."""
    from repro.child.sharding import describe

    keys = sorted(k for k in current if recorded.get(k) != current.get(k))
    out = [Change("sharding", f"sharding of {k}", describe(recorded.get(k)),
                  describe(current.get(k))) for k in keys[:limit]]
    if len(keys) > limit:
        out.append(Change("sharding", f"sharding of {len(keys) - limit} more array(s)",
                          None, "differs"))
    return out


def _commit_files(change: Change, code: CodePin, spec: Spec, old: str, new: str) -> None:
    """Name the files that differ between the recorded and the pinned commit. When the only
    ones are pinned elsewhere — `data:` entries (their own hashes decide), this spec's file and
    its sibling specs, recorded versions — the commit itself is not what moved the numbers."""
    files = changed_files(code.repo, old, new)
    if files is None:
        return
    root = Path(code.repo)
    spec_dir = _relative(spec.path.parent, root) if spec.path else None
    data = [d.rstrip("/") for d in (_relative(root / e.path, root) for e in spec.data.values()) if d]
    if any(e.dvc is not None for e in spec.data.values()):
        data += [".dvc"]   # DVC's own config: the data it serves is pinned by the entries' hashes

    def pinned_elsewhere(f: str) -> bool:
        dvc = any(e.dvc is not None for e in spec.data.values()) and \
            (f.endswith(".dvc") or f.rsplit("/", 1)[-1] in ("dvc.lock", "dvc.yaml", ".dvcignore"))
        return (dvc or f.startswith("fixtures/records/") or any(f == d or f.startswith(d + "/") for d in data)
                or (spec_dir is not None and f.endswith((".yaml", ".yml"))
                    and (f.startswith(spec_dir) if spec_dir else "/" not in f)))
    code_files = [f for f in files if not pinned_elsewhere(f)]
    if not code_files:
        change.numeric = False
        change.detail = ("only files pinned elsewhere differ: " + ", ".join(files[:5])
                         if files else "the two commits hold the same files")
        return
    change.detail = (f"{len(code_files)} file(s) differ: " + ", ".join(code_files[:5])
                     + (" …" if len(code_files) > 5 else ""))


def _dvc_source(change: Change, spec: Spec, code: CodePin) -> None:
    """A DVC entry's moved pin names what DVC records it in at the pinned commit: the `.dvc`
    file, or the dvc.lock stage, whose hash moved."""
    name = next((n for n in spec.data if change.key.startswith(f"data.{n}.")), None)
    entry = spec.data[name] if name is not None else None
    if entry is None or entry.dvc is None or spec.code.commit is None:
        return
    try:
        out = locate(Path(code.repo), spec.code.commit, entry.dvc, f"data {name!r}")
    except ReproError:
        return   # the verify checked it before training; a message helper does not fail
    change.detail = f"DVC: {out.source} at {spec.code.commit[:12]}"


def _relative(path: Path, root: Path) -> str | None:
    try:
        rel = str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return None
    return "" if rel == "." else rel.rstrip("/") + ("/" if path.is_dir() else "")


def diff_records(path_a: str | Path, path_b: str | Path,
                 spec_ref: str | Path | None = None) -> Verdict:
    """Compare two recorded versions with a spec's tolerances (default: record B's spec)."""
    from repro.compare import compare_run

    try:
        a, b = read_record(Path(path_a)), read_record(Path(path_b))
        if spec_ref is not None:
            tolerance, metrics = load_spec(spec_ref).tolerance, None
        else:
            canonical = b.meta.spec.canonical
            tolerance = ToleranceSpec.from_canonical(canonical.get("tolerance"), str(b.path))
            metrics = (canonical.get("record") or {}).get("metrics")
    except ReproError as exc:
        v = error_verdict(path_b, exc)
        v.name = Path(str(path_b)).resolve().parent.name or str(path_b)
        return v
    cmp = compare_run(a, b.metrics, b.arrays, tolerance=tolerance,
                      platform_key=b.meta.platform, run_fingerprint=b.fingerprint,
                      metric_names=metrics)
    v = Verdict(name=b.meta.spec.name, status=PASS if cmp.ok else FAIL,
                platform=b.meta.platform, rows=cmp.rows, bitwise=cmp.bitwise,
                mode_reason=cmp.reason, record_path=f"{a.path} vs {b.path}")
    for key, x, y in spec_changes(a.meta.spec.canonical, b.meta.spec.canonical):
        v.changes.append(Change("spec", key, x, y))
    if a.fingerprint is not None and b.fingerprint is not None:
        for key, x, y, numeric in a.fingerprint.changes(b.fingerprint):
            v.changes.append(Change("environment", f"environment.{key}", _env_value(key, x),
                                    _env_value(key, y), numeric))
    both = set(a.meta.arrays.index if a.meta.arrays else ()) & set(b.meta.arrays.index if b.meta.arrays else ())
    v.changes += sharding_changes(a.meta.shardings or {},
                                  {k: (b.meta.shardings or {}).get(k) for k in sorted(both)})
    v.notes += [f"{label} came from {r.meta.source.describe()}: it has no environment fingerprint"
                for label, r in (("record A", a), ("record B", b)) if r.meta.source is not None]
    return v
