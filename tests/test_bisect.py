"""Issue 10 part 3: `repro bisect SPEC --good C1 --bad C2 [-j k]` names the first commit whose
verify fails, k commits at a time, skipping commits that cannot run. Real git, real training:
a 30-commit history on the tiny project where one commit changes an epsilon inside the loss and
one commit does not import (the next one fixes it).
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from repro import pipeline
from repro.commands.bisect import Search, bisect, commit_range, rounds_bound
from repro.engines.executor import LocalExecutor
from tests.conftest import build_project, git

N = 30          # commits in good..bad, bad included
EPS = 17        # position (0-based) of the commit that changes the epsilon
BROKEN = 15     # position of the commit that does not import; BROKEN + 1 fixes it
# With these positions every -j in 1, 2, 3 probes the broken commit and still stays within
# ⌈log_{k+1} 30⌉ rounds (test_search_* below checks the search itself over every position).

LOSS = '        return jnp.mean((h @ p["out"]["w"] + p["out"]["b"] - y) ** 2)'
LOSS_EPS = '        return jnp.mean((h @ p["out"]["w"] + p["out"]["b"] - y) ** 2 + EPS)'
STEP = "    step_fn = jax.jit(jax.value_and_grad(loss_fn))"
TRACED_STEP = "    step_fn = ctx.traced(jax.jit(jax.value_and_grad(loss_fn)))"   # names the op


class History:
    def __init__(self, project, good: str, commits: list[str]):
        self.project, self.good, self.commits = project, good, commits
        self.bad = commits[-1]
        self.eps, self.broken = commits[EPS], commits[BROKEN]


def make_history(root: Path) -> History:
    """The tiny project with `EPS = 0.0` in its loss, recorded and committed (the good commit),
    then 30 commits: notes and a harmless helper module, one that sets EPS = 1e-6, one that
    breaks the import and the next that fixes it. (bench/bench_bisect.py times it.)"""
    p = build_project(root)
    train = p.root / "tinyproj" / "train.py"
    text = train.read_text()
    assert LOSS in text
    train.write_text(text.replace("LR_SCALE = 1.0\n", "LR_SCALE = 1.0\nEPS = 0.0\n")
                     .replace(LOSS, LOSS_EPS).replace(STEP, TRACED_STEP))
    p.commit("loss: an epsilon inside the mean (0 for now); the step is traced")
    p.repro("pin", str(p.spec), check_rc=0)
    p.repro("record", str(p.spec), check_rc=0)
    good = p.commit("record tiny")
    commits = []
    for i in range(N):
        text = train.read_text()
        if i == EPS:
            train.write_text(text.replace("EPS = 0.0\n", "EPS = 1e-6\n"))
            subject = "loss: epsilon 1e-6 against log(0) later"
        elif i == BROKEN:
            train.write_text(text + "\n\ndef helper(:\n    pass\n")
            subject = "wip: a helper (does not parse yet)"
        elif i == BROKEN + 1:
            train.write_text(text.replace("\n\ndef helper(:\n    pass\n", ""))
            subject = "drop the unfinished helper"
        elif i % 3 == 0:
            p.write("tinyproj/util.py", f"VERSION = {i}\n")
            subject = f"util: version {i}"
        else:
            p.write("NOTES.md", "".join(f"note {j}\n" for j in range(i + 1)))
            subject = f"notes: {i}"
        commits.append(p.commit(subject))
    return History(p, good, commits)


@pytest.fixture(scope="module")
def history(tmp_path_factory) -> History:
    return make_history(tmp_path_factory.mktemp("bisect") / "proj")


@pytest.mark.slow
def test_bisect_names_the_epsilon_commit_and_skips_the_one_that_does_not_import(history, tmp_path):
    out = tmp_path / "bisect.json"
    proc = history.project.repro("bisect", "specs/tiny.yaml", "--good", history.good,
                                 "--bad", "HEAD", "-j", "2", "--json", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = proc.stdout
    assert f"first bad commit: {history.eps}" in text, text
    assert "loss: epsilon 1e-6 against log(0) later" in text
    assert "tinyproj/train.py | 2 +-" in text
    # the verdict there: where it first diverges, and what changed since the record
    assert "first divergence: metric loss at step 0" in text, text
    assert "code.commit" in text
    line = next(i + 1 for i, t in enumerate((history.project.root / "tinyproj" / "train.py")
                                            .read_text().splitlines()) if "+ EPS" in t)
    assert f"first diverging op: add float32[64, 1] at tinyproj/train.py:{line} in loss_fn" in text, text
    lines = text.splitlines()
    assert lines[0].startswith(f"endpoints: good {history.good[:12]} pass, bad {history.bad[:12]} fail")
    rounds = [line for line in lines if line.startswith("round ")]
    assert 1 <= len(rounds) <= math.ceil(math.log(N, 3)) == 4, text
    assert all(" left (" in line for line in rounds)

    doc = json.loads(out.read_text())
    assert doc["found"] == history.eps and doc["commits"] == history.commits
    assert doc["localisation"].startswith("add float32[64, 1] at tinyproj/train.py:")
    assert doc["search_rounds"] == len(rounds) <= doc["rounds_bound"] == 4
    assert all(len(r["probes"]) <= 2 for r in doc["rounds"])
    assert doc["verdict"]["status"] == "fail" and doc["verdict"]["fail_class"] == "changed"
    assert doc["verdict"]["first_divergence"]["quantity"] == "metric loss"
    # the broken commit was probed and skipped, with why
    assert [s["commit"] for s in doc["skipped"]] == [history.broken], doc["skipped"]
    assert "SyntaxError" in doc["skipped"][0]["reason"], doc["skipped"]
    assert f"{history.broken[:12]} skip (cannot run" in text


@pytest.mark.parametrize("k", [3])
@pytest.mark.slow
def test_bisect_stays_within_log_k_plus_1_rounds_on_any_executor(history, k):
    """The library call with an Executor handed in (as a Ray executor would be); --confirm 0
    keeps it short (nothing here is nondeterministic)."""
    seen = []
    b = bisect(history.project.spec, history.good[:10], history.bad,
               pipeline.Options(confirm=0), executor=LocalExecutor(k), on_round=seen.append)
    assert b.found is not None and b.found.commit == history.eps
    assert b.search_rounds == len(seen) - 1 <= rounds_bound(N, k) == math.ceil(math.log(N, k + 1) - 1e-9)
    assert all(len(r.probes) <= k for r in b.rounds[1:])
    assert [p.commit for p in b.skipped] == [history.broken]
    assert b.verdict is not None and b.verdict.commit == history.eps
    assert b.exit_code == 0


@pytest.mark.slow
def test_a_good_commit_that_does_not_pass_is_an_error(history):
    proc = history.project.repro("bisect", "specs/tiny.yaml", "--good", history.eps,
                                 "--bad", history.bad, "-j", "2", "--confirm", "0")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"repro: error: the good commit {history.eps[:12]} does not pass: fail" in proc.stderr
    assert "metric loss at step 0" in proc.stderr


def test_unknown_and_misordered_revisions_are_named_before_anything_runs(history):
    proc = history.project.repro("bisect", "specs/tiny.yaml", "--good", "deadbeef", "--bad", "HEAD")
    assert proc.returncode == 2
    assert "--good 'deadbeef' is not a commit of" in proc.stderr, proc.stderr
    proc = history.project.repro("bisect", "specs/tiny.yaml", "--good", history.bad,
                                 "--bad", history.good)
    assert proc.returncode == 2
    assert "is not an ancestor of --bad" in proc.stderr, proc.stderr
    assert "endpoints" not in proc.stdout   # nothing trained


@pytest.mark.slow
def test_a_nondeterministic_commit_is_confirmed_and_skipped(history):
    """On a side branch from good: a commit with unseeded noise in its learning rate, one that
    removes it, and the epsilon change. The noisy commit fails; run again it gives other bits,
    so its failure says nothing about its code: skipped, and the epsilon commit is still found."""
    p = history.project
    git(p.root, "checkout", "-q", "-b", "noisy", history.good)
    try:
        train = p.root / "tinyproj" / "train.py"
        clean = train.read_text()
        train.write_text(clean.replace('    lr = ctx.config["lr"] * LR_SCALE', '    lr = ctx.config["lr"] '
                                       '* LR_SCALE * (1 + 1e-3 * np.random.default_rng().random())'))
        noisy = p.commit("lr jitter")
        train.write_text(clean)
        p.commit("no lr jitter")
        train.write_text(clean.replace("EPS = 0.0\n", "EPS = 1e-6\n"))
        eps = p.commit("epsilon")
        b = bisect(p.spec, history.good, "noisy", pipeline.Options(confirm=1), jobs=2)
    finally:
        git(p.root, "checkout", "-q", "main")
    assert b.found is not None and b.found.commit == eps, b
    assert [(s.commit, s.reason.split(":")[0]) for s in b.skipped] == [(noisy, "nondeterministic")]
    assert b.search_rounds == 1


# -- the search alone: no git, no runs ---------------------------------------------------------
def _search(n: int, k: int, culprit: int, skip: frozenset[int] = frozenset()) -> tuple[int, Search]:
    s, rounds = Search(n), 0
    while not s.done:
        probes = s.next_probes(k)
        assert 1 <= len(probes) <= k and len(set(probes)) == len(probes)
        s.learn({i: "skip" if i in skip else "fail" if i >= culprit else "pass" for i in probes})
        rounds += 1
    return rounds, s


@pytest.mark.parametrize("n", [2, 5, 30, 128])
@pytest.mark.parametrize("k", [1, 2, 3, 7])
def test_search_finds_every_culprit_within_the_bound(n, k):
    for culprit in range(n):
        rounds, s = _search(n, k, culprit)
        assert s.candidates() == [culprit]
        assert rounds <= rounds_bound(n, k)
    assert rounds_bound(128, 3) == 4 and rounds_bound(128, 1) == 7 and rounds_bound(30, 2) == 4


def test_one_skipped_commit_in_30_keeps_the_bound_at_j2_and_j3_and_costs_at_most_a_round_at_j1():
    for k, extra in ((1, 1), (2, 0), (3, 0)):
        worst = max(_search(30, k, culprit, frozenset({broken}))[0]
                    for culprit in range(30) for broken in range(29) if broken != culprit)
        assert worst <= rounds_bound(30, k) + extra, (k, worst)


def test_search_with_a_skipped_commit_before_the_culprit_names_both():
    rounds, s = _search(30, 2, culprit=12, skip=frozenset(range(30)) - {29})
    assert s.candidates() == list(range(30))   # nothing could run: every commit is a candidate
    rounds, s = _search(30, 2, culprit=12, skip=frozenset({11}))
    assert s.candidates() == [11, 12] and 11 in s.skipped


def test_search_notes_a_pass_after_a_fail():
    s = Search(10)
    s.learn({3: "fail", 6: "pass"})
    assert s.first_bad == 3 and s.last_good == -1
    assert "passes although 3" in s.notes[0]


def test_the_range_follows_the_first_parent_line_and_keeps_the_merge_that_brought_good_in(tmp_path):
    def commit(msg: str) -> str:
        (tmp_path / "f").write_text(msg)
        git(tmp_path, "add", "-A")
        git(tmp_path, "commit", "-q", "-m", msg)
        return git(tmp_path, "rev-parse", "HEAD")

    git(tmp_path, "init", "-q", "-b", "main")
    commit("a")
    git(tmp_path, "checkout", "-q", "-b", "feat")
    f1 = commit("f1")
    commit("f2")
    git(tmp_path, "checkout", "-q", "main")
    m1 = commit("m1")
    git(tmp_path, "merge", "-q", "--no-edit", "-s", "ours", "feat")
    merge = git(tmp_path, "rev-parse", "HEAD")
    m2 = commit("m2")
    assert commit_range(tmp_path, f1, m2) == [merge, m2]   # good on the merged branch
    a = git(tmp_path, "rev-parse", "main~3")
    assert commit_range(tmp_path, a, m2) == [m1, merge, m2]   # the branch's commits are not probed


def test_cli_help_names_the_flags():
    proc = subprocess.run([sys.executable, "-m", "repro.cli", "bisect", "--help"],
                          capture_output=True, text=True)
    assert proc.returncode == 0
    for flag in ("--good", "--bad", "--jobs", "--confirm", "--json", "--timeout", "--backend"):
        assert flag in proc.stdout
