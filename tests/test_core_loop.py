"""The core loop end to end: record, verify, and every cause of divergence the issue names,
each retraining a real JAX model from a real git repository."""
from __future__ import annotations

import numpy as np
import pytest

from repro import pipeline
from repro.record import read_record
from tests.conftest import write_data


def test_record_then_verify_twice_is_bitwise(project):
    recorded = pipeline.record(project.spec)
    assert recorded.status == "recorded", recorded.error
    rec = read_record(project.record_dir)
    assert set(rec.arrays) >= {"weights/hidden/w", "weights/out/b", "grads/0/hidden/w",
                               "grads/8/out/w"}
    assert rec.meta.metrics["loss"]["steps"] == list(range(12))
    for _ in range(2):
        v = pipeline.verify(project.spec)
        assert v.status == "pass", v.error
        assert v.bitwise is True
        assert all(r.max_abs == 0 and r.n_out == 0 for r in v.rows)
        assert {r.kind for r in v.rows} == {"metric", "grad", "weight"}


def test_changed_seed_is_caught_and_named(project):
    project.repro("record", str(project.spec), check_rc=0)
    project.edit_spec("seeds: {params: 0}", "seeds: {params: 3}")
    proc = project.repro("verify", str(project.spec), check_rc=1)
    assert "FAIL tiny" in proc.stdout
    assert "seeds.params: 0 -> 3" in proc.stdout
    assert "first: metric loss at step 0" in proc.stdout


def test_new_commit_scaling_lr_is_caught_after_pin(project):
    assert pipeline.record(project.spec).status == "recorded"
    train = project.root / "tinyproj" / "train.py"
    train.write_text(train.read_text().replace("LR_SCALE = 1.0", "LR_SCALE = 1.0 + 1e-4"))
    new = project.commit("scale lr by 1+1e-4")
    project.repro("pin", str(project.spec), check_rc=0)
    assert new in project.spec.read_text()
    v = pipeline.verify(project.spec)
    assert v.status == "fail"
    keys = [c.key for c in v.changes]
    assert "code.commit" in keys and keys[0] == "code.commit"
    assert v.changes[0].detail == "1 file(s) differ: tinyproj/train.py"
    first = v.first_divergence
    # the first step's loss is computed before any update: the lr change shows from step 1 on
    assert first.first_step == 1 and first.kind == "metric"


@pytest.mark.slow
def test_changed_data_value_is_caught_after_repin(project):
    assert pipeline.record(project.spec).status == "recorded"
    with np.load(project.data) as d:
        x, y = d["x"].copy(), d["y"].copy()
    x[3, 2] += 0.25
    with open(project.data, "wb") as f:
        np.savez(f, x=x, y=y)
    project.repro("pin", str(project.spec), check_rc=0)
    v = pipeline.verify(project.spec)
    assert v.status == "fail"
    assert any(c.key == "data.xy.sha256" and c.what == "data" for c in v.changes)


@pytest.mark.slow
def test_a_commit_that_changes_only_pinned_data_is_not_named_as_the_cause(project):
    """Data committed in the repo moves code.commit too; the data pin is the cause, and the
    commit is shown as informational with the files it changed."""
    assert pipeline.record(project.spec).status == "recorded"
    with np.load(project.data) as d:
        x, y = d["x"].copy(), d["y"].copy()
    x[[3, 4]] = x[[4, 3]]
    with open(project.data, "wb") as f:
        np.savez(f, x=x, y=y)
    project.commit("swap two rows")
    project.repro("pin", str(project.spec), check_rc=0)
    v = pipeline.verify(project.spec)
    assert v.status == "fail" and v.fail_class == "changed"
    numeric = [c.key for c in v.changes if c.numeric]
    assert numeric == ["data.xy.sha256"], v.changes
    commit = next(c for c in v.changes if c.key == "code.commit")
    assert not commit.numeric, commit
    assert commit.detail.startswith("only files pinned elsewhere differ: data/xy.npz")


def test_flipped_byte_without_repin_is_an_error_before_training(project):
    assert pipeline.record(project.spec).status == "recorded"
    raw = bytearray(project.data.read_bytes())
    raw[-100] ^= 0x01
    project.data.write_bytes(bytes(raw))
    proc = project.repro("verify", str(project.spec), check_rc=2)
    assert "data 'xy': data/xy.npz" in proc.stdout
    assert "content changed" in proc.stdout
    assert "repro pin" in proc.stdout
    assert "training took" not in proc.stdout
    v = pipeline.verify(project.spec)
    assert v.status == "error" and not v.timings  # nothing ran


@pytest.mark.slow
def test_old_pinned_commit_reproduces_after_head_moves_on(project):
    assert pipeline.record(project.spec).status == "recorded"
    train = project.root / "tinyproj" / "train.py"
    train.write_text(train.read_text().replace("LR_SCALE = 1.0", "LR_SCALE = 3.0"))
    project.write("tinyproj/extra.py", "raise RuntimeError('HEAD-only module')\n")
    project.commit("moves on")
    v = pipeline.verify(project.spec)
    assert v.status == "pass" and v.bitwise
    # ... and the working tree, which has moved on, does not reproduce
    wt = pipeline.verify(project.spec, pipeline.Options(code="worktree"))
    assert wt.status == "fail"
    assert any(c.key == "code mode" for c in wt.changes)


def test_missing_record_is_an_error_that_says_how_to_record(project):
    v = pipeline.verify(project.spec)
    assert v.status == "error"
    assert "no recorded version" in v.error and "repro record" in v.error


@pytest.mark.slow
def test_data_from_another_seed_changes_results_only_when_repinned(project):
    """Sanity of the fixture itself: different data really does change training."""
    assert pipeline.record(project.spec).status == "recorded"
    write_data(project.data, seed=1)
    project.repro("pin", str(project.spec), check_rc=0)
    assert pipeline.verify(project.spec).status == "fail"
