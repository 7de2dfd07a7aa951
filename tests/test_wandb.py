"""`repro audit --wandb`: each verdict an offline W&B run written by wandb's own library and read
back by wandb's own reader (`wandb leet inspect`, which parses the run's .wandb log through
wandb-core); nothing is sent or even tried (a listener at WANDB_BASE_URL counts connections, an
audit hook records every socket the audit's process opens), and no wandb process outlives the
command."""
from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from repro.interop.publish import publication, publish_all
from repro.interop.wandblog import WandbSink
from repro.verdict import FAIL, PASS, QuantityResult, Verdict
from tests.conftest import Project


def _inspect(run_dir: Path, *flags: str) -> list[dict]:
    """wandb's reader of an offline run: `wandb leet inspect --json` (one JSON per record, or
    one object with --summary), offline so that it reports nothing either."""
    proc = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", *flags,
                           str(run_dir)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "WANDB_MODE": "offline"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    if "--summary" in flags:
        return [json.loads(proc.stdout)]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def _offline_runs(directory: Path) -> list[Path]:
    return sorted((directory / "wandb").glob("offline-run-*"))


@contextmanager
def _listener() -> Iterator[tuple[str, list]]:
    """A TCP server on 127.0.0.1 that only counts who connects: W&B's base URL in the tests."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.setblocking(False)
    accepted: list = []
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}", accepted
    finally:
        while True:
            try:
                conn, addr = server.accept()
            except BlockingIOError:
                break
            accepted.append(addr)
            conn.close()
        server.close()


def _alive_with(marker: str) -> list[int]:
    """Processes (not zombies) whose environment carries `marker`: what the command started."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes() and \
                    "State:\tZ" not in (entry / "status").read_text():
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


# The CLI with an audit hook that writes down every socket address the process connects to.
HOOKED = """
import json, sys
seen = []
def hook(event, args):
    if event == "socket.connect":
        seen.append([type(args[1]).__name__, repr(args[1])])
sys.addaudithook(hook)
from repro.cli import main
code = main(sys.argv[2:])
with open(sys.argv[1], "w") as f:
    json.dump(seen, f)
sys.exit(code)
"""


@pytest.mark.slow
def test_audit_writes_offline_runs_that_wandb_reads_back(recorded_template, tmp_path):
    shutil.copytree(recorded_template.root, tmp_path / "p", symlinks=True)
    p = Project(tmp_path / "p")
    out, runs, home = tmp_path / "out", tmp_path / "runs", tmp_path / "home"
    out.mkdir()
    home.mkdir()
    marker = f"REPRO_TEST_{uuid.uuid4().hex}"
    with _listener() as (base_url, accepted):
        env = {**os.environ, "WANDB_BASE_URL": base_url, marker: "1", "HOME": str(home)}
        for k in ("WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_DIR", "WANDB_MODE"):
            env.pop(k, None)
        proc = subprocess.run(
            [sys.executable, "-c", HOOKED, str(out / "sockets.json"), "audit", "specs",
             "--json", str(out / "a.json"), "--report", str(out / "a.html"), "--wandb",
             "--wandb-dir", str(runs)], cwd=p.root, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert accepted == [], "wandb tried its server"
    sockets = json.loads((out / "sockets.json").read_text())
    assert any(kind == "str" for kind, _ in sockets)    # the hook saw wandb reach its service
    assert [a for kind, a in sockets if kind not in ("str", "bytes")] == []   # unix sockets only
    assert _alive_with(marker) == [], "a wandb process outlived the audit"
    assert not any("wandb" in str(path) for path in home.rglob("*")), "wandb wrote in HOME"
    assert f"wandb: 1 run in {runs / 'wandb'} (upload later with `wandb sync" in proc.stdout
    assert proc.stderr == "", proc.stderr
    doc = json.loads((out / "a.json").read_text())["results"][0]

    [run_dir] = _offline_runs(runs)
    [summary] = _inspect(run_dir, "--summary")
    assert summary["name"] == "tiny" and summary["project"] == "repro-audit"
    assert summary["state"] == "finished" and summary["tags"] == ["pass"]
    assert summary["notes"] == "bitwise"
    assert summary["config"]["commit"] == doc["pins"]["commit"]
    assert summary["config"]["spec"] == "specs/tiny.yaml"
    s = summary["summary"]
    assert s["status"] == "pass" and s["spec_hash"] == doc["pins"]["spec_hash"]
    assert s["max_abs_error/metric/loss"] == 0 and s["final/loss"] == doc["metrics_final"]["loss"]
    assert s["training_s"] > 0 and s["exit_code"] == 0

    [art] = [r["artifact"] for r in _inspect(run_dir) if r["type"] == "artifact"]
    assert art["name"] == "repro-tiny" and art["type"] == "repro-verdict"
    files = {c["path"]: Path(c["local_path"]) for c in art["manifest"]["contents"]}
    assert set(files) == {"verdict.json", "report.html"}
    assert all(f.is_relative_to(run_dir) for f in files.values())   # `wandb sync` needs only it
    assert json.loads(files["verdict.json"].read_text()) == doc
    assert files["report.html"].read_bytes() == (out / "a.html").read_bytes()


def test_a_failing_verdict_is_a_failed_run_with_its_class_and_nan_kept(tmp_path, monkeypatch):
    """The sink alone, on a verdict with a NaN error: W&B drops NaN from a summary, so it is
    kept as repro's JSON writes it; the run is failed and tagged with the class."""
    monkeypatch.delenv("WANDB_MODE", raising=False)
    rows = [QuantityResult("metric", "loss", False, False, first_step=2, max_abs=math.nan,
                           max_rel=math.inf, rtol=1e-6, atol=0.0)]
    v = Verdict(name="diverges", status=FAIL, spec_path="specs/diverges.yaml", rows=rows,
                fail_class="nondeterministic", spec_hash="ab" * 32)
    item = publication(v, {"name": "diverges"}, started="2026-11-28T04:12:16+00:00",
                       note="nondeterministic: metric loss at step 2")
    environ = dict(os.environ)
    [outcome] = publish_all([WandbSink(tmp_path / "wb", "nightly")], [item])
    assert outcome.failure == "" and outcome.published == ["diverges"]
    assert dict(os.environ) == environ                  # offline mode was for the call only

    [run_dir] = _offline_runs(tmp_path / "wb")
    [summary] = _inspect(run_dir, "--summary")
    assert summary["project"] == "nightly" and summary["exit_code"] == 1
    assert summary["tags"] == ["fail", "nondeterministic"]
    s = summary["summary"]
    assert s["max_abs_error/metric/loss"] == "nan" and s["max_rel_error/metric/loss"] == "inf"
    assert s["first_divergent_step"] == 2 and s["first_divergence"] == "metric loss"
    assert s["fail_class"] == "nondeterministic"
    [art] = [r["artifact"] for r in _inspect(run_dir) if r["type"] == "artifact"]
    assert [c["path"] for c in art["manifest"]["contents"]] == ["verdict.json"]



def test_a_verdict_that_cannot_be_written_leaves_no_half_run(tmp_path):
    """The HTML report is gone by the time the second verdict is written: the first run is
    whole, the second's directory is removed (`wandb sync` would upload half a verdict)."""
    night = "2026-11-28T04:12:16+00:00"
    verdicts = [Verdict(name=n, status=PASS, spec_path=f"specs/{n}.yaml") for n in ("a", "b")]
    first = publication(verdicts[0], {"name": "a"}, started=night)
    second = publication(verdicts[1], {"name": "b"}, started=night, report=tmp_path / "gone.html")
    [outcome] = publish_all([WandbSink(tmp_path / "wb")], [first, second])
    assert outcome.published == ["a"]
    assert outcome.failure.startswith("publishing b failed: FileNotFoundError"), outcome.failure
    [run_dir] = _offline_runs(tmp_path / "wb")
    assert _inspect(run_dir, "--summary")[0]["name"] == "a"

def test_without_the_extra_or_with_a_stray_flag_the_audit_is_exit_2(project, tmp_path):
    out = tmp_path / "a.json"
    code = ("import sys; sys.modules['wandb'] = None; from repro.cli import main; "
            f"sys.exit(main(['audit', 'specs', '--json', {str(out)!r}, '--wandb']))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=project.root, text=True,
                          capture_output=True, env=os.environ.copy())
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "repro audit --wandb needs Weights & Biases (wandb)" in proc.stderr
    assert "pip install 'repro[wandb]'" in proc.stderr
    assert not out.exists()
    proc = project.repro("audit", "specs", "--json", str(out), "--wandb-dir", str(tmp_path))
    assert proc.returncode == 2 and "--wandb-dir is for the offline W&B runs: add --wandb" \
        in proc.stderr, proc.stderr
    assert not out.exists()
