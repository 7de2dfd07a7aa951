"""Bodies of the pytest fixtures that repro's pytest plugin exposes.

Kept apart from the plugin so they can be imported and tested without pytest machinery.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from repro.grad.gradcheck import GradCheckResult


def gradcheck_fixture() -> Callable[..., GradCheckResult]:
    """The ``gradcheck`` fixture: returns `repro.grad.gradcheck.check_gradients`.

    In a test: ``def test_loss_grads(gradcheck): gradcheck(loss, params, batch)``; it raises
    `repro.grad.gradcheck.GradientMismatch` (an AssertionError) naming the leaf that disagrees.
    """
    from repro.grad.gradcheck import check_gradients

    return check_gradients
