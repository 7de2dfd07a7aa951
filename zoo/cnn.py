"""Reference workload: a small CNN on the 8x8 digits images, trained with optax Adam.

Two 3x3 convolutions (``jax.lax.conv_general_dilated``, NHWC images, HWIO kernels, SAME
padding, relu): ``channels[0]`` filters at stride 1 (8x8), then ``channels[1]`` at stride 2
(4x4); flattened row-major and a dense layer to the 10 classes.

Same contract and replay recipe as ``zoo.mlp`` (whose ``load_digits`` and ``batches`` it uses):

* the data: ``load_digits(ctx.data["digits"])``; images are ``x.reshape(-1, 8, 8, 1)``, done
  inside ``apply`` so ``loss_fn`` takes the stored (n, 64) rows;
* the initial weights: ``init_params(ctx.key("params"), channels)``;
* the batch at every step: ``batches(np.random.default_rng(ctx.seed("data")), n_train,
  batch_size, epochs)``;
* the optimizer state ``make_init(lr)(params)`` and the jitted step ``make_update(lr)``:
  ``update(params, opt_state, xb, yb) -> (params, opt_state, loss, grads)``.

Step ``s`` logs ``loss`` and ``accuracy`` of its batch at the parameters before the update and
the gradient ``jax.grad(loss_fn)(params_s, xb, yb)``; the last step of every epoch also logs
``test_loss`` and ``test_accuracy`` after that step.

Imports only numpy, jax and optax.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .mlp import batches, load_digits

__all__ = ["DEFAULTS", "apply", "batches", "evaluate", "init_params", "load_digits", "loss_fn",
           "make_init", "make_optimizer", "make_update", "param_shapes", "train"]

DEFAULTS = {"epochs": 3, "lr": 3e-3, "batch_size": 64, "channels": [8, 16]}
_STRIDES = (1, 2)   # per conv layer
_IMAGE = (8, 8, 1)
_CLASSES = 10


# -- model ------------------------------------------------------------------------------------------
def param_shapes(channels: Sequence[int] = (8, 16)) -> dict[str, tuple[tuple[int, ...], int]]:
    """``name -> (kernel shape, fan_in)`` in layer order."""
    h, w, c = _IMAGE
    shapes = {}
    for i, (cout, stride) in enumerate(zip(channels, _STRIDES)):
        shapes[f"conv_{i}"] = ((3, 3, c, int(cout)), 9 * c)
        c = int(cout)
        h, w = -(-h // stride), -(-w // stride)
    shapes["dense_0"] = ((h * w * c, _CLASSES), h * w * c)
    return shapes


def init_params(key, channels: Sequence[int] = (8, 16)) -> dict:
    """``{"conv_0", "conv_1", "dense_0"}``, each ``{"kernel", "bias"}``, float32.

    Kernels are He-normal (``normal * sqrt(2 / fan_in)``, fan_in = 3*3*in_channels for a conv),
    all cut in layer order from ONE draw ``jax.random.normal(key, (total kernel size,))`` and
    reshaped row-major (conv kernels HWIO); biases are zero.
    """
    channels = tuple(int(c) for c in channels)
    if len(channels) != len(_STRIDES):
        raise ValueError(f"channels must list {len(_STRIDES)} conv widths, got {list(channels)}")
    return _init_params(key, channels)


@functools.partial(jax.jit, static_argnums=1)
def _init_params(key, channels: tuple[int, ...]) -> dict:
    shapes = param_shapes(channels)
    total = sum(int(np.prod(shape)) for shape, _ in shapes.values())
    z = jax.random.normal(key, (total,), jnp.float32)
    params, offset = {}, 0
    for name, (shape, fan_in) in shapes.items():
        size = int(np.prod(shape))
        params[name] = {"kernel": z[offset:offset + size].reshape(shape)
                        * jnp.float32(np.sqrt(2.0 / fan_in)),
                        "bias": jnp.zeros((shape[-1],), jnp.float32)}
        offset += size
    return params


def apply(params: dict, x) -> jax.Array:
    """Logits (batch, 10) for rows ``x`` of shape (batch, 64) (or images (batch, 8, 8, 1))."""
    h = jnp.reshape(x, (-1,) + _IMAGE)
    for i, stride in enumerate(_STRIDES):
        layer = params[f"conv_{i}"]
        h = jax.lax.conv_general_dilated(
            h, layer["kernel"], window_strides=(stride, stride), padding="SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"))
        h = jax.nn.relu(h + layer["bias"])
    h = h.reshape(h.shape[0], -1)
    return h @ params["dense_0"]["kernel"] + params["dense_0"]["bias"]


def loss_fn(params: dict, x, y) -> jax.Array:
    """Mean softmax cross-entropy of ``apply(params, x)`` against integer labels ``y``."""
    return optax.softmax_cross_entropy_with_integer_labels(apply(params, x), y).mean()


@jax.jit
def evaluate(params: dict, x, y) -> tuple[jax.Array, jax.Array]:
    """``(mean loss, accuracy)`` of ``params`` on ``(x, y)``."""
    logits = apply(params, x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    acc = jnp.mean((jnp.argmax(logits, axis=-1) == y).astype(jnp.float32))
    return loss, acc


# -- training ---------------------------------------------------------------------------------------
def make_optimizer(lr: float) -> optax.GradientTransformation:
    """``optax.adam(lr)`` with optax's defaults (b1 0.9, b2 0.999, eps 1e-8)."""
    return optax.adam(lr)


@functools.cache
def make_init(lr: float):
    """Jitted ``make_optimizer(lr).init``."""
    return jax.jit(make_optimizer(lr).init)


@functools.cache
def make_update(lr: float):
    """The jitted step ``update(params, opt_state, xb, yb) -> (params, opt_state, loss, grads)``,
    ``loss`` and ``grads`` taken at the incoming ``params``; cached per ``lr``."""
    opt = make_optimizer(lr)

    @jax.jit
    def update(params, opt_state, xb, yb):
        loss, grads = jax.value_and_grad(loss_fn)(params, xb, yb)
        updates, opt_state = opt.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, loss, grads

    return update


def config_of(ctx) -> dict:
    """The spec's config with the defaults filled in (unknown keys are an error)."""
    unknown = sorted(set(ctx.config) - set(DEFAULTS))
    if unknown:
        raise KeyError(f"zoo.cnn: unknown config keys {unknown}; known: {sorted(DEFAULTS)}")
    cfg = {**DEFAULTS, **ctx.config}
    return {"epochs": int(cfg["epochs"]), "lr": float(cfg["lr"]),
            "batch_size": int(cfg["batch_size"]),
            "channels": tuple(int(c) for c in cfg["channels"])}


def train(ctx):
    """Train on ``ctx.data["digits"]`` with ``ctx.config`` (defaults: ``DEFAULTS``); return the
    final params pytree. Seeds used: ``params`` (init) and ``data`` (batch order)."""
    cfg = config_of(ctx)
    data = load_digits(ctx.data["digits"])
    x_train, y_train = data["x_train"], data["y_train"]
    x_test, y_test = jnp.asarray(data["x_test"]), jnp.asarray(data["y_test"])

    params = init_params(ctx.key("params"), cfg["channels"])
    opt_state = make_init(cfg["lr"])(params)
    update = make_update(cfg["lr"])
    rng = np.random.default_rng(ctx.seed("data"))
    per_epoch = x_train.shape[0] // cfg["batch_size"]

    for step, _epoch, idx in batches(rng, x_train.shape[0], cfg["batch_size"], cfg["epochs"]):
        xb, yb = x_train[idx], y_train[idx]
        _, acc = evaluate(params, xb, yb)
        params, opt_state, loss, grads = update(params, opt_state, xb, yb)
        ctx.log(step, loss=loss, accuracy=acc)
        ctx.log_grads(step, grads)
        if (step + 1) % per_epoch == 0:
            test_loss, test_acc = evaluate(params, x_test, y_test)
            ctx.log(step, test_loss=test_loss, test_accuracy=test_acc)
    return params
