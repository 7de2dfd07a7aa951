"""Fail-fast (docs/failfast.md): a verify stops at the first step a metric is sure to fail,
says where, and a passing verify is unchanged. Real runs of the tiny project, 1000 steps."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import Project, build_project

UPDATE = "params = jax.tree_util.tree_map(lambda a, b: a - lr * b, params, g)"
DIVERGED = "params = jax.tree_util.tree_map(lambda a, b: a - lr * (1 + 1e-2 * (step >= 10)) * b, params, g)"


@pytest.fixture(scope="module")
def long_recorded(tmp_path_factory) -> Project:
    """The tiny project trained for 1000 steps, recorded and committed (copy it; do not change it)."""
    p = build_project(tmp_path_factory.mktemp("ff") / "proj")
    p.edit_spec("steps: 12", "steps: 1000")
    p.commit("1000 steps")
    p.repro("record", "specs/tiny.yaml", check_rc=0)
    p.commit("record tiny")
    return p


@pytest.fixture(scope="module")
def diverged(long_recorded, tmp_path_factory) -> Project:
    """A copy whose code changes the lr from step 10 on (the loss differs from step 11)."""
    p = Project(tmp_path_factory.mktemp("ffdiv") / "proj")
    shutil.copytree(long_recorded.root, p.root)
    train = p.root / "tinyproj" / "train.py"
    text = train.read_text()
    assert UPDATE in text
    train.write_text(text.replace(UPDATE, DIVERGED))
    p.commit("lr up by 1% from step 10")
    p.repro("pin", str(p.spec), check_rc=0)
    p.commit("pin")
    return p


@pytest.mark.slow
def test_a_clean_verify_passes_bitwise_with_fail_fast_on(long_recorded):
    out = long_recorded.repro("verify", "specs/tiny.yaml", "--no-stream", check_rc=0).stdout
    assert "PASS tiny" in out and "bitwise identical" in out and "stopped" not in out


def test_verify_stops_by_step_11_and_says_so(diverged):
    proc = diverged.repro("verify", "specs/tiny.yaml", "--no-stream", check_rc=1)
    out = proc.stdout
    assert "stopped at step 11 of 999 (fail-fast)" in out, out
    assert "metric loss out of tolerance (recorded" in out
    assert "first: metric loss at step 11" in out
    assert "later steps, later gradients and the final weights were not compared" in out


@pytest.mark.slow
def test_no_fail_fast_runs_to_the_end_with_the_same_first_divergence(diverged):
    out = diverged.repro("verify", "specs/tiny.yaml", "--no-stream", "--no-fail-fast", check_rc=1).stdout
    assert "stopped" not in out, out
    assert "first: metric loss at step 11" in out
    assert "weights" in out   # the final weights were compared (and differ)


def test_audit_runs_to_the_end_by_default_and_stops_with_fail_fast(diverged, tmp_path):
    full, fast = tmp_path / "full.json", tmp_path / "fast.json"
    diverged.repro("audit", "specs", "--no-stream", "--json", str(full), check_rc=1)
    diverged.repro("audit", "specs", "--no-stream", "--fail-fast", "--json", str(fast),
                   "--report", str(tmp_path / "r.html"), check_rc=1)
    assert "stopped at step 11 of 999 (fail-fast)" in (tmp_path / "r.html").read_text()
    (a,), (b,) = json.loads(full.read_text())["results"], json.loads(fast.read_text())["results"]
    assert a["stopped"] is None and a["first_divergence"]["step"] == 11
    assert b["stopped"]["step"] == 11 and b["stopped"]["of"] == 999
    assert b["stopped"]["quantity"] == "metric loss"
    assert b["first_divergence"] == {**a["first_divergence"], "max_abs": b["first_divergence"]["max_abs"],
                                     "max_rel": b["first_divergence"]["max_rel"]}
    assert not any(q["kind"] == "weight" for q in b["quantities"])   # not reached: not compared
    assert any(q["kind"] == "weight" for q in a["quantities"])


def test_the_child_stops_only_on_a_sure_failure():
    from repro.child.context import Context, GradSchedule
    from repro.child.expect import Expectation, Stopped
    from repro.job import ExpectedSeries, Limit

    def ctx(tol):
        rec = {"loss": ExpectedSeries((0, 1, 2), (1.0, 0.5, 0.25), Limit(*tol))}
        return Context(seeds={}, data={}, config={}, grad_steps=GradSchedule(),
                       expect=Expectation(rec))
    c = ctx([1e-3, 0.0])
    c.log(0, loss=1.0 + 1e-6, other=7.0)   # within rtol: no stop (a bitwise verify still fails)
    with pytest.raises(Stopped) as stop:
        c.log(1, loss=0.6)
    assert stop.value.info["step"] == 1 and stop.value.info["quantity"] == "metric loss"
    assert c.metrics["loss"]["values"] == [1.0 + 1e-6, 0.6]   # the value is logged before stopping
    with pytest.raises(Stopped):
        ctx([0.0, 0.0]).log(0, loss=1.0 + 1e-12)   # exact: any difference
    with pytest.raises(Stopped) as stop:
        ctx([1.0, 1.0]).log(5, loss=1.0)            # a step the record does not have there
    assert "the record has step 0" in stop.value.info["why"]
    with pytest.raises(Stopped):
        ctx([1.0, 1.0]).log(0, loss=float("nan"))


def test_a_gradient_out_of_tolerance_stops_the_run_when_it_is_kept(diverged, tmp_path):
    """The loss may drift (its tolerance is loose here); the gradients kept at step 12 may not."""
    p = Project(tmp_path / "proj")
    shutil.copytree(diverged.root, p.root)
    p.edit_spec("record:", "tolerance:\n  metrics: {loss: {rtol: 1.0}}\nrecord:")
    p.commit("a loose loss tolerance")
    out = p.repro("verify", "specs/tiny.yaml", "--no-stream", check_rc=1).stdout
    assert "stopped at step 12 of 999 (fail-fast): grad " in out, out
    assert "out of tolerance at element" in out
    assert "first: metric loss at step 11" in out   # the final comparison is bitwise (same host)


def test_the_child_checks_kept_arrays_only_on_a_sure_failure(tmp_path):
    from repro.child.expect import ArrayExpectation

    path = tmp_path / "expected.npz"
    w = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    np.savez(path, **{"grads/4/w": w, "grads/4/n": np.array([3, 4]), "checkpoints/8/count": np.int32(8),
                      "checkpoints/8/w": w})

    def expect(tol):
        return ArrayExpectation(str(path), [4], [8], {"grad": tol, "state": tol})
    close = expect([1e-3, 0.0])
    assert close.check("grad", 4, {"w": w * (1 + 1e-5), "n": np.array([3, 4])}) is None
    assert close.check("grad", 5, {"w": w * 2}) is None          # a step not kept: not checked
    stop = close.check("grad", 4, {"w": w * 1.01, "n": np.array([3, 4])})
    assert stop and stop["quantity"] == "grad w" and stop["step"] == 4
    assert "out of tolerance at element 0 (6 of 6 elements)" in stop["why"]
    assert stop["recorded"] == -1.0 and stop["current"] == pytest.approx(-1.01)
    assert "exact" in close.check("grad", 4, {"w": w, "n": np.array([3, 5])})["why"]   # ints: exact
    assert close.check("grad", 4, {"w": w})["why"] == "is in the record but not in the run"
    assert close.check("grad", 4, {"w": w, "n": np.array([3, 4]), "x": w})["quantity"] == "grad x"
    assert "shape [3, 2]" in close.check("grad", 4, {"w": w.T, "n": np.array([3, 4])})["why"]
    exact = expect([0.0, 0.0])
    assert exact.check("state", 8, {"count": np.int32(8), "w": w}) is None
    stop = exact.check("state", 8, {"count": np.int32(8), "w": np.nextafter(w, np.float32(2))})
    assert stop and stop["quantity"] == "state w" and "not bitwise equal" in stop["why"]
    assert "dtype int64" in exact.check("state", 8, {"count": np.int64(8), "w": w})["why"]
    nan = np.full((2, 3), np.nan, np.float32)
    np.savez(path, **{"grads/4/w": nan})
    assert expect([0.0, 0.0]).check("grad", 4, {"w": nan}) is None   # equal NaNs agree
    assert expect([1e-3, 0.0]).check("grad", 4, {"w": w}) is not None
