"""`repro bisect`: the first commit whose verdict changes between a good and a bad commit.

The predicate is the spec's own verify with only the code pin moved: for a commit X, a copy of
the spec with `code.commit = X` goes through `pipeline.verify` — the same data, seeds, config
and record, the same comparison as `repro verify`. So "bad" means exactly what a failing verify
means, and the verdict at the commit found says where the numbers first part (quantity, step,
leaf).

The search is k-ary: each round splits the commits that can still be the first bad one into
k+1 parts and verifies the k commits between them at once on an `Executor` (`-j k`), so n
commits take ⌈log_{k+1} n⌉ rounds instead of ⌈log_2 n⌉. `Search` holds that logic alone (pure:
no git, no runs), so the round count is checked over every position of the culprit.

Like `git bisect skip`, a commit whose verdict is not a pass or a fail of its code is skipped:
an error (it does not import, crashes, times out) or a failure that `--confirm` shows to be
nondeterministic (run again from the same pins it gives other bits, so its pass or fail is luck,
not its code). Skipped commits are left out of the next splits; when only skipped commits stand
between the last pass and the first fail, the result names all of them as candidates.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Literal

from repro import pipeline
from repro.commands.progress import Progress
from repro.engines.executor import Executor, LocalExecutor, SpecJob, run_spec_job
from repro.errors import ReproError
from repro.pins.code import code_repo, git, repo_root
from repro.spec import Spec
from repro.verdict import Status, Verdict, error_verdict

Outcome = Literal["pass", "fail", "skip"]
VARIED = ("code.commit",)   # the one key bisect moves: its change is what is tested


class BisectError(ReproError):
    """The bisection cannot start or cannot go on: a bad revision, a good commit that does not
    pass, a bad commit that does not fail."""


# -- the search: positions 0 .. n-1 of the range, n-1 the bad commit --------------------------
@dataclass
class Search:
    """Where the first bad commit can still be. Positions index the commits after the good one,
    oldest first; the last (n-1) is the bad commit, known to fail; the good one is -1."""

    n: int
    last_good: int = -1
    first_bad: int = -1
    skipped: set[int] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.first_bad < 0:
            self.first_bad = self.n - 1

    def candidates(self) -> list[int]:
        """Positions that can still be the first bad commit (skipped ones included)."""
        return list(range(self.last_good + 1, self.first_bad + 1))

    def unknown(self) -> list[int]:
        """Positions between the last pass and the first fail whose verdict is not known."""
        return [i for i in range(self.last_good + 1, self.first_bad) if i not in self.skipped]

    @property
    def done(self) -> bool:
        return not self.unknown()

    def next_probes(self, k: int) -> list[int]:
        """The k positions that split the c candidates into k+1 parts of at most ⌈c/(k+1)⌉.
        Probe t (of the candidate list) fails: the first bad is at or before it; passes: after."""
        cands = self.unknown() + [self.first_bad]
        c = len(cands)
        cuts = sorted({(j * c) // (k + 1) - 1 for j in range(1, k + 1)} & set(range(c - 1)))
        return [cands[t] for t in cuts]

    def learn(self, outcomes: dict[int, Outcome], name: Callable[[int], str] = str) -> None:
        """Narrow with one round's outcomes, assuming one change: the first fail bounds from
        above, the last pass before it from below. A pass after a fail is noted, not used."""
        self.skipped |= {i for i, o in outcomes.items() if o == "skip"}
        fails = [i for i, o in outcomes.items() if o == "fail"]
        if fails and min(fails) < self.first_bad:
            self.first_bad = min(fails)
        passes = [i for i, o in outcomes.items() if o == "pass"]
        for i in sorted(p for p in passes if p > self.first_bad):
            self.notes.append(f"{name(i)} passes although {name(self.first_bad)}, before it, "
                              "fails: the verdict changes more than once in this range; the "
                              "result is the first change after the last pass before that fail")
        below = [p for p in passes if p < self.first_bad]
        if below and max(below) > self.last_good:
            self.last_good = max(below)


def rounds_bound(n: int, k: int) -> int:
    """⌈log_{k+1} n⌉: the rounds a k-ary search of n candidates takes when nothing is skipped."""
    rounds, reach = 0, 1
    while reach < n:
        rounds, reach = rounds + 1, reach * (k + 1)
    return rounds


# -- what the bisection brings back ---------------------------------------------------------
@dataclass(frozen=True)
class Probe:
    """One verify of the spec at one commit."""

    commit: str
    position: int          # in the range: -1 the good commit, n-1 the bad one
    round: int             # 0: the check of the good and bad commits
    outcome: Outcome
    verdict: Verdict
    reason: str = ""       # skip: why the commit says nothing about the change


@dataclass(frozen=True)
class Round:
    number: int            # 0: the endpoints
    probes: list[Probe]
    left: int              # commits that can still be the first bad one
    duration_s: float = 0.0


@dataclass(frozen=True)
class CommitInfo:
    commit: str
    subject: str
    stat: str              # `git show --stat --format=`: files and lines the commit changes
    merge: bool = False


@dataclass
class Bisection:
    """The result: the first bad commit (or the candidates skipped commits leave), the verdict
    there, and how the search went."""

    spec: str
    repo: str
    good: str
    bad: str
    commits: list[str]                     # good..bad along the first-parent line, bad last
    jobs: int
    rounds: list[Round] = field(default_factory=list)
    candidates: list[CommitInfo] = field(default_factory=list)  # one: found
    verdict: Verdict | None = None         # at the last candidate (a known fail)
    notes: list[str] = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def found(self) -> CommitInfo | None:
        return self.candidates[0] if len(self.candidates) == 1 else None

    @property
    def search_rounds(self) -> int:
        """Rounds of the search proper (the endpoint check, round 0, not counted)."""
        return sum(1 for r in self.rounds if r.number > 0)

    @property
    def bound(self) -> int:
        return rounds_bound(len(self.commits), self.jobs)

    @property
    def probes(self) -> list[Probe]:
        return [p for r in self.rounds for p in r.probes]

    @property
    def skipped(self) -> list[Probe]:
        return [p for p in self.probes if p.outcome == "skip"]

    @property
    def exit_code(self) -> int:
        """0: one commit named; 2: skipped commits leave more than one candidate."""
        return 0 if self.found else 2


# -- running it ------------------------------------------------------------------------------
def bisect(spec_ref: pipeline.SpecRef, good: str, bad: str, options: pipeline.Options | None = None,
           *, jobs: int = 1, executor: Executor | None = None,
           on_round: Callable[[Round], None] | None = None,
           progress: Progress | None = None) -> Bisection:
    """Find the first commit in good..bad whose verify fails, `jobs` commits at a time (or as
    many as `executor` has slots). `on_round` sees each round as it ends (the progress lines);
    `progress` each probe queued, started and finished, with the probes later rounds may need.
    Raises BisectError when the range is wrong or the endpoints do not pass and fail."""
    t0 = time.perf_counter()
    options = replace(options or pipeline.Options(), echo=False, code="pinned", varied=VARIED)
    spec = pipeline.as_spec(spec_ref)
    repo = code_repo(repo_root(spec.path or Path.cwd()), spec.code.repo)
    good_c, bad_c = resolve(repo, good, "--good"), resolve(repo, bad, "--bad")
    commits = commit_range(repo, good_c, bad_c)
    executor = executor or LocalExecutor(jobs)
    out = Bisection(spec.name or "spec", str(repo), good_c, bad_c, commits, executor.slots)
    search = Search(len(commits))

    def name(i: int) -> str:
        return (good_c if i < 0 else commits[i])[:12]

    def verify_all(positions: Sequence[int], number: int) -> list[Probe]:
        shas = [good_c if i < 0 else commits[i] for i in positions]
        first = 0
        if progress:  # later: the probes of the rounds the candidates left may still take
            left = len(search.candidates())
            rounds = rounds_bound(left, executor.slots) - (number > 0)
            first = progress.add([("good " if i < 0 else "bad " if number == 0 else
                                   f"round {number}: ") + name(i) for i in positions],
                                 later=min(left, max(0, rounds) * executor.slots))
        jobs = [SpecJob(spec, options, partial(_verify_at, c), partial(_lost, spec, options.backend), (c,))
                for c in shas]
        batch = executor.map(run_spec_job, jobs,
                             on_start=(lambda k: progress.start(first + k)) if progress else None,
                             on_done=(lambda k, v: progress.done(first + k, v)) if progress else None)
        if not batch.complete:
            raise KeyboardInterrupt
        return [_probe(c, i, number, batch.results[k]) for k, (c, i) in enumerate(zip(shas, positions))]

    def end_round(probes: list[Probe], started: float) -> None:
        out.rounds.append(Round(len(out.rounds), probes, len(search.candidates()),
                                time.perf_counter() - started))
        if on_round:
            on_round(out.rounds[-1])

    started = time.perf_counter()
    good_p, bad_p = verify_all([-1, len(commits) - 1], 0)
    if bad_p.outcome == "skip" and bad_p.verdict.status == Status.FAIL:
        bad_p = replace(bad_p, outcome="fail")   # bad is bad when it fails, for whatever reason
        out.notes.append(f"the bad commit's failure is {bad_p.reason}")
    end_round([good_p, bad_p], started)
    _check_endpoints(good_p, bad_p)
    last_fail: dict[int, Verdict] = {len(commits) - 1: bad_p.verdict}
    while not search.done:
        started = time.perf_counter()
        probes = verify_all(search.next_probes(executor.slots), len(out.rounds))
        search.learn({p.position: p.outcome for p in probes}, name)
        last_fail.update({p.position: p.verdict for p in probes if p.outcome == "fail"})
        end_round(probes, started)
    out.candidates = [commit_info(repo, commits[i]) for i in search.candidates()]
    out.verdict = last_fail[search.first_bad]
    out.notes += search.notes
    if len(out.candidates) > 1:
        out.notes.append("skipped commits stand between the last pass and the first fail: the "
                         "first bad commit is one of the candidates")
    found = out.found
    if found is not None and found.merge:
        out.notes.append(f"{found.commit[:12]} is a merge: the change came with the branch it "
                         f"merged or with the merge itself; to look inside, bisect with --good "
                         f"$(git merge-base {found.commit[:12]}^1 {found.commit[:12]}^2) "
                         f"--bad {found.commit[:12]}^2 (that merge base must pass)")
    out.duration_s = time.perf_counter() - t0
    return out


def _verify_at(commit: str, spec: Spec, options: pipeline.Options) -> Verdict:
    """The predicate: the spec's verify with its code pinned at `commit`, nothing else moved."""
    at = spec.model_copy(update={"code": spec.code.model_copy(update={"commit": commit})})
    return pipeline.verify(at, options)


def _lost(spec: Spec, backend: str, message: str | ReproError) -> Verdict:
    """A probe whose job could not finish (a cluster worker died on every try): an error."""
    return error_verdict(spec.path or spec.name or "spec", message, spec=spec, backend=backend)


def _probe(commit: str, position: int, number: int, v: Verdict) -> Probe:
    if v.status == Status.PASS:
        return Probe(commit, position, number, "pass", v)
    if v.status == Status.FAIL and v.fail_class != "nondeterministic":
        return Probe(commit, position, number, "fail", v)
    return Probe(commit, position, number, "skip", v, why(v))


def why(v: Verdict) -> str:
    """One line: why a verdict is not a pass (an error's first line, or where it failed)."""
    if v.status == Status.ERROR:
        return "cannot run: " + ((v.error.splitlines() or ["error"])[0])
    if v.status != Status.FAIL:
        return str(v.status)
    first = v.first_divergence
    where = "" if first is None else f": {first.label}" + (
        f" at step {first.first_step}" if first.first_step is not None else "")
    if v.fail_class == "nondeterministic" and v.confirmation is not None:
        return (f"nondeterministic: run again from the same pins it gives other bits (first at "
                f"{v.confirmation.first_difference})")
    return f"fail{f' ({v.fail_class})' if v.fail_class else ''}{where}"


def _check_endpoints(good: Probe, bad: Probe) -> None:
    if good.verdict.status != Status.PASS:
        raise BisectError(f"the good commit {good.commit[:12]} does not pass: {why(good.verdict)}. "
                          "Bisect needs a commit whose verify passes (the record's commit "
                          "usually does)")
    if bad.verdict.status == Status.PASS:
        raise BisectError(f"the bad commit {bad.commit[:12]} passes too: the verdict does not "
                          "change between --good and --bad")
    if bad.verdict.status != Status.FAIL:
        raise BisectError(f"the bad commit {bad.commit[:12]} does not give a verdict ({why(bad.verdict)}); "
                          "choose a --bad commit that runs and fails")


# -- git ---------------------------------------------------------------------------------------
def resolve(repo: Path, rev: str, flag: str) -> str:
    """A revision (full or short id, branch, HEAD~3) as the full commit id, or an error naming
    it."""
    proc = git(["rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}^{{commit}}"],
               repo, check=False)
    if proc.returncode != 0 or not rev.strip():
        hint = proc.stderr.strip().splitlines()[0] if proc.stderr.strip() else ""
        raise BisectError(f"{flag} {rev!r} is not a commit of {repo}"
                          + (f" ({hint})" if hint else "")
                          + "; `git log --oneline` lists them")
    return str(proc.stdout.strip())


def commit_range(repo: Path, good: str, bad: str) -> list[str]:
    """The commits after `good` up to `bad`, oldest first, along bad's first-parent line: the
    commits of that line that descend from good. A merge is one step (its branch's commits are
    not probed one by one); `git rev-list --first-parent --ancestry-path` would drop the merge
    that brought good in when good is on a merged branch, so the two lists are intersected."""
    if good == bad:
        raise BisectError(f"--good and --bad are the same commit ({good[:12]})")
    if git(["merge-base", "--is-ancestor", good, bad], repo, check=False).returncode != 0:
        raise BisectError(f"--good {good[:12]} is not an ancestor of --bad {bad[:12]}: bisect "
                          "looks for the change between an older good commit and a newer bad one")
    descend = set(git(["rev-list", "--ancestry-path", f"{good}..{bad}"], repo).stdout.split())
    line = git(["rev-list", "--first-parent", "--reverse", f"{good}..{bad}"], repo).stdout.split()
    return [c for c in line if c in descend]


def commit_info(repo: Path, commit: str) -> CommitInfo:
    subject = git(["log", "-1", "--format=%s", commit], repo).stdout.strip()
    parents = git(["rev-list", "--parents", "-n", "1", commit], repo).stdout.split()
    stat = git(["show", "--stat", "--format=", "--first-parent", commit], repo).stdout.rstrip()
    return CommitInfo(commit, subject, stat, merge=len(parents) > 2)
