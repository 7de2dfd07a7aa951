"""repro: prove that JAX training results reproduce from what was pinned.

Importing `repro` stays light (no jax): the parent process loads specs, checks pins, starts the
child and compares; only the child imports jax and the user's code.
"""
from repro.errors import CodePinError, DataPinError, PinError, RecordError, ReproError, RunError, SpecError

__version__ = "0.1.0"

__all__ = ["Context", "SpecError", "ReproError", "PinError", "CodePinError", "DataPinError",
           "RecordError", "RunError", "__version__"]


def __getattr__(name):
    # Context imports numpy; keep `import repro` cheap for the parent and the CLI.
    if name == "Context":
        from repro.child.context import Context
        return Context
    raise AttributeError(f"module 'repro' has no attribute {name!r}")
