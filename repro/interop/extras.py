"""Optional dependencies, imported only when a feature needs them. A feature used without its
extra is a `MissingExtra` (exit 2) that names the feature and the `pip install` line."""
from __future__ import annotations

import importlib
from types import ModuleType

from repro.errors import ReproError

__all__ = ["EXTRAS", "MissingExtra", "require"]

# extra name -> what it installs (pyproject.toml's [project.optional-dependencies])
EXTRAS = {"dvc": "DVC", "mlflow": "MLflow", "wandb": "Weights & Biases (wandb)"}


class MissingExtra(ReproError):
    """A feature whose optional dependency is not installed."""

    def __init__(self, extra: str, feature: str, module: str, cause: BaseException):
        self.extra, self.feature, self.module = extra, feature, module
        super().__init__(f"{feature} needs {EXTRAS.get(extra, extra)}, which is not installed "
                         f"here (import {module}: {type(cause).__name__}: {cause}); install it "
                         f"with `pip install 'repro[{extra}]'`")


def require(extra: str, module: str, feature: str) -> ModuleType:
    """`module`, imported; or a MissingExtra naming `feature` and `repro[extra]`."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtra(extra, feature, module, exc) from None
