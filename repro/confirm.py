"""Nondeterministic or changed: what a failed verify was, decided by running again.

A verify fails. When "what changed since the record" names a pin, a spec key or an environment
fact that decides the numbers, the failure is `changed` and that list is the evidence. When it
names nothing, a guess will not do: the spec runs again (`--confirm N`, default 1) and the runs
are compared with each other, bitwise. If they differ, the training is `nondeterministic` (the
verdict says where they parted). If they agree, the training is deterministic and its result
moved anyway: an input that no pin covers changed, and the verdict names the candidates the
runner saw — files read outside the code tree and `data:` whose content differs from the
record's, variables and facts outside the fingerprint.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from repro.errors import ReproError
from repro.noise import compare_reached, first_difference
from repro.verdict import Confirmation, Verdict

if TYPE_CHECKING:
    from repro.record import UnpinnedInputs
    from repro.result import RunResult
    from repro.spec import Spec


def classify(v: Verdict, spec: Spec, first: RunResult, rerun: Callable[[], RunResult],
             confirm: int, recorded: UnpinnedInputs | None, varied: tuple[str, ...] = ()) -> None:
    """Set `v.fail_class` (and `v.confirmation`) for a failed verify.

    `varied`: spec keys the caller changed on purpose (`repro bisect` moves `code.commit`). Their
    change is what is being tested, not evidence of a class, so the reruns decide."""
    if any(c.numeric and c.key not in varied for c in v.changes):
        v.fail_class = "changed"   # the evidence is the change list itself
        return
    if confirm <= 0:
        v.notes.append("not confirmed (--confirm 0): rerun with --confirm 1 to tell a "
                       "nondeterministic training from an input no pin covers")
        return
    for n in range(1, confirm + 1):
        try:
            again = rerun()
        except ReproError as exc:
            v.notes.append(f"the confirmation run failed, so the failure is not classified: {exc}")
            return
        cmp = compare_reached(first, again, spec)   # a value that differs, on steps both reached
        where = first_difference(cmp)
        if where is not None:
            step = f", step {where.first_step}" if where.first_step is not None else ""
            v.fail_class = "nondeterministic"
            v.confirmation = Confirmation(
                runs=n, agree=False,
                first_difference=f"{where.label}{step} (max abs {where.max_abs:.3g})")
            return
    v.fail_class = "changed"
    if any(c.numeric for c in v.changes):   # only a varied key moved: it is the change
        v.notes.append(f"{confirm} more run(s) from the same pins gave the same bits: the training "
                       "is deterministic")
        return
    found, unknown = candidates(recorded, first.inputs)
    v.confirmation = Confirmation(runs=confirm, agree=True, candidates=found, unknown=unknown)


def candidates(recorded: UnpinnedInputs | None, current: UnpinnedInputs | None
               ) -> tuple[list[str], list[str]]:
    """(candidates, not known to the record). Candidates are unpinned inputs the record kept
    and that differ now, strongest first: files whose content changed, then environment values
    that moved. A file the record has no hash for (read now only, or a record made before repro
    kept its run's inputs) is not known to the record: listed apart, never a likely cause."""
    if current is None:
        return [], []
    if recorded is None:   # a record made before repro kept its run's inputs
        return [], [f"file {p} (the record keeps no list of what its run read)"
                    for p in sorted(current.files)]
    out = []
    for path in sorted(set(recorded.files) & set(current.files)):
        was, now = recorded.files[path], current.files[path]
        if was != now:
            out.append(f"file {path} is read by the training, is not under data:, and changed "
                       f"since the record ({_short(was)} -> {_short(now)})")
    for key in sorted(set(recorded.env) | set(current.env)):
        was_env, now_env = recorded.env.get(key), current.env.get(key)
        if was_env != now_env and key != "hostname":
            out.append(f"environment {key}: {was_env!r} -> {now_env!r} (not in the fingerprint)")
    if recorded.env.get("hostname") != current.env.get("hostname"):
        out.append(f"the host: {recorded.env.get('hostname')!r} -> {current.env.get('hostname')!r}")
    unknown = [f"file {p} is read now, was not when recorded (not under data:)"
               for p in sorted(set(current.files) - set(recorded.files))]
    unknown += [f"file {p} was read when recorded, not now (not under data:)"
                for p in sorted(set(recorded.files) - set(current.files))]
    return out, unknown


def _short(description: str) -> str:
    kind, _, value = description.partition(":")
    return f"{kind} {value[:12]}…" if kind == "sha256" else description
