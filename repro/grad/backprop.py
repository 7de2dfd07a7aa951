"""A textbook backpropagation oracle for MLPs, in NumPy, independent of jax.

The oracle is written from the classical equations (column vectors, one column per example):

    z⁽ˡ⁾ = W⁽ˡ⁾ a⁽ˡ⁻¹⁾ + b⁽ˡ⁾,    a⁽ˡ⁾ = f⁽ˡ⁾(z⁽ˡ⁾),    a⁽⁰⁾ = x
    δ⁽ᴸ⁾ = ∇ₐL ⊙ f⁽ᴸ⁾′(z⁽ᴸ⁾)
    δ⁽ˡ⁾ = (W⁽ˡ⁺¹⁾ᵀ δ⁽ˡ⁺¹⁾) ⊙ f⁽ˡ⁾′(z⁽ˡ⁾)
    ∇W⁽ˡ⁾ = δ⁽ˡ⁾ a⁽ˡ⁻¹⁾ᵀ,        ∇b⁽ˡ⁾ = δ⁽ˡ⁾     (summed over the examples of the batch)

so it shares no code with jax's autodiff and makes an independent reference for `jax.grad` of
`mlp_loss` (in float64 the two agree to ~1e-10 or better).

Conventions (shared with `repro.grad.strategies` and the tests):

* params: a list with one dict per layer, ``{"w": (out, in), "b": (out,)}`` — W as in the
  equations above (and as in torch.nn.Linear); a layer computes ``x @ w.T + b`` on a batch.
* x: inputs, shape ``(batch, sizes[0])``; y: targets, shape ``(batch, sizes[-1])``.
* activations: ``"relu"`` (f′(0) = 0, as in jax.nn.relu), ``"tanh"``, ``"sigmoid"``,
  ``"identity"``; `hidden` is used by every layer but the last, `output` by the last.
* losses, both a mean over the batch:
    - ``"mse"``: L = (1/B) Σ_b ½‖a⁽ᴸ⁾_b − y_b‖²,  so ∇ₐL = (a⁽ᴸ⁾ − y) / B;
    - ``"softmax_cross_entropy"``: L = −(1/B) Σ_b Σ_k y_bk log softmax(a⁽ᴸ⁾_b)_k on the last
      layer's activations (usually logits: ``output="identity"``); y holds probabilities, e.g.
      one-hot rows, and ∇ₐL = (softmax(a⁽ᴸ⁾) Σ_k y_k − y) / B (= (softmax − y)/B for rows summing
      to 1).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

if TYPE_CHECKING:
    import jax

# params: one {"w": (out, in), "b": (out,)} mapping per layer (see the module docstring).
_Params = Sequence[Mapping[str, ArrayLike]]

__all__ = ["ACTIVATIONS", "LOSSES", "MLPArch", "forward", "loss_value", "backprop", "mlp_loss"]

ACTIVATIONS = ("relu", "tanh", "sigmoid", "identity")
LOSSES = ("mse", "softmax_cross_entropy")


@dataclasses.dataclass(frozen=True)
class MLPArch:
    """An MLP: layer widths ``sizes = (in, hidden..., out)``, activations and loss."""
    sizes: tuple[int, ...]
    hidden: str = "tanh"
    output: str = "identity"
    loss: str = "mse"

    def __post_init__(self) -> None:
        if len(self.sizes) < 2 or any(int(s) < 1 for s in self.sizes):
            raise ValueError(f"sizes must be >= 2 positive widths (in, ..., out), got {self.sizes}")
        _check_names(self.hidden, self.output, self.loss)

    @property
    def kwargs(self) -> dict[str, str]:
        """``hidden``, ``output`` and ``loss`` as keyword arguments for the functions here."""
        return {"hidden": self.hidden, "output": self.output, "loss": self.loss}

    def param_shapes(self) -> list[dict[str, tuple[int, ...]]]:
        return [{"w": (o, i), "b": (o,)} for i, o in zip(self.sizes[:-1], self.sizes[1:])]


def _check_names(hidden, output, loss):
    for what, name, allowed in (("hidden", hidden, ACTIVATIONS), ("output", output, ACTIVATIONS),
                                ("loss", loss, LOSSES)):
        if name not in allowed:
            raise ValueError(f"unknown {what} {name!r}; choose one of {allowed}")


def _sigmoid(z):
    e = np.exp(-np.abs(z))           # stable for large |z|
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _f(name, z):
    if name == "relu":
        return np.maximum(z, 0.0)
    if name == "tanh":
        return np.tanh(z)
    if name == "sigmoid":
        return _sigmoid(z)
    return z


def _fprime(name, z):
    if name == "relu":
        return (z > 0).astype(z.dtype)
    if name == "tanh":
        return 1.0 - np.tanh(z) ** 2
    if name == "sigmoid":
        s = _sigmoid(z)
        return s * (1.0 - s)
    return np.ones_like(z)


def _validate(params, x, y=None):
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"x must be (batch, in), got shape {x.shape}")
    width = x.shape[1]
    for l, p in enumerate(params):
        w, b = np.asarray(p["w"]), np.asarray(p["b"])
        if w.ndim != 2 or w.shape[1] != width or b.shape != (w.shape[0],):
            raise ValueError(f"layer {l}: expected w (out, {width}) and b (out,), got "
                             f"w {w.shape}, b {b.shape}")
        width = w.shape[0]
    if y is not None and np.shape(y) != (x.shape[0], width):
        raise ValueError(f"y must be (batch, out) = {(x.shape[0], width)}, got {np.shape(y)}")


def forward(params: _Params, x: ArrayLike, *, hidden: str = "tanh",
            output: str = "identity") -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The forward pass, column-major as in the equations.

    Returns ``(zs, activations)``: ``zs[l]`` is z⁽ˡ⁺¹⁾ and ``activations[l]`` is a⁽ˡ⁾, each of
    shape (width, batch); ``activations[0]`` is xᵀ.
    """
    _check_names(hidden, output, "mse")
    _validate(params, x)
    a = np.asarray(x, np.float64).T
    zs: list[np.ndarray] = []
    acts = [a]
    for l, p in enumerate(params):
        z = np.asarray(p["w"], np.float64) @ a + np.asarray(p["b"], np.float64)[:, None]
        a = _f(hidden if l < len(params) - 1 else output, z)
        zs.append(z)
        acts.append(a)
    return zs, acts


def _loss_and_grad_a(aL, y, loss):
    """L and ∇ₐL for the last layer's activations aL (out, batch) and targets y (out, batch)."""
    batch = aL.shape[1]
    if loss == "mse":
        diff = aL - y
        return 0.5 * float(np.sum(diff * diff)) / batch, diff / batch
    shifted = aL - aL.max(axis=0, keepdims=True)
    log_softmax = shifted - np.log(np.sum(np.exp(shifted), axis=0, keepdims=True))
    value = -float(np.sum(y * log_softmax)) / batch
    return value, (np.exp(log_softmax) * y.sum(axis=0, keepdims=True) - y) / batch


def loss_value(params: _Params, x: ArrayLike, y: ArrayLike, *, hidden: str = "tanh",
               output: str = "identity", loss: str = "mse") -> float:
    """L(params; x, y) in float64 (see the module docstring for the losses)."""
    _check_names(hidden, output, loss)
    _validate(params, x, y)
    _, acts = forward(params, x, hidden=hidden, output=output)
    return _loss_and_grad_a(acts[-1], np.asarray(y, np.float64).T, loss)[0]


def backprop(params: _Params, x: ArrayLike, y: ArrayLike, *, hidden: str = "tanh",
             output: str = "identity", loss: str = "mse"
             ) -> tuple[float, list[dict[str, np.ndarray]]]:
    """Loss and its gradient by textbook backpropagation, in float64.

    Args:
      params: ``[{"w": (out, in), "b": (out,)}, ...]``.
      x: (batch, in) inputs; y: (batch, out) targets (probabilities for softmax cross-entropy).
      hidden, output: activation names (`ACTIVATIONS`); loss: a name in `LOSSES`.

    Returns:
      ``(loss, grads)`` with grads shaped like params: ``[{"w": ∇W, "b": ∇b}, ...]``.
    """
    _check_names(hidden, output, loss)
    _validate(params, x, y)
    zs, acts = forward(params, x, hidden=hidden, output=output)
    value, grad_a = _loss_and_grad_a(acts[-1], np.asarray(y, np.float64).T, loss)
    n = len(params)
    grads: list[dict[str, np.ndarray]] = [{} for _ in range(n)]
    delta = grad_a * _fprime(output, zs[-1])                        # δ⁽ᴸ⁾ = ∇ₐL ⊙ f′(z⁽ᴸ⁾)
    for l in range(n - 1, -1, -1):
        grads[l] = {"w": delta @ acts[l].T,                         # ∇W = δ aᵀ (summed over batch)
                    "b": delta.sum(axis=1)}                         # ∇b = δ
        if l > 0:
            w = np.asarray(params[l]["w"], np.float64)
            delta = (w.T @ delta) * _fprime(hidden, zs[l - 1])      # δ⁽ˡ⁾ = (Wᵀ δ⁽ˡ⁺¹⁾) ⊙ f′(z⁽ˡ⁾)
    return value, grads


def mlp_loss(params: Sequence[Mapping[str, jax.Array | np.ndarray]], x: jax.Array | np.ndarray,
             y: jax.Array | np.ndarray, *, hidden: str = "tanh", output: str = "identity",
             loss: str = "mse") -> jax.Array:
    """The same MLP and loss in JAX, batch-major as users write it: what the oracle checks.

    Differentiate it with ``jax.grad`` and compare with `backprop`. Jit it with
    ``static_argnames=("hidden", "output", "loss")``.
    """
    import jax
    import jax.numpy as jnp

    _check_names(hidden, output, loss)
    fs = {"relu": jax.nn.relu, "tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid,
          "identity": lambda z: z}
    a = x
    for l, p in enumerate(params):
        a = fs[hidden if l < len(params) - 1 else output](a @ p["w"].T + p["b"])
    if loss == "mse":
        return 0.5 * jnp.mean(jnp.sum((a - y) ** 2, axis=-1))
    return -jnp.mean(jnp.sum(y * jax.nn.log_softmax(a, axis=-1), axis=-1))
