"""The textbook backpropagation oracle (repro.grad.backprop) against jax.grad and against NumPy
finite differences, plus hand-computed cases and a mutation that the oracle must catch."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from repro.grad import strategies as rst
from repro.grad.backprop import MLPArch, backprop, forward, loss_value, mlp_loss

rst.load_profile()

# Built once at import: jit caches one executable per (shape, dtype, activation, loss).
_STATIC = ("hidden", "output", "loss")
_jax_value_and_grad = jax.jit(jax.value_and_grad(mlp_loss), static_argnames=_STATIC)

MLPS = rst.mlp_params_and_batch(rst.mlp_architectures(max_layers=3, widths=st.integers(1, 4)),
                                batch_sizes=st.integers(1, 4))


def _relu_margin(case) -> float:
    """Smallest |z| over the units that pass through relu (inf when none do)."""
    zs, _ = forward(case.params, case.x, hidden=case.arch.hidden, output=case.arch.output)
    acts = [case.arch.hidden] * (len(zs) - 1) + [case.arch.output]
    margins = [np.min(np.abs(z)) for z, a in zip(zs, acts) if a == "relu"]
    return float(min(margins, default=np.inf))


def _assert_trees_close(got, want, *, rtol, atol):
    for l, (g, w) in enumerate(zip(got, want)):
        for name in ("w", "b"):
            np.testing.assert_allclose(np.asarray(g[name]), w[name], rtol=rtol, atol=atol,
                                       err_msg=f"layer {l} {name}")


@given(MLPS)
def test_backprop_oracle_matches_jax_grad(case):
    """jax.grad of the JAX model == textbook backprop, both in float64, to ~1e-10."""
    with jax.enable_x64(True):
        value, grads = _jax_value_and_grad(case.params, case.x, case.y, **case.arch.kwargs)
        value, grads = float(value), jax.device_get(grads)
    want_value, want = backprop(case.params, case.x, case.y, **case.arch.kwargs)
    assert value == pytest.approx(want_value, rel=1e-12, abs=1e-12)
    _assert_trees_close(grads, want, rtol=1e-10, atol=1e-12)


@rst.scaled_examples(2)     # NumPy only, no compilation: cheap, so twice the examples
@given(MLPS)
def test_backprop_oracle_matches_numpy_finite_differences(case):
    """The oracle stands on its own: its gradient == central differences of its own loss,
    all in NumPy, no jax involved."""
    assume(_relu_margin(case) > 1e-3)   # a kink within reach of the step: differences meaningless
    kw = case.arch.kwargs
    _, grads = backprop(case.params, case.x, case.y, **kw)
    for l, layer in enumerate(case.params):
        for name, value in layer.items():
            numeric = np.empty(value.shape)
            for idx in np.ndindex(value.shape):
                h = 1e-6 * max(1.0, abs(value[idx]))
                moved = []
                for step in (h, -h):
                    params = [dict(p) for p in case.params]
                    params[l][name] = value.copy()
                    params[l][name][idx] += step
                    moved.append(loss_value(params, case.x, case.y, **kw))
                numeric[idx] = (moved[0] - moved[1]) / (2 * h)
            np.testing.assert_allclose(grads[l][name], numeric, rtol=1e-6, atol=1e-8,
                                       err_msg=f"layer {l} {name}")


def test_backprop_single_linear_layer_mse_by_hand():
    """One linear layer, L = (1/B) Σ ½‖Wx + b − y‖²: ∇W = (1/B) Σ (Wx + b − y) xᵀ, ∇b = mean r."""
    rng = np.random.default_rng(1)
    w, b = rng.standard_normal((2, 3)), rng.standard_normal(2)
    x, y = rng.standard_normal((4, 3)), rng.standard_normal((4, 2))
    r = x @ w.T + b - y
    value, grads = backprop([{"w": w, "b": b}], x, y, output="identity", loss="mse")
    assert value == pytest.approx(0.5 * np.sum(r ** 2) / 4)
    np.testing.assert_allclose(grads[0]["w"], r.T @ x / 4, rtol=1e-13)
    np.testing.assert_allclose(grads[0]["b"], r.mean(axis=0), rtol=1e-13)


def test_backprop_softmax_cross_entropy_by_hand():
    """Linear logits, one-hot targets: ∇W = (1/B) Σ (softmax(z) − y) xᵀ."""
    rng = np.random.default_rng(2)
    w, b = rng.standard_normal((3, 2)), rng.standard_normal(3)
    x = rng.standard_normal((5, 2))
    y = np.eye(3)[[0, 2, 1, 1, 0]]
    z = x @ w.T + b
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    value, grads = backprop([{"w": w, "b": b}], x, y, loss="softmax_cross_entropy")
    assert value == pytest.approx(-np.mean(np.log(p[y.astype(bool)])))
    np.testing.assert_allclose(grads[0]["w"], (p - y).T @ x / 5, rtol=1e-12)
    np.testing.assert_allclose(grads[0]["b"], (p - y).mean(axis=0), rtol=1e-12)


def test_backprop_relu_derivative_at_zero_is_zero_like_jax():
    params = [{"w": np.zeros((1, 1)), "b": np.zeros(1)}]
    _, grads = backprop(params, np.ones((1, 1)), np.ones((1, 1)), output="relu")
    assert grads[0]["b"][0] == 0.0


@jax.custom_jvp
def _tanh_wrong_derivative(z):
    return jnp.tanh(z)


@_tanh_wrong_derivative.defjvp
def _tanh_wrong_derivative_jvp(primals, tangents):
    (z,), (t,) = primals, tangents
    out = jnp.tanh(z)
    return out, (1.0 - out) * t          # the bug: 1 − tanh instead of 1 − tanh²


def test_backprop_oracle_catches_a_wrong_activation_derivative():
    """Mutation: a JAX MLP whose tanh has the wrong derivative must disagree with the oracle."""
    arch = MLPArch((3, 4, 2), hidden="tanh", output="identity", loss="mse")
    rng = np.random.default_rng(3)
    params = [{"w": rng.standard_normal(s["w"]), "b": rng.standard_normal(s["b"])}
              for s in arch.param_shapes()]
    x, y = rng.standard_normal((3, 3)), rng.standard_normal((3, 2))

    def buggy(params, x, y):
        h = _tanh_wrong_derivative(x @ params[0]["w"].T + params[0]["b"])
        out = h @ params[1]["w"].T + params[1]["b"]
        return 0.5 * jnp.mean(jnp.sum((out - y) ** 2, axis=-1))

    with jax.enable_x64(True):
        good = jax.device_get(jax.grad(mlp_loss)(params, x, y, **arch.kwargs))
        bad = jax.device_get(jax.grad(buggy)(params, x, y))
    _, want = backprop(params, x, y, **arch.kwargs)
    _assert_trees_close(good, want, rtol=1e-10, atol=1e-12)
    with pytest.raises(AssertionError, match="layer 0"):
        _assert_trees_close(bad, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kwargs, match", [
    ({"hidden": "gelu"}, "unknown hidden 'gelu'"),
    ({"output": "softmax"}, "unknown output 'softmax'"),
    ({"loss": "hinge"}, "unknown loss 'hinge'"),
])
def test_backprop_rejects_unknown_names(kwargs, match):
    params = [{"w": np.ones((1, 1)), "b": np.ones(1)}]
    with pytest.raises(ValueError, match=match):
        backprop(params, np.ones((1, 1)), np.ones((1, 1)), **kwargs)


def test_backprop_rejects_shapes_that_do_not_fit():
    params = [{"w": np.ones((2, 3)), "b": np.ones(2)}]
    with pytest.raises(ValueError, match=r"layer 0: expected w \(out, 4\)"):
        backprop(params, np.ones((5, 4)), np.ones((5, 2)))
    with pytest.raises(ValueError, match=r"y must be \(batch, out\)"):
        backprop(params, np.ones((5, 3)), np.ones((5, 3)))
    with pytest.raises(ValueError, match="sizes"):
        MLPArch((3,))
