"""The progress display (repro/report/progress.py): plain lines when the output is not a terminal
(the CLI in a subprocess, as CI runs it), a live rich table on a terminal (rendered in-process to
a forced terminal), both fed by a real audit of real specs; the ETA; rich stays in the report."""
from __future__ import annotations

import ast
import re
from io import StringIO
from pathlib import Path

import pytest
from rich.console import Console

from conftest import Project, build_project
from repro.commands.audit import run_audit
from repro.report.progress import LiveProgress, PlainProgress, describe_replay, describe_verdict
from repro.verdict import error_verdict

ANSI = re.compile(r"\x1b\[")


@pytest.fixture(scope="module")
def audited(tmp_path_factory) -> Project:
    """tiny (passes), tiny-b (recorded with seed 1, now seed 7: fails), broken (an error)."""
    p = build_project(tmp_path_factory.mktemp("progress") / "proj")
    text = p.spec.read_text()
    p.write("specs/tiny-b.yaml", text.replace("name: tiny", "name: tiny-b").replace(
        "seeds: {params: 0}", "seeds: {params: 1}"))
    p.commit("two specs")
    p.repro("record", "specs", "--runs", "1", check_rc=0)
    spec_b = p.root / "specs" / "tiny-b.yaml"
    spec_b.write_text(spec_b.read_text().replace("seeds: {params: 1}", "seeds: {params: 7}"))
    p.write("specs/broken.yaml", "repro: 1\ncode:\n  commit: 3f2a1c9\n  entrypoint: x:y\n")
    return p


@pytest.mark.slow
def test_plain_lines_in_a_ci_log_one_per_finished_spec(audited):
    proc = audited.repro("audit", "specs", "-j", "2")      # stdout is a pipe, as in CI
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("[")]
    assert len(lines) == 3, proc.stdout
    assert [re.search(r"\] (\d)/3 ", ln).group(1) for ln in lines] == ["1", "2", "3"]
    assert lines[0].startswith("[#######-------------] 1/3 ERROR broken (0.0 s)")  # at once
    by_name = {ln.split()[3]: ln for ln in lines}
    assert re.search(r"PASS  tiny \(\d+\.\d s\) bitwise$", by_name["tiny"])
    assert re.search(r"FAIL  tiny-b \(\d+\.\d s\) .*metric loss at step 0", by_name["tiny-b"])
    assert not ANSI.search(proc.stdout + proc.stderr) and "ETA" not in proc.stdout
    assert "1 pass, 1 fail, 1 error" in proc.stdout       # the summary table as before
    again = audited.repro("audit", "specs", "--no-progress")
    assert again.returncode == 2 and "3/3" in again.stdout


def test_the_live_table_on_a_terminal_shows_each_spec_state_count_and_eta(audited):
    out = StringIO()
    console = Console(file=out, force_terminal=True, width=120, color_system="standard")
    progress = LiveProgress(describe_verdict, console, title="repro audit specs",
                            auto_refresh=False)  # a frame at every start and end
    with progress:
        audit = run_audit(audited.root / "specs", jobs=1, progress=progress)
    assert [str(v.status) for v in audit.verdicts] == ["error", "fail", "pass"]  # file order
    frames = out.getvalue()
    assert ANSI.search(frames)                                  # a terminal: colours, redraws
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", frames)
    # the broken spec ends at once; it ran no job, so there is no time to estimate from yet
    assert re.search(r"1/3 done · 0 running · 2 queued · elapsed 0:0\d · ETA \?", text)
    assert re.search(r"running\s+tiny-b\s+\d+\.\d s", text)
    assert re.search(r"queued\s+tiny ", text)
    assert re.search(r"1/3 done · 1 running · 1 queued", text)
    assert re.search(r"2/3 done · 1 running · 0 queued · elapsed \d:\d\d · ETA \d:\d\d", text)

    final = StringIO()
    Console(file=final, force_terminal=True, width=120).print(progress.render())
    last = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", final.getvalue())
    assert re.search(r"repro audit specs  ━+  3/3 done · 0 running · 0 queued", last)
    assert "ETA 0:00" in last
    assert re.search(r"ERROR\s+broken\s+0\.0 s\s+.*code\.commit", last)
    assert re.search(r"PASS\s+tiny\s+\d+\.\d s\s+bitwise", last)
    assert re.search(r"FAIL\s+tiny-b\s+\d+\.\d s\s+.*metric loss at step 0", last)
    assert progress.live is None                                 # stopped: the table is gone


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_eta_is_the_median_job_time_times_the_jobs_left_over_the_jobs_at_once():
    clock, lines = Clock(), StringIO()
    p = PlainProgress(describe_replay, file=lines, clock=clock)
    assert p.add(["a", "b", "c", "d", "e"], later=1) == 0
    p.start(0)
    p.start(1)
    assert p.eta() is None                                       # nothing finished yet
    clock.t = 2.0
    p.done(0, object())
    clock.t = 6.0
    p.done(1, object())
    p.start(2)
    clock.t = 7.0
    p.done(2, object())         # times 2, 6, 1: median 2; left: d, e and 1 expected; 2 at once
    assert p.eta() == pytest.approx(2.0 * 3 / 2)
    assert p.counts() == (3, 0, 2)
    assert lines.getvalue().splitlines() == ["[1/5] a DONE (2.0 s)", "[2/5] b DONE (6.0 s)",
                                             "[3/5] c DONE (1.0 s)"]


def test_a_long_list_shows_running_and_failed_jobs_first():
    console = Console(file=StringIO(), force_terminal=True, width=100)
    p = LiveProgress(describe_verdict, console, max_rows=3, auto_refresh=False)
    p.add([f"s{i}" for i in range(6)])
    p.done(0, error_verdict(Path("s0.yaml"), "cannot load"))
    p.start(4)
    rows, hidden = p.shown()
    assert [j.label for j in rows] == ["s0", "s1", "s4"] and hidden == 3
    p.close()


def test_only_the_report_imports_rich():
    pkg = Path(__file__).resolve().parents[1] / "repro"
    users = set()
    for path in pkg.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            if any(n == "rich" or n.startswith("rich.") for n in names):
                users.add(str(path.relative_to(pkg)))
    assert users == {"report/progress.py"}


@pytest.mark.slow
def test_segment_replay_prints_a_plain_line_per_segment(tmp_path):
    from test_checkpoints import make_ck
    p = make_ck(tmp_path / "proj")
    p.repro("record", "specs/tiny.yaml", "--runs", "1", check_rc=0)
    out = p.repro("verify", "specs/tiny.yaml", "--segments", "all", "-j", "2",
                  check_rc=0).stdout
    # four segments on two workers: two runs of two segments each (docs/segments.md)
    lines = [ln for ln in out.splitlines() if re.match(r"\[\d/2\] segments ", ln)]
    assert [ln.split()[0] for ln in lines] == ["[1/2]", "[2/2]"], out
    assert {re.sub(r"\(\d+\.\d s\)", "(T)", ln.split(" ", 1)[1]) for ln in lines} == {
        "segments [0, 100) [100, 200) DONE (T)", "segments [200, 300) [300, 400) DONE (T)"}, out
    assert "4 of 4 segments" in out and not ANSI.search(out)


@pytest.mark.slow
def test_calibrate_and_bisect_tell_the_display_of_every_run(tmp_path):
    from conftest import lr_times
    from repro import pipeline
    from repro.commands.bisect import bisect
    from repro.commands.calibrate import calibrate
    from repro.report.progress import describe_variation, variation_line

    p = build_project(tmp_path / "proj")
    lines = StringIO()
    plain = PlainProgress(describe_variation, variation_line, file=lines)
    calibrate(p.spec, only=["hash-seed"], progress=plain)
    assert [j.label for j in plain.jobs] == ["baseline", "PYTHONHASHSEED=1", "PYTHONHASHSEED=2"]
    assert [j.status for j in plain.jobs] == ["done", "bitwise", "bitwise"]
    assert re.match(r"\[1/3\] baseline \(\d+\.\d s\): done$", lines.getvalue().splitlines()[0])

    p.repro("record", "specs/tiny.yaml", "--runs", "1", check_rc=0)
    good = p.commit("record")
    p.write("notes.txt", "unrelated\n")
    p.commit("an unrelated commit")
    lr_times(p, "1.5")
    console = Console(file=StringIO(), force_terminal=True, width=100)
    live = LiveProgress(describe_verdict, console, title="bisect", auto_refresh=False)
    with live:
        b = bisect(p.spec, good, "HEAD", pipeline.Options(confirm=0), progress=live)
    assert b.found is not None
    labels = [j.label for j in live.jobs]
    assert labels[:2] == [f"good {good[:12]}", f"bad {b.bad[:12]}"]
    assert all(label.startswith("round ") for label in labels[2:]) and len(labels) > 2
    assert [j.status for j in live.jobs[:2]] == ["pass", "fail"]
    assert all(j.finished for j in live.jobs)
