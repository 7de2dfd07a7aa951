"""Parent side of fail-fast (docs/failfast.md): what the child checks as it trains, and the
comparison of a run that stopped early.

`expecting` gives a verify's `Job` the recorded metric trajectories and, per metric, the
tolerance a value must meet; `repro.child.expect` (child side) stops the run at the first value out of
it. Only a sure failure stops a run: a value out of `atol + rtol * |recorded|` (any difference in
`tolerance.mode: exact`). Under `auto` the final comparison may be bitwise (equal environments),
so a difference within tolerance does not stop the run but still fails it at the end: fail-fast
never turns a pass into a fail, it only ends a failing run sooner. Kept gradients and the
states ctx.checkpoint keeps are checked the same way when they arrive (the record's arrays for
the run's window are copied next to it, up to EXPECTED_MAX_BYTES; steps beyond the cap are
compared at the end only).

`compare_to_record` judges a stopped run against the record truncated to what the run reached: each metric
to the points the run logged, kept gradients and states to the steps it kept; final weights are
not compared.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from repro.env.fingerprint import Fingerprint
from repro.job import ExpectedArrays, ExpectedSeries, Job, Limit
from repro.verdict import Stop

if TYPE_CHECKING:
    import numpy as np

    from repro.compare import Comparison, Recorded, Tolerance
    from repro.record import MetricSeries, Record, RecordMeta
    from repro.replay import Replay
    from repro.result import RunResult
    from repro.spec import Spec


EXPECTED_FILE = "expected.npz"      # in the run's out/: the record's arrays the child checks
EXPECTED_MAX_BYTES = 256 << 20      # copied per run; later kept steps are compared at the end only


def expecting(job: Job, spec: Spec, recorded: RecordMeta | None, on: bool,
              replay: Replay | None = None, record_path: Path | None = None,
              out: Path | None = None) -> Job:
    """`job` with the record's trajectories to check as it trains (unchanged when fail-fast is
    off or there is no record yet); a replayed segment checks the steps from its start to its
    end, and ignores what the training logs before its start. With the record's directory and
    the run's out/, its kept gradients and states in that window are copied there as well."""
    if not on or recorded is None:
        return job
    lo, hi = (replay.start, replay.stop_at) if replay is not None else (0, None)
    if record_path is not None and out is not None:
        job = _expect_arrays(job, spec, recorded, record_path, out, lo, hi)
    if not recorded.metrics:
        return job
    from repro.compare import resolve_tolerance

    tolerance = spec.tolerance
    names = [n for n in (spec.record.metrics or sorted(recorded.metrics)) if n in recorded.metrics]
    exact = _bitwise_sure(tolerance.mode, recorded)
    expect = {}
    mesh = _other_mesh(job, recorded)
    for n in names:
        t = _widest(resolve_tolerance(tolerance, "metric", n, recorded.platform),
                    resolve_tolerance(tolerance, "metric", n, recorded.platform, mesh))
        limit = Limit(0.0, 0.0) if exact else Limit(t["rtol"], t["atol"])
        steps, values = recorded.metrics[n]["steps"], recorded.metrics[n]["values"]
        keep = [i for i, st in enumerate(steps) if st >= lo and (hi is None or st < hi)]
        expect[n] = ExpectedSeries(tuple(steps[i] for i in keep), tuple(values[i] for i in keep),
                                   limit, start=lo)
    return job.replace(expect=expect)


def _expect_arrays(job: Job, spec: Spec, recorded: RecordMeta, directory: Path, out: Path,
                   lo: int, hi: int | None) -> Job:
    """Copy the record's kept gradients (steps in [lo, hi)) and states (steps in (lo, hi]) into
    out/expected.npz for the child, earliest steps first, up to EXPECTED_MAX_BYTES. Raw .npy
    bytes move from arrays.npz members and state blobs (re-hashed): no numpy, no decoding."""
    import zipfile

    from repro.compare import resolve_tolerance
    from repro.record import ARRAYS_FILE
    from repro.store.recordblobs import BlobRef

    # step -> [(member name, size, read)] for each kind
    wanted: dict[tuple[int, str], list[tuple[str, int, Any]]] = {}
    source = zipfile.ZipFile(directory / ARRAYS_FILE) if recorded.arrays else None
    try:
        for key, entry in (recorded.arrays.index.items() if recorded.arrays else ()):
            parts = key.split("/")
            if parts[0] != "grads" or len(parts) < 2:
                continue
            step = int(parts[1])
            if step < lo or (hi is not None and step >= hi):
                continue
            read: Any
            if entry.sha256 is not None:   # over 1 MiB: a blob in the machine's store
                ref = BlobRef(entry.sha256, entry.size or 0, "store", directory, f"the array {key}")
                size, read = ref.size, (lambda ref=ref: ref.local().get(ref.sha256, ref.named()))
            else:
                assert source is not None
                size = source.getinfo(key + ".npy").file_size
                read = lambda n=key + ".npy", z=source: z.read(n)   # noqa: E731
            wanted.setdefault((step, "grad"), []).append((key + ".npy", size, read))
        for step in (recorded.checkpoints.steps if recorded.checkpoints else ()):
            if step > lo and (hi is None or step <= hi):
                for leaf in recorded.checkpoints.leaves(step):   # type: ignore[union-attr]
                    ref = BlobRef(leaf.sha256, leaf.size, leaf.place, directory,
                                  f"the state kept at step {step}, leaf {leaf.path}")
                    wanted.setdefault((step, "state"), []).append(
                        (f"checkpoints/{step}/{leaf.path}.npy", leaf.size,
                         lambda ref=ref: ref.local().get(ref.sha256, ref.named())))
        steps: dict[str, list[int]] = {"grad": [], "state": []}
        total = 0
        with zipfile.ZipFile(out / EXPECTED_FILE, "w", zipfile.ZIP_STORED) as dest:
            for (step, kind), members in sorted(wanted.items()):
                size = sum(m[1] for m in members)
                if total + size > EXPECTED_MAX_BYTES:
                    break
                total += size
                steps[kind].append(step)
                for name, _, read in members:
                    dest.writestr(name, read())
    finally:
        if source is not None:
            source.close()
    if not steps["grad"] and not steps["state"]:
        (out / EXPECTED_FILE).unlink()
        return job
    tolerance = spec.tolerance
    exact = _bitwise_sure(tolerance.mode, recorded)
    limits = {}
    kinds: tuple[Literal["grad"], Literal["state"]] = ("grad", "state")
    mesh = _other_mesh(job, recorded)
    for kind in kinds:
        t = _widest(resolve_tolerance(tolerance, kind, None, recorded.platform),
                    resolve_tolerance(tolerance, kind, None, recorded.platform, mesh))
        limits[kind] = Limit(0.0, 0.0) if exact else Limit(t["rtol"], t["atol"])
    return job.replace(expect_arrays=ExpectedArrays(EXPECTED_FILE, tuple(steps["grad"]),
                                                    tuple(steps["state"]), limits["grad"],
                                                    limits["state"]))


def _other_mesh(job: Job, recorded: RecordMeta) -> bool:
    """Does this run use another mesh than the record's? Then the final comparison may apply
    tolerance.mesh (when the mesh is the only difference, known once the run is done), so the
    run is stopped early only beyond the wider of it and the spec's own tolerance."""
    fp = recorded.fingerprint
    return fp is not None and tuple(tuple(m) for m in (fp.mesh or ())) != tuple(
        tuple(m) for m in job.mesh)


def _widest(a: Tolerance, b: Tolerance) -> Tolerance:
    return {"rtol": max(a["rtol"], b["rtol"]), "atol": max(a["atol"], b["atol"])}


def _bitwise_sure(mode: str, recorded: RecordMeta) -> bool:
    """Will the final comparison surely be bitwise? Only under `exact`, and never for an
    imported record (no fingerprint: always within tolerance, repro/compare.py)."""
    return mode == "exact" and recorded.fingerprint is not None


@dataclass
class RecordView:
    """Part of a record — as far as a stopped run got, a segment's steps — as a
    `compare.Recorded`."""

    fingerprint: Fingerprint | None      # None: an imported record
    metrics: Mapping[str, MetricSeries]
    arrays: Mapping[str, np.ndarray]


def compare_to_record(rec: Recorded, result: RunResult, spec: Spec) -> Comparison:
    """`compare_run` of the run with its record; a stopped run with the part of it reached."""
    from repro.compare import compare_run

    names = spec.record.metrics
    recorded: Any = rec
    if result.stopped is not None:
        metrics: dict[str, MetricSeries] = {}
        for name, series in rec.metrics.items():   # a metric the run has not logged: to before the stop
            run = result.metrics.get(name)
            n = len(run["steps"]) if run else sum(1 for s in series["steps"] if s < result.stopped.step)
            if n or run:
                metrics[name] = {**series, "steps": series["steps"][:n], "values": series["values"][:n]}
        kept, reached = set(result.grad_steps), set(result.checkpoints)
        arrays = {k: a for k, a in rec.arrays.items()
                  if (k.startswith("grads/") and int(k.split("/")[1]) in kept)
                  or (k.startswith("checkpoints/") and int(k.split("/")[1]) in reached)}
        recorded = RecordView(rec.fingerprint, metrics, arrays)
        names = [n for n in (names if names is not None else sorted(set(metrics) | set(result.metrics)))
                 if n in metrics or n in result.metrics]
    return compare_run(recorded, result.metrics, result.arrays,
                       tolerance=spec.tolerance, platform_key=result.platform_key,
                       run_fingerprint=result.fingerprint, metric_names=names)


def stopped_at(rec: Record, result: RunResult) -> Stop | None:
    """Where fail-fast stopped the run, and the record's last logged step (the N of "k of N")."""
    s = result.stopped
    if s is None:
        return None
    last = max((series["steps"][-1] for series in rec.metrics.values() if series["steps"]), default=s.step)
    try:   # run.json is the child's: a non-number here is shown as unknown, never trusted
        current = s.current if isinstance(s.current, float | None) else float(s.current)
    except ValueError:
        current = None
    return Stop(step=s.step, of=last, quantity=s.quantity, why=s.why, recorded=s.recorded,
                current=current)
