"""A 30-16-1 tanh MLP that tells benign from malignant tumours (the Wisconsin diagnostic
breast-cancer set in ``data/wdbc/``), trained with L2 weight decay and minibatch SGD with momentum.

``train(ctx)`` follows repro's training-function contract: the weights come from
``ctx.key("params")`` (one key per layer, folded in from the layer's name), the minibatch order from
``ctx.key("data")`` (one permutation per epoch), the hyper-parameters from ``ctx.config``. Every
step logs the batch's ``loss`` (mean binary cross-entropy, without the decay term) and
``accuracy`` at the parameters before the update, and its gradient; the last step of each epoch
also logs ``test_loss`` and ``test_accuracy`` after the update. Returns the final parameters.
"""
from __future__ import annotations

import zlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np


def read_split(directory: str, pattern: str) -> tuple[np.ndarray, np.ndarray]:
    """Features (float32) and labels (float32, 1 = benign) of every shard matching ``pattern``,
    shards in sorted name order."""
    shards = sorted(Path(directory).glob(pattern))
    if not shards:
        raise FileNotFoundError(f"no {pattern} in {directory}")
    table = np.concatenate([np.loadtxt(p, delimiter=",", skiprows=1, ndmin=2) for p in shards])
    return table[:, 1:].astype(np.float32), table[:, 0].astype(np.float32)


def layer_key(root: jax.Array, name: str) -> jax.Array:
    return jax.random.fold_in(root, zlib.crc32(name.encode()) & 0x7FFFFFFF)


def init_params(root: jax.Array, n_in: int, hidden: int) -> dict:
    w_hidden = jax.random.normal(layer_key(root, "hidden"), (n_in, hidden)) / np.sqrt(n_in)
    w_out = jax.random.normal(layer_key(root, "out"), (hidden, 1)) / np.sqrt(hidden)
    return {"hidden": {"w": w_hidden, "b": jnp.zeros((hidden,))},
            "out": {"w": w_out, "b": jnp.zeros((1,))}}


def logits(params: dict, x: jax.Array) -> jax.Array:
    h = jnp.tanh(x @ params["hidden"]["w"] + params["hidden"]["b"])
    return (h @ params["out"]["w"] + params["out"]["b"])[:, 0]


def loss_fn(params: dict, x: jax.Array, y: jax.Array, decay: float) -> tuple[jax.Array, jax.Array]:
    """(objective, data loss): mean binary cross-entropy plus decay/2 * |w|^2 (biases free)."""
    z = logits(params, x)
    per_example = jax.nn.softplus(z) - y * z
    data = jnp.mean(per_example)
    l2 = sum(jnp.sum(layer["w"] ** 2) for layer in params.values())
    return data + 0.5 * decay * l2, data


def accuracy(params: dict, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean((logits(params, x) > 0) == (y > 0.5))


def make_step(lr: float, momentum: float, decay: float):
    def step(params, velocity, x, y):
        (_, data_loss), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, x, y, decay)
        acc = accuracy(params, x, y)
        velocity = jax.tree_util.tree_map(lambda v, g: momentum * v + g, velocity, grads)
        params = jax.tree_util.tree_map(lambda p, v: p - lr * v, params, velocity)
        return params, velocity, data_loss, acc, grads
    return jax.jit(step)


def train(ctx):
    cfg = ctx.config
    x_train, y_train = read_split(ctx.data["wdbc"], "train-*.csv")
    x_test, y_test = (jnp.asarray(a) for a in read_split(ctx.data["wdbc"], "test.csv"))
    params = init_params(ctx.key("params"), x_train.shape[1], int(cfg["hidden"]))
    velocity = jax.tree_util.tree_map(jnp.zeros_like, params)
    step_fn = make_step(float(cfg["lr"]), float(cfg["momentum"]), float(cfg["weight_decay"]))
    evaluate = jax.jit(lambda p: (loss_fn(p, x_test, y_test, 0.0)[1], accuracy(p, x_test, y_test)))
    shuffle = ctx.key("data")
    n, batch = len(y_train), int(cfg["batch_size"])
    step = 0
    for epoch in range(int(cfg["epochs"])):
        order = np.asarray(jax.random.permutation(jax.random.fold_in(shuffle, epoch), n))
        for i in range(n // batch):
            idx = order[i * batch:(i + 1) * batch]
            params, velocity, loss, acc, grads = step_fn(params, velocity, x_train[idx], y_train[idx])
            ctx.log(step, loss=loss, accuracy=acc)
            ctx.log_grads(step, grads)
            step += 1
        test_loss, test_acc = evaluate(params)
        ctx.log(step - 1, test_loss=test_loss, test_accuracy=test_acc)
    return params
