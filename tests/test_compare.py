"""The pure comparison functions of `repro.compare`: tolerance layering, array comparison
(bitwise and close, NaN/inf, shapes, dtypes, first diverging step), whole-run comparison and the
choice between bitwise and close."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from repro.compare import choose_bitwise, compare_arrays, compare_run, resolve_tolerance
from repro.env.fingerprint import NUMERIC_FIELDS, Fingerprint
from repro.spec import ToleranceSpec, parse_spec

# the tolerance block of docs/spec.md, through the spec model (typed: unset fields are None)
TOLERANCE_YAML = {
    "mode": "auto",
    "default": {"rtol": 1.0e-6, "atol": 1.0e-8},
    "metrics": {"loss": {"rtol": 1.0e-5}},
    "grads": {"rtol": 1.0e-4, "atol": 1.0e-7},
    "weights": {"rtol": 1.0e-5, "atol": 1.0e-7},
    "platforms": {"gpu": {"rtol": 1.0e-3, "atol": 1.0e-5}},
}


def canonical_tolerance(tol: dict) -> ToleranceSpec:
    spec = parse_spec({"repro": 1, "code": {"commit": "a" * 40, "entrypoint": "zoo.mlp:train"},
                       "record": {"metrics": ["loss", "accuracy"]}, "tolerance": tol},
                      file="t.yaml")
    return spec.tolerance


TOL = canonical_tolerance(TOLERANCE_YAML)
EXACT = {"rtol": 0.0, "atol": 0.0}
T = {"rtol": 1e-6, "atol": 1e-8}


# -- tolerance layering ------------------------------------------------------------------------
@pytest.mark.parametrize("kind, name, platform, expected", [
    ("metric", "loss", "cpu", {"rtol": 1e-5, "atol": 1e-8}),       # quantity rtol, default atol
    ("metric", "accuracy", "cpu", {"rtol": 1e-6, "atol": 1e-8}),   # default only
    ("grad", None, "cpu", {"rtol": 1e-4, "atol": 1e-7}),
    ("weight", None, "cpu", {"rtol": 1e-5, "atol": 1e-7}),
    ("metric", "loss", "gpu", {"rtol": 1e-3, "atol": 1e-5}),       # platform beats quantity
    ("grad", None, "gpu", {"rtol": 1e-3, "atol": 1e-5}),
    ("weight", None, "gpu", {"rtol": 1e-3, "atol": 1e-5}),
    ("weight", None, "tpu", {"rtol": 1e-5, "atol": 1e-7}),         # no such platform block
])
def test_tolerance_layers_from_the_interface_example(kind, name, platform, expected):
    assert resolve_tolerance(TOL, kind, name, platform) == expected


def test_tolerance_fields_override_one_by_one():
    tol = canonical_tolerance({
        "default": {"rtol": 1e-6, "atol": 1e-8},
        "grads": {"atol": 1e-7},                                   # rtol still the default's
        "platforms": {
            "gpu": {"rtol": 1e-3},                                 # atol from below
            "tpu": {"rtol": 1e-3, "default": {"rtol": 1e-2}, "grads": {"rtol": 0.5}},
        },
    })
    assert resolve_tolerance(tol, "grad", None, "cpu") == {"rtol": 1e-6, "atol": 1e-7}
    assert resolve_tolerance(tol, "grad", None, "gpu") == {"rtol": 1e-3, "atol": 1e-7}
    assert resolve_tolerance(tol, "weight", None, "gpu") == {"rtol": 1e-3, "atol": 1e-8}
    # inside a platform block: its rtol/atol < its default < its quantity block
    assert resolve_tolerance(tol, "weight", None, "tpu") == {"rtol": 1e-2, "atol": 1e-8}
    assert resolve_tolerance(tol, "grad", None, "tpu") == {"rtol": 0.5, "atol": 1e-7}


def test_tolerance_builtin_fallback_and_zero():
    assert resolve_tolerance(ToleranceSpec(), "metric", "loss", "cpu") == {"rtol": 1e-6, "atol": 1e-8}
    assert resolve_tolerance(canonical_tolerance({}), "grad", None, "cpu") == \
        {"rtol": 1e-6, "atol": 1e-8}
    zero = canonical_tolerance({"weights": {"rtol": 0.0, "atol": 0.0}})
    assert resolve_tolerance(zero, "weight", None, "cpu") == {"rtol": 0.0, "atol": 0.0}  # 0 is set
    per_metric = canonical_tolerance({"metrics": {"loss": {"atol": 0.1}}})
    assert resolve_tolerance(per_metric, "metric", "loss", "cpu") == {"rtol": 1e-6, "atol": 0.1}
    assert resolve_tolerance(per_metric, "metric", "acc", "cpu") == {"rtol": 1e-6, "atol": 1e-8}


# -- compare_arrays ----------------------------------------------------------------------------
def test_identical_arrays_are_bitwise_equal():
    a = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    row = compare_arrays("weight", "w", a, a.copy(), bitwise=True, tol=T)
    assert (row.ok, row.n_out, row.n_total, row.max_abs, row.max_rel) == (True, 0, 12, 0.0, 0.0)
    assert row.first_step is None and row.note == "" and row.bitwise


def test_one_ulp_is_out_bitwise_and_in_close():
    a = np.linspace(0.5, 2, 8, dtype=np.float32)
    b = a.copy()
    b[5] = np.nextafter(b[5], np.float32(3))
    exact = compare_arrays("weight", "w", a, b, bitwise=True, tol=T)
    assert (exact.ok, exact.n_out) == (False, 1)
    assert exact.max_abs == pytest.approx(float(b[5]) - float(a[5]))
    close = compare_arrays("weight", "w", a, b, bitwise=False, tol={"rtol": 1e-6, "atol": 0.0})
    assert (close.ok, close.n_out) == (True, 0)
    assert close.max_rel == pytest.approx((float(b[5]) - float(a[5])) / float(a[5]))


def test_signed_zero_differs_bitwise_only():
    a, b = np.array([0.0, 1.0]), np.array([-0.0, 1.0])
    assert compare_arrays("weight", "w", a, b, bitwise=True, tol=T).n_out == 1
    assert compare_arrays("weight", "w", a, b, bitwise=False, tol=EXACT).ok


def test_close_uses_atol_plus_rtol_times_record():
    rec = np.array([0.0, 1.0, 100.0, -100.0])
    tol = {"rtol": 1e-2, "atol": 1e-3}
    inside = rec + np.array([0.9e-3, 0.9e-3 + 0.9e-2, 0.9, -0.9])
    row = compare_arrays("grad", "g", rec, inside, bitwise=False, tol=tol)
    assert row.ok and row.n_out == 0
    outside = rec + np.array([1.1e-3, 0.0, 1.1, 0.0])  # 1.1 > 1e-3 + 1e-2 * 100
    row = compare_arrays("grad", "g", rec, outside, bitwise=False, tol=tol)
    assert (row.ok, row.n_out) == (False, 2)
    assert row.max_abs == pytest.approx(1.1)
    assert math.isinf(row.max_rel)  # 1.1e-3 against a recorded 0
    assert (row.rtol, row.atol) == (1e-2, 1e-3) and row.tolerance_text == "rtol=0.01 atol=0.001"


def test_tolerance_is_relative_to_the_record():
    rec, run = np.array([1.0]), np.array([2.0])  # |d| = 1: rtol 0.6 of 1 < 1; of 2 would pass
    assert not compare_arrays("weight", "w", rec, run, bitwise=False,
                              tol={"rtol": 0.6, "atol": 0.0}).ok
    assert compare_arrays("weight", "w", run, rec, bitwise=False, tol={"rtol": 0.6, "atol": 0.0}).ok


def test_max_abs_and_max_rel():
    rec = np.array([1.0, 2.0, 4.0, -8.0])
    run = np.array([1.0, 2.5, 4.0, -9.0])
    row = compare_arrays("weight", "w", rec, run, bitwise=False, tol=T)
    assert (row.max_abs, row.max_rel, row.n_out, row.n_total) == (1.0, 0.25, 2, 4)


def test_first_diverging_step():
    steps = [0, 4, 8, 12, 16]
    rec = np.ones((5, 2, 3))
    run = rec.copy()
    run[3, 1, 2] += 1.0
    run[4, 0, 0] += 1.0
    row = compare_arrays("grad", "g", rec, run, bitwise=False, tol=T, steps=steps)
    assert (row.ok, row.first_step, row.n_out) == (False, 12, 2)
    row = compare_arrays("grad", "g", rec, run, bitwise=True, tol=T, steps=steps)
    assert row.first_step == 12
    assert compare_arrays("grad", "g", rec, rec, bitwise=True, tol=T, steps=steps).first_step is None
    assert compare_arrays("weight", "w", rec, run, bitwise=True, tol=T).first_step is None  # no steps


def test_nan_equal_to_nan_and_nan_against_a_number_is_out():
    rec = np.array([np.nan, 1.0, np.nan])
    assert compare_arrays("metric", "m", rec, rec.copy(), bitwise=False, tol=EXACT).ok
    assert compare_arrays("metric", "m", rec, rec.copy(), bitwise=True, tol=T).ok
    run = np.array([np.nan, 1.0, 2.0])
    row = compare_arrays("metric", "m", rec, run, bitwise=False, tol={"rtol": 1e9, "atol": 1e9},
                         steps=[10, 20, 30])
    assert (row.ok, row.n_out, row.first_step) == (False, 1, 30)
    assert math.isinf(row.max_abs) and math.isinf(row.max_rel)
    row = compare_arrays("metric", "m", run, rec, bitwise=False, tol={"rtol": 1e9, "atol": 1e9})
    assert (row.ok, row.n_out) == (False, 1) and math.isinf(row.max_abs)


def test_infinities():
    rec = np.array([np.inf, -np.inf, 1.0])
    assert compare_arrays("metric", "m", rec, rec.copy(), bitwise=False, tol=EXACT).ok
    for bad in ([-np.inf, -np.inf, 1.0], [1e308, -np.inf, 1.0], [np.inf, -np.inf, np.inf],
                [np.nan, -np.inf, 1.0]):
        row = compare_arrays("metric", "m", rec, np.array(bad), bitwise=False,
                             tol={"rtol": 1.0, "atol": 1e300})
        assert (row.ok, row.n_out) == (False, 1), bad
        assert math.isinf(row.max_abs) and not math.isnan(row.max_rel), bad


def test_nan_payloads_count_bitwise():
    quiet = np.array([0x7FC00000], dtype=np.uint32).view(np.float32)
    other = np.array([0x7FC00001], dtype=np.uint32).view(np.float32)
    assert np.isnan(quiet[0]) and np.isnan(other[0])
    assert compare_arrays("weight", "w", quiet, other, bitwise=True, tol=T).n_out == 1
    assert compare_arrays("weight", "w", quiet, other, bitwise=False, tol=EXACT).ok


def test_shape_mismatch_is_a_note():
    row = compare_arrays("weight", "dense/kernel", np.zeros((3, 2)), np.zeros((2, 3)),
                         bitwise=False, tol=T)
    assert not row.ok and row.note == "shape (2, 3) != recorded (3, 2)"
    assert row.n_total == 6


def test_dtype_mismatch_bitwise_is_a_note_close_compares_values():
    rec, run = np.array([0.5, 1.5], np.float32), np.array([0.5, 1.5], np.float64)
    row = compare_arrays("weight", "w", rec, run, bitwise=True, tol=T)
    assert not row.ok and row.note == "dtype float64 != recorded float32"
    row = compare_arrays("weight", "w", rec, run, bitwise=False, tol=EXACT)
    assert row.ok and row.note == ""
    row = compare_arrays("weight", "w", rec, np.array([0.5, 1.6]), bitwise=False, tol=T)
    assert row.n_out == 1


def test_integer_bool_complex_and_string_arrays():
    ints = np.array([3, 4], np.int32)
    assert compare_arrays("weight", "i", ints, ints.copy(), bitwise=True, tol=T).ok
    assert compare_arrays("weight", "i", ints, ints + 1, bitwise=True, tol=T).n_out == 2
    assert compare_arrays("weight", "b", np.array([True]), np.array([False]), bitwise=False,
                          tol=T).n_out == 1
    c = compare_arrays("weight", "c", np.array([1 + 1j]), np.array([1 + 2j]), bitwise=False, tol=T)
    assert (c.n_out, c.max_abs) == (1, 1.0)
    s = compare_arrays("weight", "s", np.array(["a"]), np.array(["a"]), bitwise=False, tol=T)
    assert not s.ok and s.note == "cannot compare dtype <U1"


def test_scalars_and_empty_arrays():
    row = compare_arrays("metric", "m", np.array(1.0), np.array(2.0), bitwise=False, tol=T,
                         steps=[7])
    assert (row.ok, row.first_step, row.max_abs) == (False, 7, 1.0)
    empty = compare_arrays("weight", "w", np.zeros((0, 3)), np.zeros((0, 3)), bitwise=True, tol=T)
    assert empty.ok and empty.n_total == 0


# -- properties ----------------------------------------------------------------------------------
finite32 = hnp.arrays(np.float32, hnp.array_shapes(min_dims=0, max_dims=3, max_side=5),
                      elements=st.floats(width=32, allow_nan=False, allow_infinity=False))


@settings(max_examples=200, deadline=None, derandomize=True)
@given(a=finite32)
def test_property_any_finite_array_equals_itself(a):
    row = compare_arrays("weight", "w", a, a.copy(), bitwise=True, tol=T)
    assert (row.ok, row.n_out, row.max_abs, row.max_rel) == (True, 0, 0.0, 0.0)
    assert row.n_total == a.size
    assert compare_arrays("weight", "w", a, a.copy(), bitwise=False, tol=EXACT).ok


@settings(max_examples=200, deadline=None, derandomize=True)
@given(data=st.data(),
       a=hnp.arrays(np.float64, st.tuples(st.integers(1, 6), st.integers(1, 5)),
                    elements=st.floats(-1e6, 1e6, allow_nan=False)),
       rtol=st.sampled_from([0.0, 1e-9, 1e-6, 1e-3, 0.1]),
       atol=st.sampled_from([1e-12, 1e-8, 1e-3, 1.0]),
       factor=st.floats(1.5, 1e3), sign=st.sampled_from([-1.0, 1.0]))
def test_property_one_perturbation_beyond_tolerance_is_exactly_that_element(
        data, a, rtol, atol, factor, sign):
    i = data.draw(st.integers(0, a.shape[0] - 1), label="row")
    j = data.draw(st.integers(0, a.shape[1] - 1), label="col")
    bound = atol + rtol * abs(a[i, j])
    assume(bound >= 1e-9 * abs(a[i, j]))  # a perturbation float64 can represent at that value
    b = a.copy()
    b[i, j] += sign * factor * bound
    actual = abs(b[i, j] - a[i, j])
    assert actual > bound
    steps = [10 * k for k in range(a.shape[0])]
    row = compare_arrays("grad", "g", a, b, bitwise=False, tol={"rtol": rtol, "atol": atol},
                         steps=steps)
    assert (row.ok, row.n_out, row.first_step) == (False, 1, 10 * i)
    assert row.max_abs == actual
    exact = compare_arrays("grad", "g", a, b, bitwise=True, tol=T, steps=steps)
    assert (exact.n_out, exact.first_step) == (1, 10 * i)
    # within half the bound, the same element passes a close comparison
    c = a.copy()
    c[i, j] += sign * 0.5 * bound
    assert compare_arrays("grad", "g", a, c, bitwise=False, tol={"rtol": rtol, "atol": atol}).ok


@settings(max_examples=150, deadline=None, derandomize=True)
@given(pair=st.integers(1, 20).flatmap(lambda n: st.tuples(
           *[hnp.arrays(np.float64, n, elements=st.one_of(
               st.floats(-10, 10), st.sampled_from([np.nan, np.inf, -np.inf])))] * 2)),
       rtol=st.sampled_from([0.0, 1e-3, 0.5]), atol=st.sampled_from([0.0, 1e-2, 1.0]))
def test_property_n_out_matches_an_elementwise_oracle(pair, rtol, atol):
    rec, run = pair

    def out(r, x):
        if math.isnan(r) or math.isnan(x):
            return not (math.isnan(r) and math.isnan(x))
        if math.isinf(r) or math.isinf(x):
            return r != x
        return abs(x - r) > atol + rtol * abs(r)

    expected = [k for k in range(rec.size) if out(rec[k], run[k])]
    row = compare_arrays("metric", "m", rec, run, bitwise=False, tol={"rtol": rtol, "atol": atol},
                         steps=list(range(100, 100 + rec.size)))
    assert row.n_out == len(expected)
    assert row.ok == (not expected)
    assert row.first_step == (100 + expected[0] if expected else None)
    assert not math.isnan(row.max_abs) and not math.isnan(row.max_rel)


# -- choose_bitwise ------------------------------------------------------------------------------
FP = {"jax": "0.4.30", "jaxlib": "0.4.30", "numpy": "1.26.4", "backend": "cpu",
      "device_kind": "cpu", "device_count": 1, "cpus": 1, "cpu_isa": ["avx2"],
      "effective_isa": "AVX2", "l1d_cache": 32768,
      "settings": {"matmul_precision": "highest"}, "prng_canary": "ab" * 32, "machine": "x86_64",
      "hostname": "ci-1", "python": "3.11.7"}


def fp(**fields):
    """FP with `fields` changed, typed as the comparison takes it."""
    return Fingerprint.from_json({**FP, **fields})


def test_choose_bitwise_modes():
    base = fp()
    other = {**FP, "jax": "0.4.31"}
    assert choose_bitwise("exact", base, fp(**other)) == (True, "tolerance.mode is exact")
    assert choose_bitwise("close", base, fp()) == (False, "tolerance.mode is close")
    # what was equal is said plainly (issue 23: "the fingerprint" was claimed while hosts differed)
    assert choose_bitwise("auto", base, fp()) == (True, (
        "jax 0.4.30, jaxlib 0.4.30, numpy 1.26.4, cpu ×1, 1 core(s), effective ISA AVX2, the "
        "determinism settings and the PRNG canary equal the record's, L1 data cache 32768 bytes"))
    avx512 = fp(cpu_isa=["sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512dq",
                         "avx512vl"], kernels=[], l1d_cache=32768)
    bitwise, reason = choose_bitwise("auto", fp(cpu_isa=["sse4_2", "avx", "avx2", "fma"],
                                                kernels=[]), avx512)
    assert bitwise and reason.endswith("(recorded where the CPU's best ISA is AVX2, run where it is "
                                       "AVX512: every library kernel pinned)"), reason
    bitwise, reason = choose_bitwise("auto", base, fp(**{**other, "cpus": 2}))
    assert not bitwise and reason == ("the environment differs from the record's: jax 0.4.30 -> "
                                      "0.4.31; cpus 1 -> 2")
    loose = fp(effective_isa="AVX512", kernels=[
        {"library": "YNNPACK", "op": "dot_general", "count": 3, "pinned": False, "how": "x"}])
    bitwise, reason = choose_bitwise("auto", base, loose)
    assert not bitwise and reason == ("the environment differs from the record's: effective ISA "
                                      "AVX2 -> AVX512 (kernels the CPU chooses: YNNPACK "
                                      "dot_general ×3 unpinned)")


def test_auto_ignores_informational_fields():
    assert "hostname" not in NUMERIC_FIELDS and "python" not in NUMERIC_FIELDS
    assert choose_bitwise("auto", fp(), fp(hostname="laptop", python="3.11.9"))[0]


# a value of the field's type that differs from FP's, and what the reason says of it
OTHER_VALUE = {"device_count": (2, "2"), "cpus": (7, "7"), "l1d_cache": (49152, "49152 bytes"),
               "settings": ({"matmul_precision": "default"}, "settings matmul_precision"),
               "mesh": ([["data", 2], ["model", 2]], "mesh none -> {data: 2, model: 2}"),
               "process_count": (2, "2")}


@pytest.mark.parametrize("field", NUMERIC_FIELDS)
def test_auto_is_close_when_any_numeric_field_differs(field):
    value, shown = OTHER_VALUE.get(field, ("something else", "something else"))
    bitwise, reason = choose_bitwise("auto", fp(), fp(**{field: value}))
    said = {"effective_isa": "effective ISA", "l1d_cache": "L1 data cache"}.get(field, field)
    assert not bitwise and said in reason and shown in reason, reason
    # a record without the field (FP has no mesh: an unsharded run's) against a run with it
    assert not choose_bitwise("auto", Fingerprint.from_json({k: v for k, v in FP.items() if k != field}),
                              fp() if field in FP else fp(**{field: value}))[0]


# -- compare_run ---------------------------------------------------------------------------------
def series(values, steps=None, dtype="float32"):
    return {"steps": list(steps if steps is not None else range(len(values))),
            "values": list(values), "dtype": dtype}


def weights(**leaves):
    return {f"weights/{k.replace('__', '/')}": np.asarray(v, np.float32) for k, v in leaves.items()}


def grads(step_leaves):
    return {f"grads/{s}/{k}": np.asarray(v, np.float32) for s, leaves in step_leaves.items()
            for k, v in leaves.items()}


def run_compare(rec_metrics, rec_arrays, run_metrics, run_arrays, *, mode="close", names=None,
                platform="cpu", run_fp=None):
    tol = canonical_tolerance({**TOLERANCE_YAML, "mode": mode})
    from types import SimpleNamespace
    recorded = SimpleNamespace(fingerprint=fp(), metrics=rec_metrics, arrays=rec_arrays)
    return compare_run(recorded, run_metrics, run_arrays, tolerance=tol, platform_key=platform,
                       run_fingerprint=fp(**(run_fp or {})), metric_names=names)


def rows_by(comparison):
    return {(r.kind, r.name): r for r in comparison.rows}


def test_compare_run_all_equal():
    metrics = {"loss": series([1.0, 0.5, 0.25]), "accuracy": series([0.1, 0.5, 0.9])}
    arrays = {**weights(dense__w=[[1, 2], [3, 4]], dense__b=[0, 1]),
              **grads({0: {"dense/w": [[1, 1], [1, 1]]}, 4: {"dense/w": [[2, 2], [2, 2]]}})}
    c = run_compare(metrics, arrays, dict(metrics), dict(arrays), mode="auto")
    assert c.ok and c.failures == [] and c.bitwise
    assert c.reason.endswith("the determinism settings and the PRNG canary equal the record's, "
                             "L1 data cache 32768 bytes"), c.reason
    assert [(r.kind, r.name) for r in c.rows] == [
        ("metric", "accuracy"), ("metric", "loss"), ("grad", "dense/w"), ("weight", "dense/w"),
        ("weight", "dense/b")]
    assert all(r.bitwise for r in c.rows)


def test_compare_run_uses_each_quantitys_tolerance():
    metrics = {"loss": series([1.0]), "accuracy": series([1.0])}
    c = run_compare(metrics, {}, metrics, {}, names=["loss", "accuracy"])
    assert not c.bitwise and c.reason == "tolerance.mode is close"
    got = {r.name: (r.rtol, r.atol) for r in c.rows}
    assert got == {"loss": (1e-5, 1e-8), "accuracy": (1e-6, 1e-8)}
    arrays = {**weights(w=[1.0]), **grads({0: {"w": [1.0]}})}
    rows = rows_by(run_compare({}, arrays, {}, arrays, platform="gpu"))
    assert (rows[("grad", "w")].rtol, rows[("weight", "w")].atol) == (1e-3, 1e-5)


def test_metric_diverging_from_a_step():
    rec = {"loss": series([1.0, 0.5, 0.25, 0.125], steps=[0, 10, 20, 30])}
    run = {"loss": series([1.0, 0.5, 0.2501, 0.2], steps=[0, 10, 20, 30])}
    row = rows_by(run_compare(rec, {}, run, {}))[("metric", "loss")]
    assert (row.ok, row.first_step, row.n_out, row.n_total) == (False, 20, 2, 4)
    assert row.max_abs == pytest.approx(0.075)


def test_metric_with_nonfinite_values_stored_as_strings():
    rec = {"loss": series([1.0, "nan", "inf"])}
    assert run_compare(rec, {}, {"loss": series([1.0, "nan", "inf"])}, {}, mode="exact").ok
    row = rows_by(run_compare(rec, {}, {"loss": series([1.0, 2.0, "inf"])}, {}))[("metric", "loss")]
    assert (row.ok, row.first_step) == (False, 1)


def test_metric_logged_on_different_steps():
    rec = {"loss": series([1.0, 0.5, 0.25], steps=[0, 1, 2])}
    run = {"loss": series([1.0, 0.5, 0.25], steps=[0, 2, 4])}
    row = rows_by(run_compare(rec, {}, run, {}))[("metric", "loss")]
    assert not row.ok
    assert row.note == "logged steps differ: record has 3, run has 3 (first difference at position 1)"
    shorter = {"loss": series([1.0, 0.5], steps=[0, 1])}
    row = rows_by(run_compare(rec, {}, shorter, {}))[("metric", "loss")]
    assert row.note == "logged steps differ: record has 3, run has 2 (first difference at position 2)"


def test_missing_metric_either_side():
    rec = {"loss": series([1.0]), "accuracy": series([0.5])}
    run = {"loss": series([1.0]), "lr": series([0.1])}
    rows = rows_by(run_compare(rec, {}, run, {}))
    assert rows[("metric", "loss")].ok
    assert (rows[("metric", "accuracy")].ok, rows[("metric", "accuracy")].note) == \
        (False, "not logged by the run")
    assert (rows[("metric", "lr")].ok, rows[("metric", "lr")].note) == (False, "not in the record")
    # with record.metrics listed, only those are compared
    c = run_compare(rec, {}, run, {}, names=["loss"])
    assert c.ok and [r.name for r in c.rows] == ["loss"]


def test_missing_and_extra_weight_leaves():
    rec = weights(dense__w=[1.0, 2.0], dense__b=[0.0])
    run = weights(dense__w=[1.0, 2.0], head__w=[3.0])
    c = run_compare({}, rec, {}, run)
    rows = rows_by(c)
    assert rows[("weight", "dense/w")].ok
    assert rows[("weight", "dense/b")].note == "not returned by the run"
    assert rows[("weight", "head/w")].note == "not in the record"
    assert [r.name for r in c.failures] == ["dense/b", "head/w"]  # the record's order first


def test_weight_shape_change():
    c = run_compare({}, weights(w=[1.0, 2.0]), {}, weights(w=[[1.0, 2.0]]))
    assert c.failures[0].note == "shape (1, 2) != recorded (2,)"


def test_root_leaf_weights():
    rec = {"weights": np.float32([1.0, 2.0])}
    row = rows_by(run_compare({}, rec, {}, {"weights": np.float32([1.0, 3.0])}))[("weight", "(root)")]
    assert (row.ok, row.n_out) == (False, 1)


def test_gradient_first_diverging_step():
    rec = grads({0: {"w": [1.0, 1.0], "b": [0.5]}, 4: {"w": [2.0, 2.0], "b": [0.5]},
                 8: {"w": [3.0, 3.0], "b": [0.5]}})
    run = grads({0: {"w": [1.0, 1.0], "b": [0.5]}, 4: {"w": [2.0, 2.1], "b": [0.5]},
                 8: {"w": [3.0, 3.5], "b": [0.5]}})
    rows = rows_by(run_compare({}, rec, {}, run))
    w = rows[("grad", "w")]
    assert (w.ok, w.first_step, w.n_out, w.n_total) == (False, 4, 2, 6)
    assert w.max_abs == pytest.approx(0.5)
    assert (w.rtol, w.atol) == (1e-4, 1e-7)
    assert rows[("grad", "b")].ok


def test_gradient_kept_steps_or_leaves_differ():
    rec = grads({0: {"w": [1.0]}, 4: {"w": [1.0]}})
    rows = rows_by(run_compare({}, rec, {}, grads({0: {"w": [1.0]}, 5: {"w": [1.0]}})))
    assert rows[("grad", "w")].note.startswith("kept steps differ: record [0, 4]")
    rows = rows_by(run_compare({}, rec, {}, grads({0: {"v": [1.0]}, 4: {"v": [1.0]}})))
    assert rows[("grad", "w")].note == "not logged by the run"
    assert rows[("grad", "v")].note == "not in the record"
    rows = rows_by(run_compare({}, rec, {}, grads({0: {"w": [1.0]}, 4: {"w": [1.0, 2.0]}})))
    assert rows[("grad", "w")].note == "leaf shape changes between steps"


def test_auto_mode_switches_to_close_when_the_environment_differs():
    rec = weights(w=[1.0])
    run = weights(w=[np.nextafter(np.float32(1.0), np.float32(2.0))])
    same = run_compare({}, rec, {}, run, mode="auto")
    assert same.bitwise and not same.ok  # same environment: one ulp is a failure
    moved = run_compare({}, rec, {}, run, mode="auto", run_fp={**FP, "jaxlib": "0.4.31"})
    assert not moved.bitwise and moved.ok and "jaxlib" in moved.reason
