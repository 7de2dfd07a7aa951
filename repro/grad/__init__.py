"""Tools that check gradients are right, before any run records them.

* `repro.grad.gradcheck`: `check_gradients`, jax autodiff (reverse and forward mode, orders 1
  and 2) against float64 central finite differences; `GradientMismatch` names the leaf.
* `repro.grad.backprop`: the textbook NumPy backpropagation oracle for MLPs (`backprop`),
  independent of jax, and the same model in jax (`mlp_loss`).
* `repro.grad.strategies`: hypothesis strategies (float arrays, pytrees, MLPs with batches) and
  the ``repro-ci`` / ``repro-nightly`` hypothesis profiles (`load_profile`).
* `repro.grad.fixtures`: the body of the pytest plugin's ``gradcheck`` fixture.

The main names are re-exported here, loaded on first use, so that importing the package or
`repro.grad.strategies` does not import jax. The oracle function itself is
`repro.grad.backprop.backprop` (its name is the submodule's). The public paths
`repro.gradcheck`, `repro.backprop` and `repro.strategies` re-export the same objects.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from repro.grad.backprop import ACTIVATIONS, LOSSES, MLPArch, loss_value, mlp_loss
    from repro.grad.gradcheck import (
        DEFAULT_EPS,
        GradCheckResult,
        GradientMismatch,
        LeafMismatch,
        check_gradients,
        default_tolerances,
    )
    from repro.grad.strategies import MLPCase, load_profile, scaled_examples

__all__ = ["check_gradients", "GradientMismatch", "GradCheckResult", "LeafMismatch",
           "DEFAULT_EPS", "default_tolerances",
           "ACTIVATIONS", "LOSSES", "MLPArch", "loss_value", "mlp_loss",
           "MLPCase", "load_profile", "scaled_examples"]

_EXPORTS = {  # name -> the submodule that defines it
    "check_gradients": "gradcheck", "GradientMismatch": "gradcheck",
    "GradCheckResult": "gradcheck", "LeafMismatch": "gradcheck", "DEFAULT_EPS": "gradcheck",
    "default_tolerances": "gradcheck",
    "ACTIVATIONS": "backprop", "LOSSES": "backprop", "MLPArch": "backprop",
    "loss_value": "backprop", "mlp_loss": "backprop",
    "MLPCase": "strategies", "load_profile": "strategies", "scaled_examples": "strategies",
}


def __getattr__(name: str) -> Any:
    # gradcheck imports jax: load each name's module only when the name is asked for.
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'repro.grad' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"repro.grad.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
