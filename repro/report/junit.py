"""JUnit XML: one test case per spec, the verdict table as the failure text, and the per-test
properties — written here once for the audit's file and the pytest plugin's items."""
from __future__ import annotations

import json
import socket
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING

from repro.report.text import render, summary_line
from repro.verdict import Status, Verdict

if TYPE_CHECKING:
    from repro.commands.audit import Audit


def junit_properties(v: Verdict) -> list[tuple[str, str]]:
    """The properties a spec's test case carries (pytest's record_property, the audit's XML)."""
    return [("repro_status", str(v.status)), ("repro_fail_class", v.fail_class),
            ("repro_spec_hash", v.spec_hash),
            ("repro_commit", v.commit), ("repro_platform", v.platform),
            ("repro_bitwise", "" if v.bitwise is None else str(v.bitwise).lower()),
            ("repro_fingerprint", json.dumps(v.fingerprint.to_json(), sort_keys=True))] + \
        ([("repro_segments", v.segments.text())] if v.segments else []) + \
        ([("repro_restart", v.restart.text())] if v.restart else [])


def junit_xml(audit: Audit) -> str:
    """JUnit XML: one test case per spec, the verdict table as the failure message."""
    counts = audit.counts()
    suite = ET.Element("testsuite", name="repro audit", tests=str(len(audit.verdicts)),
                       failures=str(counts["fail"]), errors=str(counts["error"]),
                       skipped=str(counts.get("skipped", 0)),
                       time=f"{audit.duration_s:.3f}", timestamp=audit.started,
                       hostname=socket.gethostname())
    for v in audit.verdicts:
        case = ET.SubElement(suite, "testcase", classname=f"repro.{Path(audit.directory).name or 'specs'}",
                             name=v.name, file=v.spec_path, time=f"{v.duration_s:.3f}")
        props = ET.SubElement(case, "properties")
        for name, value in junit_properties(v):
            ET.SubElement(props, "property", name=name, value=value or "")
        if v.status in (Status.FAIL, Status.ERROR):
            tag = "failure" if v.status == Status.FAIL else "error"
            el = ET.SubElement(case, tag, message=summary_line(v), type=f"repro.{v.status}")
            el.text = render(v)
        elif v.status == Status.SKIPPED:
            ET.SubElement(case, "skipped", message=v.error)
    root = ET.Element("testsuites")
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


