"""Properties of jax gradients on hypothesis-drawn MLPs: autodiff == finite differences,
linearity over the batch, batch-permutation invariance, bitwise determinism, and a zero
learning-rate step that changes nothing.

Cost control: every jitted function is built once, here, at import, and jit caches one
executable per (shape, dtype, activation, loss); check_gradients caches its own programs per
function and tree structure. The MLPs come from a small space (two shapes, linear output) so
that executables are reused across examples and tests; broad architectures and every output
activation are covered against the oracle in test_backprop_oracle.py.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from repro.grad import strategies as rst
from repro.grad.backprop import backprop, forward, mlp_loss
from repro.grad.gradcheck import check_gradients

rst.load_profile()

_STATIC = ("hidden", "output", "loss")
_grad = jax.jit(jax.grad(mlp_loss), static_argnames=_STATIC)


def _mlp(params, x, y, hidden, output, loss):
    """mlp_loss with the names as positional (non-array, so constant) arguments."""
    return mlp_loss(params, x, y, hidden=hidden, output=output, loss=loss)


def _batch_sum_and_per_example(params, x, y, **kw):
    """grad of Σ_b ℓ_b, and the per-example grads ∇ℓ_b stacked by vmap."""
    summed = jax.grad(lambda p: x.shape[0] * mlp_loss(p, x, y, **kw))(params)
    one = jax.grad(lambda p, xb, yb: mlp_loss(p, xb[None], yb[None], **kw))
    return summed, jax.vmap(one, in_axes=(None, 0, 0))(params, x, y)


_linearity = jax.jit(_batch_sum_and_per_example, static_argnames=_STATIC)


@jax.jit
def _step(params, grads, lr):
    return jax.tree_util.tree_map(lambda p, g: p - lr * g, params, grads)


def _mlps(dtype, sizes=((3, 4, 2), (2, 3, 3, 2))):
    """Two shapes, any hidden activation, either loss: 12 static combinations per dtype, so
    jit's caches are hit from the second example of each on, in every test here."""
    archs = rst.mlp_architectures(sizes=st.sampled_from(sizes), output=st.just("identity"))
    return rst.mlp_params_and_batch(archs, batch_sizes=st.just(3), dtype=dtype)


MLPS = _mlps(np.float64)
MLPS32 = _mlps(np.float32)


def _relu_margin(case) -> float:
    zs, _ = forward(case.params, case.x, hidden=case.arch.hidden, output=case.arch.output)
    acts = [case.arch.hidden] * (len(zs) - 1) + [case.arch.output]
    return float(min((np.min(np.abs(z)) for z, a in zip(zs, acts) if a == "relu"),
                     default=np.inf))


def _per_example_scale(case):
    """Σ_b |∇ℓ_b| / B per element (from the NumPy oracle): the size of the terms a float32
    batch-mean gradient adds up, so float tolerances can be set relative to it."""
    b = case.x.shape[0]
    parts = [backprop(case.params, case.x[i:i + 1], case.y[i:i + 1], **case.arch.kwargs)[1]
             for i in range(b)]
    return [{k: sum(np.abs(p[l][k]) for p in parts) / b for k in ("w", "b")}
            for l in range(len(case.params))]


def _leaves(tree):
    return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(tree)]


def _assert_close_at_scale(got, want, scale):
    """float32 agreement: |got − want| <= 1e-4 |want| + 1e-5 max(scale) per leaf, where scale is
    the size of the summed terms (a reordered float32 sum differs by ~n·eps of that)."""
    for a, b, s in zip(_leaves(got), _leaves(want), _leaves(scale)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=float(1e-5 * np.max(s)) + 1e-7)


@given(MLPS, st.sampled_from([np.float64, np.float32]))
def test_grad_autodiff_matches_finite_differences(case, dtype):
    """jax.grad of the MLP loss == float64 central differences, at float64 and float32."""
    assume(_relu_margin(case) > 1e-3)     # finite differences are meaningless at a kink
    a = case.arch
    cast = jax.tree_util.tree_map(lambda v: v.astype(dtype), (case.params, case.x, case.y))
    check_gradients(_mlp, *cast, a.hidden, a.output, a.loss)


@rst.scaled_examples(0.12)    # ~1 s of compilation per example: the costliest test here
@given(_mlps(np.float64, sizes=[(3, 4, 2)]))
@pytest.mark.slow
def test_grad_forward_mode_and_second_order_match_finite_differences(case):
    """jvp-based gradients and Hessian-vector products (rev and fwd) == finite differences."""
    assume(_relu_margin(case) > 1e-2)
    a = case.arch
    check_gradients(_mlp, case.params, case.x, case.y, a.hidden, a.output, a.loss, order=2,
                    modes=("rev", "fwd"))


@given(MLPS32)
@pytest.mark.slow
def test_grad_is_linear_over_the_batch(case):
    """∇ Σ_b ℓ_b == Σ_b ∇ℓ_b, the per-example gradients computed with vmap (float32)."""
    summed, per_example = _linearity(case.params, case.x, case.y, **case.arch.kwargs)
    b = case.x.shape[0]
    scale = jax.tree_util.tree_map(lambda s: b * s, _per_example_scale(case))
    _assert_close_at_scale(summed, jax.tree_util.tree_map(lambda g: g.sum(axis=0), per_example),
                           scale)


@given(MLPS32, st.data())
@pytest.mark.slow
def test_grad_of_mean_loss_is_invariant_to_batch_permutation(case, data):
    """Reordering the batch changes only the summation order of a mean loss's gradient."""
    perm = np.array(data.draw(st.permutations(range(case.x.shape[0])), label="perm"))
    g = _grad(case.params, case.x, case.y, **case.arch.kwargs)
    g_perm = _grad(case.params, case.x[perm], case.y[perm], **case.arch.kwargs)
    _assert_close_at_scale(g_perm, g, _per_example_scale(case))


@given(MLPS32)
@pytest.mark.slow
def test_grad_jitted_twice_is_bitwise_equal(case):
    """The same jitted gradient on the same inputs (fresh copies) is bitwise identical."""
    first = _leaves(_grad(case.params, case.x, case.y, **case.arch.kwargs))
    copies = jax.tree_util.tree_map(np.copy, (case.params, case.x, case.y))
    second = _leaves(_grad(*copies, **case.arch.kwargs))
    for a, b in zip(first, second):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()


@given(MLPS32)
def test_grad_step_with_zero_learning_rate_leaves_params_bitwise_unchanged(case):
    """p − 0·∇L == p bit for bit (params are never −0.0 here: −0.0 − 0.0·g can give +0.0)."""
    grads = _grad(case.params, case.x, case.y, **case.arch.kwargs)
    new = _step(case.params, grads, np.float32(0.0))
    for before, after in zip(_leaves(case.params), _leaves(new)):
        assert before.dtype == after.dtype and before.tobytes() == after.tobytes()


def _fixed_case(dtype=np.float32):
    rng = np.random.default_rng(0)
    params = [{"w": rng.standard_normal((4, 3)).astype(dtype),
               "b": rng.standard_normal(4).astype(dtype)},
              {"w": rng.standard_normal((2, 4)).astype(dtype),
               "b": rng.standard_normal(2).astype(dtype)}]
    x = rng.standard_normal((5, 3)).astype(dtype)
    y = rng.standard_normal((5, 2)).astype(dtype)
    return params, x, y


def test_grad_zero_learning_rate_optax_adam_leaves_params_bitwise_unchanged():
    optax = pytest.importorskip("optax")
    params, x, y = _fixed_case()
    opt = optax.adam(0.0)

    @jax.jit
    def adam_step(params, state):
        updates, state = opt.update(jax.grad(mlp_loss)(params, x, y), state, params)
        return optax.apply_updates(params, updates), state

    state = opt.init(params)
    for _ in range(3):
        new, state = adam_step(params, state)
        for before, after in zip(_leaves(params), _leaves(new)):
            assert before.tobytes() == after.tobytes()
        params = new


def test_grad_property_tests_fail_on_a_broken_gradient():
    """The comparisons are not vacuous: a loss that weighs the first example more is caught by
    the permutation check, and one that centres the batch (a batch statistic) by linearity."""
    params, x, y = _fixed_case()

    def order_dependent(p, x, y):
        return mlp_loss(p, x, y) + 0.01 * jnp.sum((x[0] @ p[0]["w"].T) ** 2)

    def centred(p, x, y):
        return mlp_loss(p, x - x.mean(axis=0), y)

    @jax.jit
    def grads(params, x, y):
        g = jax.grad(order_dependent)(params, x, y)
        g_perm = jax.grad(order_dependent)(params, x[::-1], y[::-1])
        summed = jax.grad(lambda p: x.shape[0] * centred(p, x, y))(params)
        per_example = jax.vmap(jax.grad(lambda p, xb, yb: centred(p, xb[None], yb[None])),
                               in_axes=(None, 0, 0))(params, x, y)
        return g, g_perm, summed, jax.tree_util.tree_map(lambda g: g.sum(axis=0), per_example)

    g, g_perm, summed, total = grads(params, x, y)
    with pytest.raises(AssertionError):
        _assert_close_at_scale(g_perm, g, jax.tree_util.tree_map(np.abs, g))
    with pytest.raises(AssertionError):
        _assert_close_at_scale(summed, total, jax.tree_util.tree_map(np.abs, summed))
