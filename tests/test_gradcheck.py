"""repro.grad.gradcheck.check_gradients: passes on correct gradients, and is itself tested by
mutation (a backward pass 1 % off, a wrong sign on one leaf, a wrong second derivative)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from repro.grad import strategies as rst
from repro.grad.fixtures import gradcheck_fixture
from repro.grad.gradcheck import GradCheckResult, GradientMismatch, check_gradients

rst.load_profile()

# Small leaves: the smooth function below runs eagerly, and op-by-op executables are cached
# per leaf shape, so a small shape space keeps the examples cheap.
TREES = rst.arrays_pytrees(rst.finite_arrays(
    shape=hnp.array_shapes(min_dims=0, max_dims=2, min_side=1, max_side=3)), max_leaves=4)


def _smooth(tree):
    """exp(x/4) per element plus a cross-leaf term, so the Hessian is not diagonal."""
    leaves = jax.tree_util.tree_leaves(tree)
    coupling = sum(jnp.sum(jnp.sin(x)) for x in leaves)
    return sum(jnp.sum(jnp.exp(x / 4)) for x in leaves) + 0.1 * coupling ** 2


def _separable(tree):
    """Gradient exp(x/4)/4 is in [0.02, 3.1] for |x| <= 10: every element is detectable."""
    return sum(jnp.sum(jnp.exp(x / 4)) for x in jax.tree_util.tree_leaves(tree))


@jax.custom_vjp
def _scaled_backward(x, factor):
    return x


def _scaled_fwd(x, factor):
    return x, factor


def _scaled_bwd(factor, g):
    return g * factor, None


_scaled_backward.defvjp(_scaled_fwd, _scaled_bwd)   # identity whose backward scales by factor


@jax.custom_jvp
def _sin_jvp_off(x):
    return jnp.sin(x)


_sin_jvp_off.defjvp(lambda p, t: (jnp.sin(p[0]), 1.01 * jnp.cos(p[0]) * t[0]))


@jax.custom_jvp
def _cos_wrong_derivative(x):
    return jnp.cos(x)


_cos_wrong_derivative.defjvp(lambda p, t: (jnp.cos(p[0]), jnp.sin(p[0]) * t[0]))  # sign bug


@jax.custom_jvp
def _sin_bad_second_derivative(x):
    """sin with a correct first derivative whose own derivative is wrong."""
    return jnp.sin(x)


_sin_bad_second_derivative.defjvp(
    lambda p, t: (jnp.sin(p[0]), _cos_wrong_derivative(p[0]) * t[0]))


# -- hypothesis: correct gradients pass, mutated ones are caught and located ------------------

@given(TREES, st.sampled_from([("rev",), ("fwd",), ("rev", "fwd")]), st.sampled_from([1, 1, 2]))
@pytest.mark.slow
def test_gradcheck_passes_on_a_smooth_fn_of_random_pytrees(tree, modes, order):
    result = check_gradients(_smooth, tree, order=order, modes=modes)
    assert set(result.max_rel_err) == {"args[0]" + jax.tree_util.keystr(p)
                                       for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]}


@given(TREES, st.data())
def test_gradcheck_catches_a_mutated_leaf_of_random_pytrees(tree, data):
    """Scale one drawn leaf's backward by 1.01 (or flip its sign): the check fails there."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    k = data.draw(st.integers(0, len(flat) - 1), label="leaf")
    factor = data.draw(st.sampled_from([1.01, -1.0]), label="factor")

    def mutated(t):
        leaves = jax.tree_util.tree_leaves(t)
        leaves[k] = _scaled_backward(leaves[k], factor)
        return _separable(jax.tree_util.tree_unflatten(treedef, leaves))

    with pytest.raises(GradientMismatch) as info:
        check_gradients(mutated, tree)
    assert info.value.path == "args[0]" + jax.tree_util.keystr(flat[k][0])
    assert {f.path for f in info.value.failures} == {info.value.path}


# -- mutation, by hand -------------------------------------------------------------------------

def _layer_params(dtype, rng=None):
    rng = rng or np.random.default_rng(0)
    return {"layer": {"w": rng.standard_normal((3, 2)).astype(dtype),
                      "b": rng.standard_normal(2).astype(dtype)}}, \
        rng.standard_normal((4, 3)).astype(dtype)


def _layer_loss(params, x, *, wrap=lambda w: w):
    layer = params["layer"]
    return jnp.mean(jnp.tanh(x @ wrap(layer["w"]) + layer["b"]) ** 2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gradcheck_catches_a_custom_vjp_one_percent_off(dtype):
    params, x = _layer_params(dtype)
    check_gradients(_layer_loss, params, x)                            # the unmutated loss passes
    with pytest.raises(GradientMismatch) as info:
        check_gradients(lambda p, x: _layer_loss(p, x, wrap=lambda w: _scaled_backward(w, 1.01)),
                        params, x)
    err = info.value
    assert isinstance(err, AssertionError)
    assert err.path == "args[0]['layer']['w']" and err.order == 1 and err.mode == "rev"
    assert err.rel_err == pytest.approx(0.01, rel=0.05)
    assert err.analytic == pytest.approx(1.01 * err.numeric, rel=1e-3)
    message = str(err)
    assert "args[0]['layer']['w'], element " + str(err.index) in message
    assert f"{err.analytic:.10g}" in message and f"{err.numeric:.10g}" in message
    assert "relative error 0.01" in message


def test_gradcheck_catches_a_wrong_sign_on_one_leaf():
    params, x = _layer_params(np.float32)
    loss = lambda p, x: _layer_loss({"layer": {"w": p["layer"]["w"],  # noqa: E731
                                               "b": _scaled_backward(p["layer"]["b"], -1.0)}}, x)
    with pytest.raises(GradientMismatch) as info:
        check_gradients(loss, params, x)
    assert info.value.path == "args[0]['layer']['b']"
    assert [f.path for f in info.value.failures] == ["args[0]['layer']['b']"]
    assert info.value.analytic == pytest.approx(-info.value.numeric, rel=1e-3)


def test_gradcheck_forward_mode_catches_a_custom_jvp_one_percent_off():
    x = np.linspace(-1.0, 1.0, 5)
    with pytest.raises(GradientMismatch, match=r"mode 'fwd'") as info:
        check_gradients(lambda x: jnp.sum(_sin_jvp_off(x)), x, modes=("fwd",))
    assert info.value.rel_err == pytest.approx(0.01, rel=1e-3)


def test_gradcheck_forward_mode_really_is_forward_mode():
    """custom_vjp defines no jvp: forward mode must refuse it, reverse mode must check it."""
    x = np.linspace(-1.0, 1.0, 5)
    check_gradients(lambda x: jnp.sum(_scaled_backward(x, 1.0) ** 2), x, modes=("rev",))
    with pytest.raises(TypeError, match="custom_vjp"):
        check_gradients(lambda x: jnp.sum(_scaled_backward(x, 1.0) ** 2), x, modes=("fwd",))


def test_gradcheck_second_order_catches_a_wrong_second_derivative():
    x = np.linspace(-1.0, 1.0, 5)
    fn = lambda x: jnp.sum(_sin_bad_second_derivative(x) ** 2)  # noqa: E731
    check_gradients(fn, x, order=1, modes=("rev", "fwd"))         # first derivatives are right
    for mode in ("rev", "fwd"):
        with pytest.raises(GradientMismatch, match="Hessian-vector product") as info:
            check_gradients(fn, x, order=2, modes=(mode,))
        assert info.value.order == 2 and info.value.mode == mode


def test_gradcheck_a_large_leaf_is_checked_in_vmapped_chunks():
    rng = np.random.default_rng(1)
    w, x = rng.standard_normal((30, 20)), rng.standard_normal((4, 30))
    loss = jax.jit(lambda w, x: jnp.sum(jnp.sin(x @ w)))
    check_gradients(loss, w, x)
    with pytest.raises(GradientMismatch, match=r"args\[0\]"):
        check_gradients(lambda w, x: loss(_scaled_backward(w, 1.01), x), w, x)


# -- what is checked, what is skipped, and errors ------------------------------------------------

def test_gradcheck_holds_integer_and_python_leaves_constant():
    params, x = _layer_params(np.float64)
    labels = np.array([0, 1, 1, 0])

    def loss(params, batch, scale):
        logits = batch["x"] @ params["layer"]["w"] + params["layer"]["b"]
        picked = jnp.take_along_axis(jax.nn.log_softmax(logits), batch["y"][:, None], axis=1)
        return -scale * jnp.mean(picked)

    result = check_gradients(loss, params, {"x": x, "y": labels}, 2.0, modes=("rev", "fwd"))
    assert isinstance(result, GradCheckResult)
    assert set(result.max_rel_err) == {"args[0]['layer']['b']", "args[0]['layer']['w']",
                                       "args[1]['x']"}
    assert "not differentiable" in result.skipped["args[1]['y']"]
    assert "not an array" in result.skipped["args[2]"]


@pytest.mark.parametrize("fn, args, error, match", [
    (lambda x: x * 2, (np.ones(3),), ValueError, r"return a scalar; it returned shape \(3,\)"),
    (lambda x: jnp.sum(x).astype(jnp.int32), (np.ones(3),), TypeError, "real float"),
    (lambda x: jnp.sum(x.real), (np.ones(2, np.complex64),), TypeError, r"args\[0\] is complex"),
    (lambda n: jnp.float32(n.sum()), (np.arange(3),), ValueError, "no floating-point array"),
    (lambda x: jnp.sum(x.astype(jnp.float32)), (np.ones(2),), TypeError, "float32 for float64"),
    (lambda x: jnp.sum(jnp.log(x)), (-np.ones(2),), ValueError, "nan"),
])
def test_gradcheck_rejects_what_it_cannot_check(fn, args, error, match):
    with pytest.raises(error, match=match):
        check_gradients(fn, *args)


@pytest.mark.parametrize("kwargs, match", [
    ({"order": 3}, "order must be 1 or 2"), ({"modes": ("reverse",)}, "modes must be"),
    ({"modes": ()}, "modes must be"), ({"eps": 0.0}, "eps must be > 0"),
])
def test_gradcheck_rejects_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        check_gradients(jnp.sum, np.ones(2), **kwargs)
    with pytest.raises(TypeError, match="needs the arguments"):
        check_gradients(jnp.sum)


def test_gradcheck_leaves_the_global_x64_flag_alone():
    before = jax.config.jax_enable_x64
    check_gradients(lambda x: jnp.sum(x ** 3), np.ones(3, np.float32), order=2)
    check_gradients(lambda x: jnp.sum(x ** 3), np.ones(3, np.float64))
    assert jax.config.jax_enable_x64 == before
    assert jnp.ones(1).dtype == (jnp.float64 if before else jnp.float32)


def test_gradcheck_fixture_body_returns_check_gradients():
    assert gradcheck_fixture() is check_gradients


def test_gradcheck_fixture_from_the_pytest_plugin(gradcheck):
    params, x = _layer_params(np.float32)
    gradcheck(_layer_loss, params, x)
    with pytest.raises(GradientMismatch):
        gradcheck(lambda p, x: _layer_loss(p, x, wrap=lambda w: _scaled_backward(w, -1.0)),
                  params, x)


# -- hypothesis profiles ------------------------------------------------------------------------

def test_gradcheck_profiles_are_registered_and_chosen_by_environment(monkeypatch):
    previous = settings.get_current_profile_name()
    try:
        monkeypatch.delenv(rst.PROFILE_ENV, raising=False)
        settings.load_profile("default")
        assert rst.load_profile() == rst.CI_PROFILE
        assert rst.load_profile() == rst.CI_PROFILE          # idempotent
        ci = settings.get_profile(rst.CI_PROFILE)
        assert ci.deadline is None and ci.derandomize and ci.database is None
        nightly = settings.get_profile(rst.NIGHTLY_PROFILE)
        assert nightly.deadline is None and nightly.max_examples > ci.max_examples
        monkeypatch.setenv(rst.PROFILE_ENV, rst.NIGHTLY_PROFILE)
        assert rst.load_profile() == rst.NIGHTLY_PROFILE
        assert settings.default.max_examples == nightly.max_examples
        monkeypatch.setenv(rst.PROFILE_ENV, "nope")
        with pytest.raises(ValueError, match="'nope'.*not registered"):
            rst.load_profile()
    finally:
        settings.load_profile(previous)
