"""The pure functions that decide — what changed since a record, fingerprint differences, which
CPUs a run takes, the child's environment, `Context.log`, spec discovery, the job contract, the
executor — tested directly, not only through retraining."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from repro.changes import changes_since_record
from repro.child.context import Context, GradSchedule
from repro.child.fingerprint import pick_cpus
from repro.discovery import DuplicateNameError, discover, duplicate_name_problems
from repro.engines.executor import LocalExecutor
from repro.env.fingerprint import Fingerprint
from repro.env.settings import child_environment, determinism_settings
from repro.errors import ReproError, RunError
from repro.job import ExpectedArrays, ExpectedSeries, Job, Limit, OutputFile, Outputs, RestorePoint
from repro.pins.code import CodePin
from repro.pytest_plugin import worker_slot
from repro.record import CodeInfo, RecordMeta, SpecInfo
from repro.result import platform_key
from repro.spec import parse_spec
from repro.verdict import Change, Status, set_difference

SPEC = {"repro": 1, "name": "t", "code": {"commit": "a" * 40, "entrypoint": "m:train"},
        "seeds": {"params": 0}, "config": {"lr": 0.1}}
FP = {"jax": "0.10.2", "backend": "cpu", "cpu_isa": ["avx", "avx2", "avx512f", "fma"],
      "effective_isa": "AVX512",
      "cpus": 1, "settings": {"XLA_FLAGS": "--xla_cpu_enable_fast_math=false",
                              "OMP_NUM_THREADS": "1"}, "cpu_model": "A"}


def spec_of(**changes):
    doc = {**SPEC, **changes}
    return parse_spec(doc, file="t.yaml")


def meta_of(spec, fingerprint=FP, backend="local", mode="pinned"):
    return RecordMeta(repro_version="0", created="now",
                      spec=SpecInfo(name="t", hash=spec.hash, canonical=spec.canonical, file="t"),
                      code=CodeInfo(mode=mode, commit=spec.code.commit), data={}, backend=backend,
                      platform="cpu", fingerprint=fingerprint, metrics={}, grad_steps=[])


def pin(mode="pinned", commit="a" * 40, dirty=()):
    return CodePin(mode, commit, Path("/tree"), "/repo", list(dirty))


# -- what changed since the record -------------------------------------------------------------
def test_nothing_changed_is_an_empty_list():
    spec = spec_of()
    assert changes_since_record(meta_of(spec), spec, pin(), Fingerprint.from_json(FP), "local") == []


def test_likely_causes_first_and_informational_last():
    recorded = spec_of()
    now = spec_of(seeds={"params": 5}, description="new words",
                  tolerance={"default": {"rtol": 1e-3}})
    fp = Fingerprint.from_json({**FP, "cpu_isa": ["avx", "avx2", "fma"], "effective_isa": "AVX2",
                                "cpu_model": "B"})
    changes = changes_since_record(meta_of(recorded), now, pin(), fp, "docker")
    keys = [(c.what, c.key, c.numeric) for c in changes]
    assert keys[0] == ("spec", "seeds.params", True)
    assert ("environment", "environment.effective_isa", True) in keys
    informational = [k for k in keys if not k[2]]
    assert {k[1] for k in informational} >= {"description", "tolerance.default.rtol", "backend",
                                              "environment.cpu_model", "environment.cpu_isa"}
    assert keys.index(informational[0]) > max(i for i, k in enumerate(keys) if k[2])


def test_worktree_runs_name_their_head_and_dirty_files():
    spec = spec_of()
    changes = changes_since_record(meta_of(spec), spec, pin("worktree", "b" * 40, ["x.py"]),
                                   Fingerprint.from_json(FP), "local")
    assert [c.key for c in changes] == ["code mode", "code commit (worktree HEAD)",
                                        "uncommitted changes"]


def test_fingerprint_settings_differ_key_by_key():
    a = Fingerprint.from_json(FP)
    b = Fingerprint.from_json({**FP, "settings": {**FP["settings"], "XLA_FLAGS": "--xla_cpu_max_isa=AVX2"}})
    assert a.changes(b) == [("settings.XLA_FLAGS", FP["settings"]["XLA_FLAGS"],
                             "--xla_cpu_max_isa=AVX2", True)]
    assert a.changes(Fingerprint.from_json({**FP, "cpu_model": "B"})) == [("cpu_model", "A", "B", False)]


def test_a_changed_cpu_isa_reads_as_lost_and_gained():
    text = Change("environment", "environment.cpu_isa", ["avx", "avx512bw", "avx512f"],
                  ["avx"]).text()
    assert text == "environment.cpu_isa: -avx512bw -avx512f +none"
    assert set_difference(["a"], ["a", "b"]) == "-none +b"
    assert set_difference(["a", "b"], ["b", "a"]) == "same items, other order"


# -- CPUs, environment, the job ----------------------------------------------------------------
def test_cpu_slots_take_different_cores_and_too_many_is_an_error():
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) >= 2:
        assert pick_cpus(1, 0) != pick_cpus(1, 1)
        assert pick_cpus(1, 0) == pick_cpus(1, len(allowed))   # wraps around
    assert len(pick_cpus(len(allowed), 3)) == len(allowed)
    with pytest.raises(RuntimeError, match="environment.cpus is"):
        pick_cpus(len(allowed) + 1)


def test_child_environment_is_built_from_scratch():
    settings = determinism_settings(spec_of(environment={"cpus": 2, "xla_flags": ["--x=1"],
                                                         "isa": "native"}).environment)
    inherited = {"PATH": "/bin", "HOME": "/h", "XLA_FLAGS": "--evil", "JAX_ENABLE_X64": "1",
                 "OMP_NUM_THREADS": "8", "AWS_SECRET_ACCESS_KEY": "s", "LD_PRELOAD": "/x.so"}
    env, dropped = child_environment(settings, ["/shim"], inherited)
    assert env["PATH"] == "/bin" and env["PYTHONPATH"] == "/shim"
    assert env["XLA_FLAGS"] == "--xla_cpu_enable_fast_math=false --x=1"
    assert env["JAX_ENABLE_X64"] == "0" and env["OMP_NUM_THREADS"] == "2"
    assert "AWS_SECRET_ACCESS_KEY" not in env and "LD_PRELOAD" not in env
    assert dropped == ["JAX_ENABLE_X64", "OMP_NUM_THREADS", "XLA_FLAGS"]


def test_job_round_trips_through_its_file(tmp_path):
    job = Job(spec="t", entrypoint="m:train", tree="/tree", data={"xy": "/d/xy.npz"},
              seeds={"params": 0}, config={"lr": 0.1, "layers": [2, 3]}, settings={"A": "1"},
              cpus=1, grads_every=4, grads_steps=(1, 2))
    job.write(tmp_path / "job.json")
    assert Job.read(tmp_path / "job.json") == job
    moved = job.replace(tree="/work/code")
    assert moved.tree == "/work/code" and job.tree == "/tree"
    # the typed parts (fail-fast expectations, a replay's restore point, a script's outputs)
    # come back as the same frozen dataclasses, not as the dicts job.json holds
    limit = Limit(1e-5, 0.0)
    parts = job.replace(
        expect={"loss": ExpectedSeries((0, 10), (1.0, "nan"), limit, start=10)},
        expect_arrays=ExpectedArrays("expected.npz", (4,), (8, 12), limit, Limit(0.0, 0.0)),
        restore=RestorePoint(8, "restore.npz", (("params/w", "float", False),)),
        outputs=Outputs(metrics=OutputFile("m.jsonl", "jsonl")), command=("python", "t.py"))
    parts.write(tmp_path / "parts.json")
    back = Job.read(tmp_path / "parts.json")
    assert back == parts and isinstance(back.expect["loss"], ExpectedSeries)
    assert isinstance(back.restore, RestorePoint) and back.outputs.weights is None
    (tmp_path / "old.json").write_text('{"spec": "t"}')
    with pytest.raises(ValueError, match="not a job of format"):
        Job.read(tmp_path / "old.json")


def test_platform_key_only_from_known_backends():
    assert platform_key("cpu") == "cpu" and platform_key("cuda") == "gpu"
    for bad in ("/etc", "../x", "", None, 3, "cpu/../x"):
        with pytest.raises(RunError, match="not taken as a platform key"):
            platform_key(bad)


def test_xdist_worker_slots():
    assert [worker_slot(w) for w in ("gw0", "gw7", "master", "", "gwx")] == [0, 7, None, None,
                                                                              None]


def test_exit_codes_mean_one_thing_each():
    # pass fail error recorded ran skipped (a GPU spec where there is none: docs/gpu.md)
    assert [s.exit_code for s in Status] == [0, 1, 2, 0, 0, 0]


# -- Context.log -------------------------------------------------------------------------------
def test_context_log_keeps_dtype_steps_and_nonfinite_values():
    ctx = Context(seeds={"a": 1}, data={}, config={}, grad_steps=GradSchedule(every=2))
    ctx.log(0, loss=np.float32(0.5), acc=1)
    ctx.log(1, loss=float("nan"))
    assert ctx.metrics["loss"] == {"steps": [0, 1], "values": [0.5, ctx.metrics["loss"]
                                                                  ["values"][1]],
                                   "dtype": "float32"}
    assert ctx.nonfinite[0][:2] == ("loss", 1)
    with pytest.raises(ValueError, match="does not follow step 1"):
        ctx.log(1, loss=0.1)
    with pytest.raises(ValueError, match="expected a scalar"):
        ctx.log(2, loss=np.zeros(3))
    with pytest.raises(TypeError, match="not numeric"):
        ctx.log(2, loss="high")
    with pytest.raises(KeyError, match="seed 'b' is not in the spec's seeds"):
        ctx.seed("b")


def test_grad_schedule_keeps_every_n_and_listed_steps():
    sched = GradSchedule(every=5, steps=[3])
    assert [s for s in range(12) if sched.keeps(s)] == [0, 3, 5, 10]
    assert not GradSchedule().keeps(0)


# -- discovery ---------------------------------------------------------------------------------
def _write_spec(path: Path, name: str | None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "repro: 1\n" + (f"name: {name}\n" if name else "")
    path.write_text(text + f"code: {{commit: {'a' * 40}, entrypoint: 'm:f'}}\n")
    return path


def test_duplicate_names_are_refused_for_the_later_files(tmp_path):
    first = _write_spec(tmp_path / "specs" / "a.yaml", "same")
    second = _write_spec(tmp_path / "specs" / "b.yaml", "same")
    third = _write_spec(tmp_path / "specs" / "same.yaml", None)   # its stem names it
    other = _write_spec(tmp_path / "specs" / "c.yaml", "other")
    found = {f.path: f for f in discover([tmp_path / "specs"])}
    assert found[first].problem is None and found[other].problem is None
    for path in (second, third):
        assert isinstance(found[path].problem, DuplicateNameError)
        assert str(first) in str(found[path].problem)
    # the same file named twice is not a duplicate
    assert duplicate_name_problems([(first, "x"), (first, "x")]) == {}


def test_discovery_keeps_a_broken_spec_as_its_problem(tmp_path):
    (tmp_path / "bad.yaml").write_text("repro: 1\ncode: [\n")
    (found,) = discover([tmp_path / "bad.yaml"])
    assert found.spec is None and "bad.yaml" in str(found.problem)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReproError, match="no spec files"):
        discover([tmp_path / "empty"])


# -- the local executor ------------------------------------------------------------------------
def test_local_executor_runs_n_at_a_time_on_distinct_slots():
    running: set[int] = set()
    seen_together: list[set[int]] = []
    lock = threading.Lock()

    def work(item: int, slot: int) -> tuple[int, int]:
        with lock:
            assert slot not in running, "two items on one slot"
            running.add(slot)
            seen_together.append(set(running))
        time.sleep(0.05)
        with lock:
            running.discard(slot)
        return item * 10, slot

    done = []
    batch = LocalExecutor(2).map(work, list(range(6)), on_done=lambda i, r: done.append(i))
    assert batch.complete and sorted(done) == list(range(6))
    assert [batch.results[i][0] for i in range(6)] == [0, 10, 20, 30, 40, 50]
    assert {r[1] for r in batch.results.values()} == {0, 1}
    assert max(len(s) for s in seen_together) == 2
