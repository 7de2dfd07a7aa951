"""Reference workload in Flax NNX: an MLP with dropout on the digits set, ``nnx.Optimizer`` over
optax Adam, checkpointed.

The Flax counterpart of ``zoo.mlp``, written the way current Flax recommends (the NNX API: a
``nnx.Module`` holding its own ``nnx.Param`` variables and ``nnx.Rngs``, ``nnx.Optimizer(model,
tx, wrt=nnx.Param)``, ``nnx.value_and_grad`` and ``nnx.jit``). What repro sees is Flax's own
state, unconverted: the gradients ``ctx.log_grads`` gets are an ``nnx.State`` of ``Param``
variables (record keys ``grads/10/linear1/kernel``), the returned weights are
``nnx.state(model, nnx.Param)`` (``weights/linear1/kernel``) and the checkpointed state is
``{"model": nnx.state(model), "opt": nnx.state(optimizer), "data_rng": rng.bit_generator.state}``
(``model/dropout/rngs/count``, ``model/dropout/rngs/key`` — a typed PRNG key —,
``opt/opt_state/0/mu/linear1/kernel``, ``opt/step``, ``data_rng/state/state``).

Everything that decides the numbers is reachable from here, so a test can replay any step:

* the data: ``load_digits(ctx.data["digits"])`` (``zoo.mlp``'s loader);
* the model: ``MLP(64, hidden, 10, dropout, rngs=nnx.Rngs(params=ctx.key("params"),
  dropout=ctx.key("dropout")))`` — nnx.Linear's defaults (LeCun-normal kernels, zero biases);
* the batch at every step: ``batch(rng, n_train, batch_size)`` with
  ``rng = np.random.default_rng(ctx.seed("data"))``, called once per step (``batch_size``
  distinct indices from ``rng.permutation``; nothing else touches ``rng``);
* the optimizer: ``nnx.Optimizer(model, optax.adam(lr), wrt=nnx.Param)``;
* the step itself: ``train_step(model, optimizer, xb, yb)`` (``nnx.jit``), returning
  ``(loss, accuracy, grads)`` at the parameters before the update, dropout on.

Step ``s`` logs ``loss`` and ``accuracy`` of the batch (dropout on, parameters before the
update) and the gradient of that loss. After every ``eval_every``-th step (and the last) it logs
``test_loss`` and ``test_accuracy`` (300 held-out images, dropout off) at the parameters after
it. After every step it offers ``ctx.checkpoint(s + 1, state)``; ``ctx.restore`` at the start
gives back the state of a replayed step, restored into the model and optimizer with
``nnx.update``.

Imports only numpy, jax, optax and flax.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from zoo.mlp import load_digits

__all__ = ["DEFAULTS", "MLP", "batch", "config_of", "evaluate", "load_digits", "make_model",
           "train", "train_step"]

DEFAULTS = {"steps": 120, "lr": 3e-3, "batch_size": 64, "hidden": 32, "dropout": 0.1,
            "eval_every": 40}


class MLP(nnx.Module):
    """``din -> hidden`` (relu, dropout) ``-> dout``; ``train`` turns dropout on."""

    def __init__(self, din: int, hidden: int, dout: int, dropout: float, *, rngs: nnx.Rngs):
        self.linear1 = nnx.Linear(din, hidden, rngs=rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        self.linear2 = nnx.Linear(hidden, dout, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        h = self.dropout(jax.nn.relu(self.linear1(x)), deterministic=not train)
        return self.linear2(h)


def make_model(key_params: jax.Array, key_dropout: jax.Array, cfg: dict) -> tuple[MLP, nnx.Optimizer]:
    """The initial model (weights from ``key_params``, dropout stream from ``key_dropout``) and
    its ``nnx.Optimizer`` (Adam, ``cfg["lr"]``), made in one jitted call: built eagerly, each
    initializer and each zero of Adam's moments would compile on its own (seconds)."""
    return _create(key_params, key_dropout, cfg["hidden"], cfg["dropout"], cfg["lr"])


@nnx.jit(static_argnums=(2, 3, 4))
def _create(key_params: jax.Array, key_dropout: jax.Array, hidden: int, dropout: float,
            lr: float) -> tuple[MLP, nnx.Optimizer]:
    model = MLP(64, hidden, 10, dropout, rngs=nnx.Rngs(params=key_params, dropout=key_dropout))
    return model, nnx.Optimizer(model, optax.adam(lr), wrt=nnx.Param)


def batch(rng: np.random.Generator, n: int, batch_size: int) -> np.ndarray:
    """The indices of one step's batch: the first ``batch_size`` of ``rng.permutation(n)``."""
    if batch_size > n:
        raise ValueError(f"batch_size {batch_size} is larger than the {n} training examples")
    return rng.permutation(n)[:batch_size]


def _loss(model: MLP, x: jax.Array, y: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
    logits = model(x, train=train)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, jnp.mean((jnp.argmax(logits, axis=-1) == y).astype(jnp.float32))


@nnx.jit
def train_step(model: MLP, optimizer: nnx.Optimizer, xb: jax.Array,
               yb: jax.Array) -> tuple[jax.Array, jax.Array, nnx.State]:
    """One Adam step in place; ``(loss, accuracy, grads)`` at the parameters before it."""
    (loss, acc), grads = nnx.value_and_grad(_loss, has_aux=True)(model, xb, yb, True)
    optimizer.update(model, grads)
    return loss, acc, grads


@nnx.jit
def evaluate(model: MLP, x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(mean loss, accuracy)`` with dropout off."""
    return _loss(model, x, y, False)


def config_of(ctx) -> dict:
    """The spec's config with the defaults filled in (unknown keys are an error)."""
    unknown = sorted(set(ctx.config) - set(DEFAULTS))
    if unknown:
        raise KeyError(f"zoo.nnx_mlp: unknown config keys {unknown}; known: {sorted(DEFAULTS)}")
    cfg = {**DEFAULTS, **ctx.config}
    return {"steps": int(cfg["steps"]), "lr": float(cfg["lr"]),
            "batch_size": int(cfg["batch_size"]), "hidden": int(cfg["hidden"]),
            "dropout": float(cfg["dropout"]), "eval_every": int(cfg["eval_every"])}


def train(ctx):
    """Train on ``ctx.data["digits"]`` with ``ctx.config`` (defaults: ``DEFAULTS``); return the
    final ``nnx.state(model, nnx.Param)``. Seeds: ``params``, ``dropout`` (jax keys) and
    ``data`` (batch order)."""
    cfg = config_of(ctx)
    data = load_digits(ctx.data["digits"])
    x_train, y_train = data["x_train"], data["y_train"]
    x_test, y_test = jnp.asarray(data["x_test"]), jnp.asarray(data["y_test"])

    model, optimizer = make_model(ctx.key("params"), ctx.key("dropout"), cfg)
    rng = np.random.default_rng(ctx.seed("data"))

    state = {"model": nnx.state(model), "opt": nnx.state(optimizer),
             "data_rng": rng.bit_generator.state}
    start, state = ctx.restore(state)
    nnx.update(model, state["model"])
    nnx.update(optimizer, state["opt"])
    rng.bit_generator.state = state["data_rng"]

    for step in range(start, cfg["steps"]):
        idx = batch(rng, x_train.shape[0], cfg["batch_size"])
        loss, acc, grads = train_step(model, optimizer, x_train[idx], y_train[idx])
        ctx.log(step, loss=loss, accuracy=acc)
        ctx.log_grads(step, grads)
        if (step + 1) % cfg["eval_every"] == 0 or step + 1 == cfg["steps"]:
            test_loss, test_acc = evaluate(model, x_test, y_test)
            ctx.log(step, test_loss=test_loss, test_accuracy=test_acc)
        ctx.checkpoint(step + 1, {"model": nnx.state(model), "opt": nnx.state(optimizer),
                                  "data_rng": rng.bit_generator.state})
    return nnx.state(model, nnx.Param)
