"""The documented import paths repro.gradcheck, repro.backprop and repro.strategies keep working
now that the code lives in repro.grad: same objects, same __all__, star imports, and no jax
import for the strategies (the root conftest.py loads the profile through repro.strategies)."""
from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PUBLIC = ["gradcheck", "backprop", "strategies"]


@pytest.mark.parametrize("name", PUBLIC)
def test_public_module_re_exports_everything_public_from_repro_grad(name):
    public = importlib.import_module(f"repro.{name}")
    impl = importlib.import_module(f"repro.grad.{name}")
    assert public.__all__ == impl.__all__
    for attr in impl.__all__:
        assert getattr(public, attr) is getattr(impl, attr), attr
    namespace: dict = {}
    exec(f"from repro.{name} import *", namespace)  # noqa: S102 - the star import under test
    assert set(impl.__all__) <= set(namespace)


def test_public_paths_check_gradients_and_draw_strategies():
    from hypothesis import given

    from repro import strategies as rst
    from repro.gradcheck import GradientMismatch, check_gradients

    assert rst.load_profile() in (rst.CI_PROFILE, rst.NIGHTLY_PROFILE)
    check_gradients(lambda x: (x ** 2).sum(), np.arange(3.0))
    with pytest.raises(GradientMismatch):
        check_gradients(_wrong_grad_square, np.arange(1.0, 4.0))

    @given(rst.finite_arrays(shape=(2,)))
    def draws(x):
        assert x.shape == (2,) and np.all(np.isfinite(x))

    draws()


def _wrong_grad_square(x):
    import jax
    import jax.numpy as jnp

    @jax.custom_vjp
    def square(x):
        return x * x

    square.defvjp(lambda x: (x * x, x), lambda x, g: (-2 * x * g,))
    return jnp.sum(square(x))


def test_grad_package_re_exports_and_importing_strategies_does_not_import_jax():
    import repro.grad
    from repro.gradcheck import check_gradients

    assert repro.grad.check_gradients is check_gradients
    for name in repro.grad.__all__:
        getattr(repro.grad, name)
    assert set(repro.grad.__all__) <= set(dir(repro.grad))
    with pytest.raises(AttributeError):
        repro.grad.no_such_name  # noqa: B018
    code = ("import sys; import repro.grad, repro.strategies, repro.backprop; "
            "from repro.strategies import load_profile; "
            "assert 'jax' not in sys.modules, sorted(m for m in sys.modules if 'jax' in m)")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)
