"""`repro audit`: verify every spec under a directory, N at a time, and describe the outcome as
JSON, JUnit XML and an HTML report. Each spec goes through `pipeline.verify` — the same call as
`repro verify` and the pytest item — so an audit adds scheduling and reporting, nothing else.
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import queue
import socket
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import repro
from repro import pipeline
from repro.errors import ReproError
from repro.spec import find_specs
from repro.verdict import ERROR, Verdict

JSON_FORMAT = 1


@dataclass
class Audit:
    """One audit: its verdicts in spec order, and whether every spec finished."""

    directory: str
    jobs: int
    options: pipeline.Options
    started: str
    finished: str = ""
    duration_s: float = 0.0
    complete: bool = True
    verdicts: list[Verdict] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return max((v.exit_code for v in self.verdicts), default=0)

    def counts(self) -> dict[str, int]:
        out = {"pass": 0, "fail": 0, "error": 0}
        for v in self.verdicts:
            out[v.status] = out.get(v.status, 0) + 1
        return out


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def run_audit(directory: str | Path, options: pipeline.Options | None = None, *, jobs: int = 1,
              on_done=None) -> Audit:
    """Verify every spec under `directory`, `jobs` at a time.

    `on_done(verdict, finished_count, total)` is called as each spec finishes (the progress
    display). On KeyboardInterrupt every child is killed, specs not finished are reported as
    errors 'interrupted', and the audit is returned with `complete=False`.
    """
    import time

    options = options or pipeline.Options()
    if not Path(directory).is_dir():
        raise ReproError(f"{directory} is not a directory; `repro audit DIR` looks for specs "
                         "below DIR (default: specs/)")
    specs = find_specs(directory)
    if not specs:
        raise ReproError(f"no spec files (YAML with `repro:`) under {directory}")
    results: dict[Path, Verdict] = _duplicate_names(specs)
    jobs = max(1, min(jobs, len(specs)))
    audit = Audit(str(directory), jobs, options, _now())
    t0 = time.perf_counter()
    slots: queue.Queue = queue.Queue()
    for i in range(jobs):
        slots.put(i)
    lock = threading.Lock()

    def one(path: Path) -> Verdict:
        slot = slots.get()
        try:
            return pipeline.verify(path, replace(options, cpu_slot=slot))
        finally:
            slots.put(slot)

    pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="repro-audit")
    futures = {pool.submit(one, p): p for p in specs if p not in results}
    pending = set(futures)
    try:
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                with lock:
                    results[futures[fut]] = fut.result()
                    if on_done:
                        on_done(results[futures[fut]], len(results), len(specs))
    except KeyboardInterrupt:
        audit.complete = False
        for fut in pending:
            fut.cancel()
        from repro.backends import kill_all  # local children and docker containers
        kill_all()
        pool.shutdown(wait=True, cancel_futures=True)
    finally:
        pool.shutdown(wait=True)
    for path in specs:
        if path not in results:
            results[path] = Verdict(name=path.stem, status=ERROR, spec_path=str(path),
                                    error="interrupted before it finished (the audit was stopped)")
    if not audit.complete:  # runs killed mid-way report a crash: say what really happened
        for fut, path in futures.items():
            if fut.done() and not fut.cancelled() and results[path].status == ERROR \
                    and "killed by signal" in results[path].error:
                results[path].error = "interrupted: the audit was stopped while this spec ran"
    audit.verdicts = [results[p] for p in specs]
    audit.finished = _now()
    audit.duration_s = time.perf_counter() - t0
    return audit


def _duplicate_names(specs: list[Path]) -> dict[Path, Verdict]:
    """Specs that reuse another spec's name (names pick the record directory): errors."""
    from repro.spec import load_spec

    first: dict[str, Path] = {}
    out = {}
    for path in specs:
        try:
            name = load_spec(path).name
        except ReproError:
            continue  # verify reports it
        if name in first:
            out[path] = Verdict(name=name, status=ERROR, spec_path=str(path),
                                error=f"spec name {name!r} is also used by {first[name]}; names "
                                      "must be unique (they name the record directory)")
        else:
            first[name] = path
    return out


def machine() -> dict:
    return {"hostname": socket.gethostname(), "platform": platform.platform(),
            "machine": platform.machine(), "python": platform.python_version(),
            "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()}


def _row(r) -> dict:
    d = asdict(r)
    d["label"] = r.label
    d["tolerance"] = r.tolerance_text
    for k in ("max_abs", "max_rel"):
        if d[k] != d[k] or d[k] in (float("inf"), float("-inf")):
            d[k] = str(d[k])  # JSON has no inf/nan
    return d


def verdict_json(v: Verdict) -> dict:
    """One result of the audit JSON (documented in docs/audit.md)."""
    worst: dict = {}
    for r in v.rows:
        key = {"metric": "metrics", "grad": "grads", "weight": "weights"}[r.kind]
        if key not in worst or (r.max_rel, r.max_abs) > (worst[key].max_rel, worst[key].max_abs):
            worst[key] = r
    first = v.first_divergence
    return {
        "name": v.name, "status": v.status, "spec": v.spec_path, "duration_s": round(v.duration_s, 3),
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
        "pins": v.pins, "fingerprint": v.fingerprint, "curves": v.curves,
        "metrics_final": v.metrics_final, "notes": v.notes,
        "error": v.error, "error_detail": v.error_detail,
    }


def _plain(value):
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(x) for x in value]
    if isinstance(value, dict):
        return {str(k): _plain(x) for k, x in value.items()}
    return str(value)


def audit_json(audit: Audit) -> dict:
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


def junit_xml(audit: Audit) -> str:
    """JUnit XML: one test case per spec, the verdict table as the failure message."""
    import xml.etree.ElementTree as ET

    from repro.report import render, summary_line

    counts = audit.counts()
    suite = ET.Element("testsuite", name="repro audit", tests=str(len(audit.verdicts)),
                       failures=str(counts["fail"]), errors=str(counts["error"]), skipped="0",
                       time=f"{audit.duration_s:.3f}", timestamp=audit.started,
                       hostname=socket.gethostname())
    for v in audit.verdicts:
        case = ET.SubElement(suite, "testcase", classname=f"repro.{Path(audit.directory).name or 'specs'}",
                             name=v.name, file=v.spec_path, time=f"{v.duration_s:.3f}")
        props = ET.SubElement(case, "properties")
        for name, value in (("repro_status", v.status), ("repro_spec_hash", v.spec_hash),
                            ("repro_commit", v.commit), ("repro_platform", v.platform)):
            ET.SubElement(props, "property", name=name, value=value or "")
        if v.status in ("fail", "error"):
            tag = "failure" if v.status == "fail" else "error"
            el = ET.SubElement(case, tag, message=summary_line(v), type=f"repro.{v.status}")
            el.text = render(v)
    root = ET.Element("testsuites")
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def load_history(directory: str | Path, limit: int = 10) -> list[dict]:
    """The last `limit` audit JSON documents kept in a history directory, oldest first.
    Unreadable files are skipped (a history must never break tonight's report)."""
    import json

    out = []
    for path in sorted(Path(directory).glob("audit-*.json"))[-limit:]:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and isinstance(doc.get("results"), list):
            out.append(doc)
    return out


def save_history(directory: str | Path, doc: dict) -> Path:
    from repro.ioutil import write_json_atomic

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stamp = doc["started"].replace(":", "").replace("-", "").replace("+0000", "Z")
    path = directory / f"audit-{stamp}.json"
    n = 1
    while path.exists():
        n += 1
        path = directory / f"audit-{stamp}-{n}.json"
    write_json_atomic(path, doc)
    return path
