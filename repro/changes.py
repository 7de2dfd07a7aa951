"""What changed between a record and now (or between two records): the "likely causes" half
of a verdict. Pure functions over record metadata, a spec and a fingerprint."""
from __future__ import annotations

from pathlib import Path

from repro.errors import ReproError
from repro.pins.code import CodePin
from repro.pins.env import fingerprint_changes
from repro.record import read_record
from repro.spec import Spec, load_spec, spec_changes
from repro.verdict import ERROR, FAIL, PASS, Change, Verdict


def changes_since_record(meta: dict, spec: Spec, code: CodePin, fingerprint: dict,
                         backend: str) -> list[Change]:
    """What differs between the record's pins, spec and environment and the current ones,
    most likely causes first (code, data, spec keys, then environment)."""
    out: list[Change] = []
    rec_code = meta.get("code", {})
    if rec_code.get("mode") != code.mode:
        out.append(Change("code", "code mode", rec_code.get("mode"), code.mode))
    if rec_code.get("commit") != code.commit and code.mode == "worktree":
        out.append(Change("code", "code commit (worktree HEAD)", rec_code.get("commit"), code.commit))
    if code.dirty:
        out.append(Change("code", "uncommitted changes", None, f"{len(code.dirty)} file(s)"))
    for key, a, b in spec_changes(meta.get("spec", {}).get("canonical", {}), spec.canonical):
        what = "code" if key.startswith("code.") else "data" if key.startswith("data.") else "spec"
        informational = key.startswith(("tolerance.", "description", "timeout", "record.metrics"))
        out.append(Change(what, key, a, b, numeric=not informational))
    if meta.get("backend") and meta.get("backend") != backend:
        out.append(Change("backend", "backend", meta.get("backend"), backend, numeric=False))
    for key, a, b, numeric in fingerprint_changes(meta.get("fingerprint", {}), fingerprint):
        out.append(Change("environment", f"environment.{key}", a, b, numeric))
    order = {"code": 0, "data": 1, "spec": 2, "backend": 3, "environment": 4}
    out.sort(key=lambda c: (not c.numeric, order[c.what]))
    return out


def diff_records(path_a, path_b, spec_ref=None) -> Verdict:
    """Compare two recorded versions with a spec's tolerances (default: record B's spec)."""
    from repro.compare import compare_run

    try:
        a, b = read_record(Path(path_a)), read_record(Path(path_b))
        if spec_ref is not None:
            tolerance, metrics = load_spec(spec_ref).canonical["tolerance"], None
        else:
            canonical = b.meta.get("spec", {}).get("canonical", {})
            tolerance = canonical.get("tolerance", {})
            metrics = (canonical.get("record") or {}).get("metrics")
    except ReproError as exc:
        v = Verdict(name=Path(str(path_b)).resolve().parent.name or str(path_b), status=ERROR,
                    error=str(exc))
        return v
    cmp = compare_run(a.meta, a.arrays, b.metrics, b.arrays, tolerance=tolerance,
                      platform_key=b.meta.get("platform", ""), run_fingerprint=b.fingerprint,
                      metric_names=metrics)
    v = Verdict(name=b.meta.get("spec", {}).get("name", "?"), status=PASS if cmp.ok else FAIL,
                platform=b.meta.get("platform", ""), rows=cmp.rows, bitwise=cmp.bitwise,
                mode_reason=cmp.reason, record_path=f"{a.path} vs {b.path}")
    for key, x, y in spec_changes(a.meta.get("spec", {}).get("canonical", {}),
                                  b.meta.get("spec", {}).get("canonical", {})):
        v.changes.append(Change("spec", key, x, y))
    for key, x, y, numeric in fingerprint_changes(a.fingerprint, b.fingerprint):
        v.changes.append(Change("environment", f"environment.{key}", x, y, numeric))
    return v
