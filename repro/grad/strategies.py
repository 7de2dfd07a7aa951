"""Hypothesis strategies for gradient property tests, and the project's hypothesis profiles.

The strategies draw what gradient tests need: pytrees of finite float arrays, and MLPs with
matching parameters, inputs and targets (the conventions of `repro.grad.backprop`: params are
``[{"w": (out, in), "b": (out,)}, ...]``, x is (batch, in), y is (batch, out)). They draw plain
NumPy arrays and never import jax, so they can be used to test any framework.

Usage::

    from hypothesis import given
    from repro.grad import strategies as rst
    from repro.grad.backprop import backprop
    from repro.grad.gradcheck import check_gradients

    @given(rst.arrays_pytrees())
    def test_my_loss_grads(tree):
        check_gradients(my_loss, tree)

    @given(rst.mlp_params_and_batch(rst.mlp_architectures(max_layers=2)))
    def test_my_mlp(case):
        value, grads = backprop(case.params, case.x, case.y, **case.arch.kwargs)

Profiles: `load_profile()` registers and loads one of

* ``repro-ci``: ``deadline=None`` (the first example of a shape pays jax's compilation),
  ``derandomize=True`` (the same examples on every run, so CI is reproducible), no example
  database, 25 examples per test;
* ``repro-nightly``: ``deadline=None``, random, 500 examples per test.

The environment variable ``REPRO_HYPOTHESIS_PROFILE`` chooses (default ``repro-ci``). Call
``load_profile()`` from a conftest.py; it is idempotent. ``@scaled_examples(f)`` gives one test
f times the profile's examples, so cheap tests can run more and costly ones fewer.

Why MLP values come from a seeded generator rather than element-wise hypothesis draws:
element-wise draws favour 0.0 and repeated values, which put relu units exactly on their kink
where finite differences are meaningless; Gaussian draws from a hypothesis-chosen seed keep
the examples reproducible, while hypothesis explores and shrinks the architecture, activations,
loss and batch size.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from hypothesis.extra import numpy as hnp
from numpy.typing import DTypeLike

from repro.grad.backprop import ACTIVATIONS, LOSSES, MLPArch

__all__ = ["float_dtypes", "finite_arrays", "arrays_pytrees", "activations", "losses",
           "mlp_architectures", "mlp_params_and_batch", "MLPCase", "register_profiles",
           "load_profile", "scaled_examples", "PROFILE_ENV", "CI_PROFILE", "NIGHTLY_PROFILE"]

PROFILE_ENV = "REPRO_HYPOTHESIS_PROFILE"
CI_PROFILE = "repro-ci"
NIGHTLY_PROFILE = "repro-nightly"


def register_profiles() -> None:
    """Register the ``repro-ci`` and ``repro-nightly`` hypothesis profiles (idempotent)."""
    settings.register_profile(CI_PROFILE, max_examples=25, deadline=None, derandomize=True,
                              database=None, print_blob=True)
    settings.register_profile(NIGHTLY_PROFILE, max_examples=500, deadline=None, print_blob=True)


def load_profile(name: str | None = None) -> str:
    """Register the profiles and load one; returns its name.

    The profile is `name` if given, else ``$REPRO_HYPOTHESIS_PROFILE``, else the profile already
    loaded if someone chose one (e.g. ``pytest --hypothesis-profile=...``), else ``repro-ci``.
    Hypothesis's own automatic profiles (``default``, and ``ci``, which it loads by itself when
    ``CI`` is set) are not a choice. Calling it again changes nothing.
    """
    register_profiles()
    current = settings.get_current_profile_name()
    automatic = ("default", "ci")
    name = name or os.environ.get(PROFILE_ENV) or (
        current if current not in automatic else CI_PROFILE)
    try:
        settings.load_profile(name)
    except InvalidArgument:
        raise ValueError(f"hypothesis profile {name!r} (from {PROFILE_ENV} or load_profile) is "
                         f"not registered; use {CI_PROFILE!r}, {NIGHTLY_PROFILE!r} or register "
                         "your own with hypothesis.settings.register_profile") from None
    return name


def scaled_examples(factor: float) -> settings:
    """A settings decorator giving a test `factor` times the loaded profile's max_examples
    (at least 1): cheap tests can run more examples and costly ones fewer, and all of them
    still scale with the profile. Apply it after `load_profile()` (e.g. in a test module)."""
    return settings(max_examples=max(1, round(factor * settings().max_examples)))


def float_dtypes(*, half: bool = False) -> st.SearchStrategy[np.dtype]:
    """float32 and float64 (and float16 with ``half=True``)."""
    names = ["float32", "float64"] + (["float16"] if half else [])
    return st.sampled_from([np.dtype(n) for n in names])


def finite_arrays(dtype: DTypeLike | st.SearchStrategy[np.dtype] | None = None,
                  shape: int | tuple[int, ...] | st.SearchStrategy[tuple[int, ...]] | None = None,
                  *, min_value: float = -10.0,
                  max_value: float = 10.0) -> st.SearchStrategy[np.ndarray]:
    """NumPy arrays of finite floats in [min_value, max_value] (no nan, inf or subnormals).

    Args:
      dtype: a dtype or a strategy of dtypes; default `float_dtypes()`.
      shape: a shape or a strategy of shapes; default 0 to 3 dimensions of 1 to 4 elements.
    """
    dtypes = float_dtypes() if dtype is None else dtype
    dtypes = dtypes if isinstance(dtypes, st.SearchStrategy) else st.just(np.dtype(dtypes))
    shapes = (hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=4)
              if shape is None else shape)

    def build(dt):
        elements = st.floats(min_value, max_value, allow_nan=False, allow_infinity=False,
                             allow_subnormal=False, width=8 * np.dtype(dt).itemsize)
        return hnp.arrays(dt, shapes, elements=elements)

    return dtypes.flatmap(build)


_KEYS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=6)


def arrays_pytrees(leaves: st.SearchStrategy[Any] | None = None, *,
                   max_leaves: int = 6) -> st.SearchStrategy[Any]:
    """Pytrees of finite arrays: nested dicts (string keys), lists and tuples.

    Args:
      leaves: strategy for the leaves; default `finite_arrays()`.
      max_leaves: an upper bound hint on the number of leaves.

    A drawn tree may be a bare array; its leaves may mix dtypes.
    """
    base = finite_arrays() if leaves is None else leaves

    def extend(children):
        return (st.lists(children, min_size=1, max_size=3)
                | st.lists(children, min_size=1, max_size=3).map(tuple)
                | st.dictionaries(_KEYS, children, min_size=1, max_size=3))

    return st.recursive(base, extend, max_leaves=max_leaves)


def activations(*, identity: bool = False) -> st.SearchStrategy[str]:
    """Activation names: relu, tanh, sigmoid (and identity with ``identity=True``)."""
    return st.sampled_from([a for a in ACTIVATIONS if identity or a != "identity"])


def losses() -> st.SearchStrategy[str]:
    """Loss names: ``"mse"`` and ``"softmax_cross_entropy"`` (see repro.grad.backprop)."""
    return st.sampled_from(LOSSES)


@st.composite
def mlp_architectures(draw: st.DrawFn, *, min_layers: int = 1, max_layers: int = 3,
                      widths: st.SearchStrategy[int] | None = None,
                      sizes: st.SearchStrategy[Sequence[int]] | None = None,
                      hidden: st.SearchStrategy[str] | None = None,
                      output: st.SearchStrategy[str] | None = None,
                      loss: st.SearchStrategy[str] | None = None) -> MLPArch:
    """`MLPArch`s: by default 1 to 3 weight layers of widths 1..5, any hidden activation and
    loss. Softmax cross-entropy always gets a linear (``identity``) output layer of >= 2
    classes; mean squared error any output activation.

    Args:
      min_layers, max_layers: number of weight layers (hidden layers + 1).
      widths: strategy for every layer width; default ``st.integers(1, 5)``.
      sizes: strategy for the whole ``(in, hidden..., out)`` tuple; overrides the three above.
        A small set (``st.sampled_from([...])``) makes shapes recur, so jitted code compiled
        for one example serves the next.
      hidden, output, loss: strategies for the names; default `activations()`,
        ``activations(identity=True)`` (used with mse only) and `losses()`.
    """
    loss_name = draw(losses() if loss is None else loss)
    if sizes is None:
        widths = st.integers(1, 5) if widths is None else widths
        n = draw(st.integers(min_layers, max_layers))
        shape = [draw(widths) for _ in range(n + 1)]
    else:
        shape = list(draw(sizes))
    if loss_name == "softmax_cross_entropy":
        shape[-1] = max(2, shape[-1])
        out_act = "identity"
    else:
        out_act = draw(activations(identity=True) if output is None else output)
    return MLPArch(tuple(shape), draw(activations() if hidden is None else hidden), out_act,
                   loss_name)


@dataclasses.dataclass(frozen=True)
class MLPCase:
    """One drawn MLP problem: `arch`, `params` (list of {"w", "b"}), `x`, `y`, and the `seed`
    the values came from."""
    arch: MLPArch
    params: list[dict[str, np.ndarray]]
    x: np.ndarray
    y: np.ndarray
    seed: int


@st.composite
def mlp_params_and_batch(draw: st.DrawFn,
                         arch: MLPArch | st.SearchStrategy[MLPArch] | None = None, *,
                         batch_sizes: st.SearchStrategy[int] | None = None,
                         dtype: DTypeLike = np.float64) -> MLPCase:
    """An MLP with parameters and a batch of inputs and targets that fit it.

    Args:
      arch: an `MLPArch` or a strategy of them; default `mlp_architectures()`.
      batch_sizes: strategy for the batch size; default ``st.integers(1, 5)``.
      dtype: dtype of every array (float64 by default, for exact comparisons).

    Values are drawn from a hypothesis-chosen seed: w ~ N(0, 1/fan_in), b ~ N(0, 0.5²),
    x ~ N(0, 1); targets are N(0, 1) for mse, one-hot rows of random classes for softmax
    cross-entropy.
    """
    if not isinstance(arch, MLPArch):
        arch = draw(mlp_architectures() if arch is None else arch)
    batch = draw(st.integers(1, 5) if batch_sizes is None else batch_sizes)
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    params = [{"w": (rng.standard_normal(s["w"]) / np.sqrt(s["w"][1])).astype(dtype),
               "b": (0.5 * rng.standard_normal(s["b"])).astype(dtype)}
              for s in arch.param_shapes()]
    x = rng.standard_normal((batch, arch.sizes[0])).astype(dtype)
    out = arch.sizes[-1]
    if arch.loss == "mse":
        y = rng.standard_normal((batch, out)).astype(dtype)
    else:
        y = np.eye(out, dtype=dtype)[rng.integers(0, out, size=batch)]
    return MLPCase(arch, params, x, y, seed)
