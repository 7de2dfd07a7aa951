"""Public path of the gradient checker; the implementation lives in repro.grad.gradcheck."""
from repro.grad.gradcheck import (
    DEFAULT_EPS,
    GradCheckResult,
    GradientMismatch,
    LeafMismatch,
    check_gradients,
    default_tolerances,
)

__all__ = ["check_gradients", "GradientMismatch", "LeafMismatch", "GradCheckResult",
           "DEFAULT_EPS", "default_tolerances"]
