"""Reference workload: a 2-layer MLP on the digits set, trained with optax Adam.

``train(ctx)`` follows the training-function contract (docs/context.md). Everything that decides
the numbers is reachable from here, so a test can replay any step exactly:

* the data: ``load_digits(ctx.data["digits"])`` (``fixtures/data/digits.npz``);
* the initial weights: ``init_params(ctx.key("params"), (64, hidden, 10))``;
* the batch at every step: ``batches(np.random.default_rng(ctx.seed("data")), n_train,
  batch_size, epochs)``;
* the optimizer state: ``make_init(lr)(params)`` (``make_optimizer(lr).init``, jitted);
* the step itself: ``make_update(lr)`` (one jitted function, cached per learning rate).

Step ``s`` logs ``loss`` (the mean softmax cross-entropy of that batch at the parameters *before*
the update, i.e. ``loss_fn(params_s, xb, yb)``), ``accuracy`` (the batch accuracy at the same
parameters) and the gradient ``jax.grad(loss_fn)(params_s, xb, yb)``. The last step of every epoch
also logs ``test_loss`` and ``test_accuracy`` at the parameters *after* that step.

Imports only numpy, jax and optax.
"""
from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

DEFAULTS = {"epochs": 10, "lr": 1e-3, "batch_size": 64, "hidden": 32}


# -- data -------------------------------------------------------------------------------------------
def load_digits(path: str) -> dict[str, np.ndarray]:
    """The four arrays of ``digits.npz``: x_train/x_test float32 (n, 64) in [0, 1], y int32."""
    with np.load(path, allow_pickle=False) as f:
        out = {name: np.asarray(f[name]) for name in ("x_train", "y_train", "x_test", "y_test")}
    for name in ("x_train", "x_test"):
        out[name] = out[name].astype(np.float32, copy=False)
    for name in ("y_train", "y_test"):
        out[name] = out[name].astype(np.int32, copy=False)
    return out


def batches(rng: np.random.Generator, n: int, batch_size: int,
            epochs: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield ``(step, epoch, indices)`` for every training step, in order.

    Each epoch draws one permutation ``rng.permutation(n)`` and cuts it into ``n // batch_size``
    consecutive batches of exactly ``batch_size`` indices (the remainder of the permutation is
    dropped, so every batch has the same shape and the step compiles once). ``step`` counts from
    0 across epochs. ``rng`` is consumed only by these permutations, so the batch at step ``s`` is
    ``list(batches(np.random.default_rng(seed), n, batch_size, epochs))[s][2]``.
    """
    per_epoch = n // batch_size
    if per_epoch < 1:
        raise ValueError(f"batch_size {batch_size} is larger than the {n} training examples")
    step = 0
    for epoch in range(epochs):
        perm = rng.permutation(n)
        for i in range(per_epoch):
            yield step, epoch, perm[i * batch_size:(i + 1) * batch_size]
            step += 1


# -- model ------------------------------------------------------------------------------------------
def init_params(key, sizes: Sequence[int] = (64, 32, 10)) -> dict:
    """``{"dense_i": {"kernel": (sizes[i], sizes[i+1]), "bias": (sizes[i+1],)}}``, float32.

    Kernels are He-normal, ``normal * sqrt(2 / fan_in)``; biases are zero. All kernels come from
    ONE draw ``jax.random.normal(key, (sum of kernel sizes,))`` cut in layer order, each piece
    reshaped row-major to (fan_in, fan_out): a single threefry call compiles in ~0.2 s where one
    per layer takes ~0.7 s, and compile time is most of this workload's run time.
    """
    return _init_params(key, tuple(int(s) for s in sizes))


@functools.partial(jax.jit, static_argnums=1)
def _init_params(key, sizes: tuple[int, ...]) -> dict:
    shapes = list(zip(sizes[:-1], sizes[1:]))
    z = jax.random.normal(key, (sum(a * b for a, b in shapes),), jnp.float32)
    params, offset = {}, 0
    for i, (fan_in, fan_out) in enumerate(shapes):
        w = z[offset:offset + fan_in * fan_out].reshape(fan_in, fan_out)
        offset += fan_in * fan_out
        params[f"dense_{i}"] = {"kernel": w * jnp.float32(np.sqrt(2.0 / fan_in)),
                                "bias": jnp.zeros((fan_out,), jnp.float32)}
    return params


def apply(params: dict, x) -> jax.Array:
    """Logits of shape (batch, 10): dense layers with relu between them (none after the last)."""
    n = len(params)
    h = x
    for i in range(n):
        layer = params[f"dense_{i}"]
        h = h @ layer["kernel"] + layer["bias"]
        if i < n - 1:
            h = jax.nn.relu(h)
    return h


def loss_fn(params: dict, x, y) -> jax.Array:
    """Mean softmax cross-entropy of ``apply(params, x)`` against integer labels ``y``."""
    logits = apply(params, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


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
    """Jitted ``make_optimizer(lr).init`` (eager init compiles one tiny kernel per leaf)."""
    return jax.jit(make_optimizer(lr).init)


@functools.cache
def make_update(lr: float):
    """The jitted step ``update(params, opt_state, xb, yb) -> (params, opt_state, loss, grads)``.

    ``loss`` and ``grads`` are those of ``loss_fn`` at the incoming ``params``. Cached per ``lr``
    so repeated calls (tests, hypothesis examples) reuse one compiled function.
    """
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
        raise KeyError(f"zoo.mlp: unknown config keys {unknown}; known: {sorted(DEFAULTS)}")
    cfg = {**DEFAULTS, **ctx.config}
    return {"epochs": int(cfg["epochs"]), "lr": float(cfg["lr"]),
            "batch_size": int(cfg["batch_size"]), "hidden": int(cfg["hidden"])}


def train(ctx):
    """Train on ``ctx.data["digits"]`` with ``ctx.config`` (defaults: ``DEFAULTS``); return the
    final params pytree. Seeds used: ``params`` (init) and ``data`` (batch order)."""
    cfg = config_of(ctx)
    data = load_digits(ctx.data["digits"])
    x_train, y_train = data["x_train"], data["y_train"]
    x_test, y_test = jnp.asarray(data["x_test"]), jnp.asarray(data["y_test"])

    params = init_params(ctx.key("params"), (x_train.shape[1], cfg["hidden"], 10))
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
