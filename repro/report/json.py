"""The machine-readable verdicts: one result per spec, and the audit document (format in
docs/audit.md). What the HTML report and the history read back."""
from __future__ import annotations

import os
import platform
import socket
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import repro
from repro.verdict import QuantityResult, Verdict

if TYPE_CHECKING:
    from repro.commands.audit import Audit

JSON_FORMAT = 1


def machine() -> dict[str, Any]:
    return {"hostname": socket.gethostname(), "platform": platform.platform(),
            "machine": platform.machine(), "python": platform.python_version(),
            "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()}


def _row(r: QuantityResult) -> dict[str, Any]:
    d = asdict(r)
    d["label"] = r.label
    d["tolerance"] = r.tolerance_text
    d["spread_multiple"] = r.spread_multiple
    for k in ("max_abs", "max_rel", "spread", "spread_multiple"):
        if d[k] is not None and (d[k] != d[k] or d[k] in (float("inf"), float("-inf"))):
            d[k] = str(d[k])  # JSON has no inf/nan
    return d


def verdict_json(v: Verdict) -> dict[str, Any]:
    """One result of the audit JSON (documented in docs/audit.md)."""
    worst: dict[str, QuantityResult] = {}
    for r in v.rows:
        key = {"metric": "metrics", "grad": "grads", "weight": "weights", "state": "states"}[r.kind]
        if key not in worst or (r.max_rel, r.max_abs) > (worst[key].max_rel, worst[key].max_abs):
            worst[key] = r
    first = v.first_divergence
    return {
        "name": v.name, "status": str(v.status), "fail_class": v.fail_class or None,
        "confirmation": None if v.confirmation is None else asdict(v.confirmation),
        "spec": v.spec_path,
        "duration_s": round(v.duration_s, 3),
        "platform": v.platform, "backend": v.backend, "code": v.code, "record": v.record_path,
        "compared": None if v.bitwise is None else ("bitwise" if v.bitwise else "tolerance"),
        "compared_because": v.mode_reason,
        "first_divergence": None if first is None else {
            "quantity": first.label, "kind": first.kind, "name": first.name,
            "step": first.first_step, "max_abs": _row(first)["max_abs"],
            "max_rel": _row(first)["max_rel"]},
        "worst": {k: {"quantity": r.label, "max_abs": _row(r)["max_abs"],
                      "max_rel": _row(r)["max_rel"], "ok": r.ok} for k, r in worst.items()},
        "quantities": [_row(r) for r in v.rows],
        "changes": [{"what": c.what, "key": c.key, "recorded": _plain(c.recorded),
                     "current": _plain(c.current), "numeric": c.numeric} for c in v.changes],
        "localisation": None if v.localisation is None else {
            **asdict(v.localisation), "text": v.localisation.text()},
        "programs_unchanged": v.programs_unchanged,
        "stopped": None if v.stopped is None else {
            **{k: _plain(x) if x == x else "nan" for k, x in asdict(v.stopped).items()},
            "text": v.stopped.text()},
        "segments": None if v.segments is None else {
            "selection": v.segments.selection, "seed": v.segments.seed, "total": v.segments.total,
            "text": v.segments.text(),
            "replayed": [{"start": o.start, "end": o.end, "label": o.label, "status": str(o.status),
                          "first": o.first or None, "stopped_at": o.stopped_at, "continued": o.continued,
                          "duration_s": round(o.duration_s, 3)} for o in v.segments.outcomes]},
        "restart": None if v.restart is None else {**asdict(v.restart), "text": v.restart.text()},
        "pins": v.pins, "fingerprint": v.fingerprint.to_json(), "curves": v.curves,
        "metrics_final": v.metrics_final, "notes": v.notes,
        "error": v.error, "error_detail": v.error_detail, "killed_by": v.killed_by or None,
    }


def _plain(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(x) for x in value]
    if isinstance(value, dict):
        return {str(k): _plain(x) for k, x in value.items()}
    return str(value)


def audit_json(audit: Audit) -> dict[str, Any]:
    """The machine-readable result of an audit (format in docs/audit.md)."""
    return {
        "format": JSON_FORMAT, "repro_version": repro.__version__, "machine": machine(),
        "started": audit.started, "finished": audit.finished,
        "duration_s": round(audit.duration_s, 3), "directory": audit.directory,
        "jobs": audit.jobs, "backend": audit.options.backend, "code": audit.options.code,
        "compile_cache": audit.options.compile_cache, "complete": audit.complete,
        "summary": audit.counts(), "exit_code": audit.exit_code,
        "results": [verdict_json(v) for v in audit.verdicts],
    }


