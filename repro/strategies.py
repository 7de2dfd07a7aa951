"""Public path of the hypothesis strategies; the implementation lives in repro.grad.strategies."""
from repro.grad.strategies import (
    CI_PROFILE,
    NIGHTLY_PROFILE,
    PROFILE_ENV,
    MLPCase,
    activations,
    arrays_pytrees,
    finite_arrays,
    float_dtypes,
    load_profile,
    losses,
    mlp_architectures,
    mlp_params_and_batch,
    register_profiles,
    scaled_examples,
)

__all__ = ["float_dtypes", "finite_arrays", "arrays_pytrees", "activations", "losses",
           "mlp_architectures", "mlp_params_and_batch", "MLPCase", "register_profiles",
           "load_profile", "scaled_examples", "PROFILE_ENV", "CI_PROFILE", "NIGHTLY_PROFILE"]
