"""Reference workload: a small character-level transformer language model, AdamW, checkpointed.

The long workload of the zoo: a decoder-only transformer (token + learned positional embedding,
``layers`` pre-LayerNorm blocks of causal multi-head self-attention and a GELU MLP, a final
LayerNorm, an output head tied to the token embedding unless ``tied`` is false) trained on the
bytes of ``fixtures/data/corpus.txt`` for a few thousand steps with ``optax.adamw`` under a
linear-warmup + cosine schedule and global-norm gradient clipping. Its ``train(ctx)`` follows the
checkpoint contract (``ctx.restore`` / ``ctx.checkpoint``, docs/context.md), so a replay can
resume from any checkpointed step.

Everything that decides the numbers is reachable from here, so a test can replay any step:

* the data: ``load_corpus(ctx.data["corpus"])`` (uint8 ASCII bytes; token = byte value,
  vocabulary ``VOCAB`` = 128) cut by ``split(tokens)`` into the first 90% (training) and the
  last 10% (validation), by position;
* the initial weights: ``init_params(ctx.key("params"), d_model=..., layers=..., seq_len=...,
  tied=...)`` (one jitted function);
* the batch at every step: ``batch(rng, train_tokens, batch_size, seq_len)`` with
  ``rng = np.random.default_rng(ctx.seed("data"))``, called once per step in order (it draws
  ``batch_size`` window offsets with ``rng.integers``, nothing else touches ``rng``);
* the fixed validation batch: ``validation_batch(val_tokens, seq_len)`` (evenly spaced windows,
  no randomness);
* the optimizer: ``make_optimizer(lr, steps, warmup, weight_decay, clip)``, its state
  ``make_init(...)(params)``;
* the step itself: ``make_update(heads, lr, steps, warmup, weight_decay, clip)`` (one jitted
  function, cached per argument tuple), returning ``(params, opt_state, loss, grads)``.

Step ``s`` logs ``loss`` (mean next-byte cross-entropy of that batch at the parameters *before*
the update, i.e. ``loss_fn(params_s, xb, yb, heads)``) and the gradient
``jax.grad(loss_fn)(params_s, xb, yb, heads)`` (kept on the steps the spec asks for). Every
``eval_every`` steps (after step ``s`` with ``(s + 1) % eval_every == 0``) it also logs
``val_loss``, the loss on the fixed validation batch at the parameters *after* step ``s``.
After every step it offers ``ctx.checkpoint(s + 1, state)`` with
``state = {"params", "opt_state", "data_rng"}``, where ``data_rng`` is
``rng.bit_generator.state`` (a dict holding 128-bit Python ints) and ``opt_state`` is optax's
state (namedtuples, int32 step counts).

Imports only numpy, jax and optax.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

VOCAB = 128              # ASCII bytes; the token of a character is its byte value
VAL_FRACTION = 0.1       # the last 10% of the corpus (by position) is the validation split
VAL_WINDOWS = 64         # windows in the fixed validation batch

DEFAULTS = {"steps": 3000, "lr": 3e-3, "batch_size": 24, "seq_len": 64, "d_model": 80,
            "heads": 4, "layers": 2, "warmup": 200, "weight_decay": 0.01, "clip": 1.0,
            "eval_every": 250, "tied": True}


# -- data -------------------------------------------------------------------------------------------
def load_corpus(path: str) -> np.ndarray:
    """The corpus as a uint8 array of byte values (every byte must be ASCII, < ``VOCAB``)."""
    with open(path, "rb") as f:
        tokens = np.frombuffer(f.read(), dtype=np.uint8).copy()
    if tokens.size and int(tokens.max()) >= VOCAB:
        raise ValueError(f"{path}: non-ASCII byte {int(tokens.max())}; the vocabulary is bytes < {VOCAB}")
    return tokens


def split(tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(train, val)``: the first ``len - len // 10`` tokens and the last ``len // 10``."""
    n_val = int(len(tokens) * VAL_FRACTION)
    return tokens[:len(tokens) - n_val], tokens[len(tokens) - n_val:]


def batch(rng: np.random.Generator, tokens: np.ndarray, batch_size: int,
          seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """One training batch ``(x, y)``, int32 (batch_size, seq_len), ``y`` = ``x`` shifted by one.

    Draws ``offsets = rng.integers(0, len(tokens) - seq_len, size=batch_size)`` (the only use of
    ``rng``); row ``i`` is ``tokens[o:o + seq_len]`` and its targets ``tokens[o + 1:o + seq_len + 1]``.
    """
    hi = len(tokens) - seq_len
    if hi < 1:
        raise ValueError(f"seq_len {seq_len} does not fit in {len(tokens)} tokens")
    offsets = rng.integers(0, hi, size=batch_size)
    idx = offsets[:, None] + np.arange(seq_len + 1)[None, :]
    win = tokens[idx].astype(np.int32)
    return win[:, :-1], win[:, 1:]


def validation_batch(tokens: np.ndarray, seq_len: int,
                     windows: int = VAL_WINDOWS) -> tuple[np.ndarray, np.ndarray]:
    """The fixed validation batch: ``windows`` evenly spaced windows, offsets
    ``i * (len(tokens) - seq_len - 1) // (windows - 1)`` (integer arithmetic, no randomness)."""
    hi = len(tokens) - seq_len - 1
    if hi < 0:
        raise ValueError(f"seq_len {seq_len} does not fit in the {len(tokens)} validation tokens")
    offsets = np.array([i * hi // max(windows - 1, 1) for i in range(windows)], dtype=np.int64)
    idx = offsets[:, None] + np.arange(seq_len + 1)[None, :]
    win = tokens[idx].astype(np.int32)
    return win[:, :-1], win[:, 1:]


# -- model ------------------------------------------------------------------------------------------
def _shapes(d_model: int, layers: int, seq_len: int, tied: bool) -> list[tuple[tuple[str, ...], tuple[int, ...]]]:
    """The normal-initialised matrices, in draw order: (path, shape)."""
    d = d_model
    out: list[tuple[tuple[str, ...], tuple[int, ...]]] = [
        (("tok_emb",), (VOCAB, d)), (("pos_emb",), (seq_len, d))]
    for i in range(layers):
        b = f"block_{i}"
        out += [((b, "attn", "qkv"), (d, 3 * d)), ((b, "attn", "out"), (d, d)),
                ((b, "mlp", "fc"), (d, 4 * d)), ((b, "mlp", "proj"), (4 * d, d))]
    if not tied:
        out.append((("head",), (d, VOCAB)))
    return out


def init_params(key, d_model: int = 64, layers: int = 2, seq_len: int = 64, tied: bool = True) -> dict:
    """The parameter pytree, float32.

    ``tok_emb`` (VOCAB, d), ``pos_emb`` (seq_len, d), ``block_i`` = ``{"ln1": {scale, bias},
    "attn": {"qkv" (d, 3d), "qkv_bias", "out" (d, d), "out_bias"}, "ln2", "mlp": {"fc" (d, 4d),
    "fc_bias", "proj" (4d, d), "proj_bias"}}``, ``ln_f``, and ``head`` (d, VOCAB) when untied.
    Matrices are ``normal * 0.02`` (the residual projections ``out`` and ``proj`` scaled by a
    further ``1 / sqrt(2 * layers)``), biases zero, LayerNorm scales one. All matrices come from
    ONE draw ``jax.random.normal(key, (total,))`` cut in the order of ``_shapes``, each piece
    reshaped row-major: one threefry call compiles once, where one per matrix costs a compile each.
    """
    return _init_params(key, int(d_model), int(layers), int(seq_len), bool(tied))


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _init_params(key, d_model: int, layers: int, seq_len: int, tied: bool) -> dict:
    shapes = _shapes(d_model, layers, seq_len, tied)
    z = jax.random.normal(key, (sum(int(np.prod(s)) for _, s in shapes),), jnp.float32)
    resid = jnp.float32(0.02 / np.sqrt(2.0 * layers))
    params: dict = {}
    offset = 0
    for path, shape in shapes:
        size = int(np.prod(shape))
        w = z[offset:offset + size].reshape(shape)
        offset += size
        w = w * (resid if path[-1] in ("out", "proj") else jnp.float32(0.02))
        node = params
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = w

    def ln() -> dict:
        return {"scale": jnp.ones((d_model,), jnp.float32), "bias": jnp.zeros((d_model,), jnp.float32)}

    for i in range(layers):
        b = params[f"block_{i}"]
        b["ln1"], b["ln2"] = ln(), ln()
        b["attn"]["qkv_bias"] = jnp.zeros((3 * d_model,), jnp.float32)
        b["attn"]["out_bias"] = jnp.zeros((d_model,), jnp.float32)
        b["mlp"]["fc_bias"] = jnp.zeros((4 * d_model,), jnp.float32)
        b["mlp"]["proj_bias"] = jnp.zeros((d_model,), jnp.float32)
    params["ln_f"] = ln()
    return params


def n_params(params: dict) -> int:
    return int(sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params)))


def _layer_norm(p: dict, x: jax.Array) -> jax.Array:
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + 1e-5) * p["scale"] + p["bias"]


def _attention(p: dict, x: jax.Array, heads: int) -> jax.Array:
    b, t, d = x.shape
    hd = d // heads
    qkv = x @ p["qkv"] + p["qkv_bias"]                                  # (b, t, 3d)
    q, k, v = jnp.split(qkv.reshape(b, t, 3, heads, hd), 3, axis=2)     # (b, t, 1, h, hd)
    q, k, v = (a[:, :, 0].transpose(0, 2, 1, 3) for a in (q, k, v))     # (b, h, t, hd)
    s = (q @ k.transpose(0, 1, 3, 2)) * jnp.float32(1.0 / np.sqrt(hd))  # (b, h, t, t)
    causal = jnp.tril(jnp.ones((t, t), dtype=bool))
    s = jnp.where(causal, s, jnp.float32(-1e9))
    a = jax.nn.softmax(s, axis=-1) @ v                                  # (b, h, t, hd)
    a = a.transpose(0, 2, 1, 3).reshape(b, t, d)
    return a @ p["out"] + p["out_bias"]


def apply(params: dict, x, heads: int) -> jax.Array:
    """Logits (batch, t, VOCAB) for int tokens ``x`` (batch, t), t <= seq_len."""
    t = x.shape[1]
    h = params["tok_emb"][x] + params["pos_emb"][:t]
    i = 0
    while f"block_{i}" in params:
        blk = params[f"block_{i}"]
        h = h + _attention(blk["attn"], _layer_norm(blk["ln1"], h), heads)
        m = _layer_norm(blk["ln2"], h) @ blk["mlp"]["fc"] + blk["mlp"]["fc_bias"]
        h = h + jax.nn.gelu(m) @ blk["mlp"]["proj"] + blk["mlp"]["proj_bias"]
        i += 1
    h = _layer_norm(params["ln_f"], h)
    head = params["head"] if "head" in params else params["tok_emb"].T
    return h @ head


def loss_fn(params: dict, x, y, heads: int) -> jax.Array:
    """Mean next-byte softmax cross-entropy over every position of the batch (nats)."""
    logits = apply(params, x, heads)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


@functools.partial(jax.jit, static_argnums=3)
def evaluate(params: dict, x, y, heads: int) -> jax.Array:
    """``loss_fn`` on a (validation) batch."""
    return loss_fn(params, x, y, heads)


# -- training ---------------------------------------------------------------------------------------
def _decay_mask(params):
    """Weight decay on matrices and embeddings only (ndim >= 2), not on biases or LayerNorm."""
    return jax.tree_util.tree_map(lambda p: p.ndim >= 2, params)


def make_optimizer(lr: float, steps: int, warmup: int, weight_decay: float,
                   clip: float) -> optax.GradientTransformation:
    """``clip_by_global_norm(clip)`` then ``adamw`` (b1 0.9, b2 0.999, eps 1e-8, decay masked by
    ``_decay_mask``) under ``warmup_cosine_decay_schedule(0, lr, warmup, steps, lr / 10)``."""
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=lr, warmup_steps=warmup, decay_steps=steps, end_value=lr / 10)
    return optax.chain(optax.clip_by_global_norm(clip),
                       optax.adamw(schedule, weight_decay=weight_decay, mask=_decay_mask))


@functools.cache
def make_init(lr: float, steps: int, warmup: int, weight_decay: float, clip: float):
    """Jitted ``make_optimizer(...).init``."""
    return jax.jit(make_optimizer(lr, steps, warmup, weight_decay, clip).init)


@functools.cache
def make_update(heads: int, lr: float, steps: int, warmup: int, weight_decay: float, clip: float):
    """The jitted step ``update(params, opt_state, xb, yb) -> (params, opt_state, loss, grads)``.

    ``loss`` and ``grads`` are those of ``loss_fn`` at the incoming ``params`` (before clipping).
    Cached per argument tuple so repeated calls reuse one compiled function.
    """
    opt = make_optimizer(lr, steps, warmup, weight_decay, clip)

    @jax.jit
    def update(params, opt_state, xb, yb):
        loss, grads = jax.value_and_grad(loss_fn)(params, xb, yb, heads)
        updates, opt_state = opt.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, loss, grads

    return update


def config_of(ctx) -> dict:
    """The spec's config with the defaults filled in (unknown keys are an error)."""
    unknown = sorted(set(ctx.config) - set(DEFAULTS))
    if unknown:
        raise KeyError(f"zoo.lm: unknown config keys {unknown}; known: {sorted(DEFAULTS)}")
    cfg = {**DEFAULTS, **ctx.config}
    out: dict = {k: int(cfg[k]) for k in ("steps", "batch_size", "seq_len", "d_model", "heads", "layers",
                                           "warmup", "eval_every")}
    out.update(lr=float(cfg["lr"]), weight_decay=float(cfg["weight_decay"]), clip=float(cfg["clip"]),
               tied=bool(cfg["tied"]))
    if out["d_model"] % out["heads"]:
        raise ValueError(f"zoo.lm: d_model {out['d_model']} is not a multiple of heads {out['heads']}")
    if not 0 <= out["warmup"] < out["steps"]:
        raise ValueError(f"zoo.lm: warmup {out['warmup']} must be in [0, steps {out['steps']})")
    return out


def _opt_args(cfg: dict) -> tuple[float, int, int, float, float]:
    return cfg["lr"], cfg["steps"], cfg["warmup"], cfg["weight_decay"], cfg["clip"]


def train(ctx):
    """Train on ``ctx.data["corpus"]`` with ``ctx.config`` (defaults: ``DEFAULTS``); return the
    final params pytree. Seeds used: ``params`` (init) and ``data`` (batch offsets). Resumable:
    the state is restored with ``ctx.restore`` and offered to ``ctx.checkpoint`` after each step."""
    cfg = config_of(ctx)
    train_tokens, val_tokens = split(load_corpus(ctx.data["corpus"]))
    xv, yv = (jnp.asarray(a) for a in validation_batch(val_tokens, cfg["seq_len"]))

    params = init_params(ctx.key("params"), cfg["d_model"], cfg["layers"], cfg["seq_len"], cfg["tied"])
    opt_state = make_init(*_opt_args(cfg))(params)
    update = make_update(cfg["heads"], *_opt_args(cfg))
    rng = np.random.default_rng(ctx.seed("data"))

    state = {"params": params, "opt_state": opt_state, "data_rng": rng.bit_generator.state}
    start, state = ctx.restore(state)
    params, opt_state = state["params"], state["opt_state"]
    rng.bit_generator.state = state["data_rng"]

    for step in range(start, cfg["steps"]):
        xb, yb = batch(rng, train_tokens, cfg["batch_size"], cfg["seq_len"])
        params, opt_state, loss, grads = update(params, opt_state, xb, yb)
        ctx.log(step, loss=loss)
        ctx.log_grads(step, grads)
        if (step + 1) % cfg["eval_every"] == 0:
            ctx.log(step, val_loss=evaluate(params, xv, yv, cfg["heads"]))
        ctx.checkpoint(step + 1, {"params": params, "opt_state": opt_state,
                                  "data_rng": rng.bit_generator.state})
    return params
