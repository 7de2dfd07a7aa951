"""Reference workload: a data- plus tensor-parallel character-level transformer on ``ctx.mesh``.

The sharded workload of the zoo (docs/sharding.md): a small decoder-only transformer (token +
learned positional embedding, ``layers`` pre-LayerNorm blocks of causal multi-head attention and
a GELU MLP, final LayerNorm, head tied to the token embedding) trained with Adam on the bytes of
``fixtures/data/corpus.txt`` — the data, batching and validation of ``zoo.lm`` — laid out
Megatron-style on a two-axis mesh:

* the batch over the first mesh axis (``data``): every device sees ``batch_size / data`` rows;
* attention heads and the MLP's hidden units over the second axis (``model``): ``q``, ``k``,
  ``v`` and ``fc`` are split by columns (``P(None, "model")``; head ``h`` owns columns
  ``h*hd:(h+1)*hd``, so a shard holds whole heads), ``out`` and ``proj`` by rows
  (``P("model", None)``); embeddings and LayerNorms are replicated.

The step is one ``jax.jit`` with explicit ``in_shardings`` / ``out_shardings`` (``NamedSharding``
on ``ctx.mesh``): XLA's SPMD partitioner inserts the all-reduces (the row-parallel matmuls'
partial sums over ``model``, the gradient sums over ``data``). Every contraction is at most 256
terms (batch x seq_len = 8 x 32 tokens; MLP width 4 x 64), so a slice fits a 32 KiB L1
(docs/portability.md).

Logged per step ``s``: ``loss`` (the batch's mean next-byte cross-entropy at the parameters
before the update) and its gradient (``ctx.log_grads``); after every ``eval_every``-th step
``val_loss`` on ``zoo.lm``'s fixed validation batch (its first ``val_windows`` windows). Returns
the final params (global values; the record keeps their PartitionSpecs). Resumable: the state
(params, Adam's state, the batch generator's state) is restored with ``ctx.restore`` and offered
to ``ctx.checkpoint`` after each step; a kept state keeps each leaf's PartitionSpec, and a
restored one is laid out by it on ``ctx.mesh`` (``--segments``, ``--resume-check``).

Imports only numpy, jax, optax and zoo.lm's data helpers and LayerNorm.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from zoo.lm import VOCAB, _layer_norm, batch, load_corpus, split, validation_batch

DEFAULTS = {"steps": 60, "lr": 3e-3, "batch_size": 8, "seq_len": 32, "d_model": 64, "heads": 4,
            "layers": 2, "eval_every": 20, "val_windows": 8}

DATA, MODEL = "data", "model"   # the mesh's axis names, in order


# -- layout -----------------------------------------------------------------------------------------
def param_specs(layers: int) -> dict:
    """The PartitionSpec of every parameter (the pytree of ``init_params``)."""
    col, row, rep = P(None, MODEL), P(MODEL, None), P()
    ln = {"scale": rep, "bias": rep}
    out: dict = {"tok_emb": rep, "pos_emb": rep, "ln_f": ln}
    for i in range(layers):
        out[f"block_{i}"] = {
            "ln1": ln, "ln2": ln,
            "attn": {"q": col, "k": col, "v": col, "out": row, "out_bias": rep},
            "mlp": {"fc": col, "fc_bias": P(MODEL), "proj": row, "proj_bias": rep}}
    return out


def check_mesh(mesh: Mesh, cfg: dict) -> None:
    """The mesh must be (data, model) and divide the batch, the heads and the MLP width."""
    if tuple(mesh.axis_names) != (DATA, MODEL):
        raise ValueError(f"zoo.sharded_lm: the mesh's axes are {tuple(mesh.axis_names)}; it needs "
                         f"environment.mesh: {{{DATA}: N, {MODEL}: M}} in that order")
    data, model = mesh.shape[DATA], mesh.shape[MODEL]
    if cfg["batch_size"] % data:
        raise ValueError(f"zoo.sharded_lm: batch_size {cfg['batch_size']} is not a multiple of "
                         f"the data axis ({data})")
    if cfg["heads"] % model:
        raise ValueError(f"zoo.sharded_lm: heads {cfg['heads']} is not a multiple of the model "
                         f"axis ({model})")


# -- model ------------------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def init_params(key, d_model: int, layers: int, seq_len: int) -> dict:
    """float32 params: matrices ``normal * 0.02`` (``out`` and ``proj`` further / sqrt(2 layers)),
    biases zero, LayerNorm scales one; one normal draw per matrix from ``fold_in(key, i)``."""
    d = d_model
    resid = 0.02 / np.sqrt(2.0 * layers)

    def normal(i: int, shape: tuple[int, ...], scale: float) -> jax.Array:
        return jax.random.normal(jax.random.fold_in(key, i), shape, jnp.float32) * jnp.float32(scale)

    def ln() -> dict:
        return {"scale": jnp.ones((d,), jnp.float32), "bias": jnp.zeros((d,), jnp.float32)}

    params: dict = {"tok_emb": normal(0, (VOCAB, d), 0.02), "pos_emb": normal(1, (seq_len, d), 0.02),
                    "ln_f": ln()}
    for i in range(layers):
        base = 2 + 6 * i
        params[f"block_{i}"] = {
            "ln1": ln(), "ln2": ln(),
            "attn": {"q": normal(base, (d, d), 0.02), "k": normal(base + 1, (d, d), 0.02),
                     "v": normal(base + 2, (d, d), 0.02), "out": normal(base + 3, (d, d), resid),
                     "out_bias": jnp.zeros((d,), jnp.float32)},
            "mlp": {"fc": normal(base + 4, (d, 4 * d), 0.02), "fc_bias": jnp.zeros((4 * d,), jnp.float32),
                    "proj": normal(base + 5, (4 * d, d), resid), "proj_bias": jnp.zeros((d,), jnp.float32)}}
    return params


def _attention(p: dict, x: jax.Array, heads: int) -> jax.Array:
    b, t, d = x.shape
    hd = d // heads

    def split_heads(w: jax.Array) -> jax.Array:   # (b, t, d) -> (b, heads, t, hd)
        return (x @ w).reshape(b, t, heads, hd).transpose(0, 2, 1, 3)

    q, k, v = split_heads(p["q"]), split_heads(p["k"]), split_heads(p["v"])
    att = (q @ k.transpose(0, 1, 3, 2)) * jnp.float32(1.0 / np.sqrt(hd))
    causal = jnp.tril(jnp.ones((t, t), dtype=bool))
    att = jax.nn.softmax(jnp.where(causal, att, jnp.float32(-1e9)), axis=-1)
    y = (att @ v).transpose(0, 2, 1, 3).reshape(b, t, d)
    return y @ p["out"] + p["out_bias"]


def apply(params: dict, x: jax.Array, heads: int) -> jax.Array:
    """Logits (batch, seq_len, VOCAB) of int32 tokens ``x`` (batch, seq_len)."""
    h = params["tok_emb"][x] + params["pos_emb"][: x.shape[1]]
    for i in range(sum(1 for k in params if k.startswith("block_"))):
        blk = params[f"block_{i}"]
        h = h + _attention(blk["attn"], _layer_norm(blk["ln1"], h), heads)
        m = jax.nn.gelu(_layer_norm(blk["ln2"], h) @ blk["mlp"]["fc"] + blk["mlp"]["fc_bias"])
        h = h + m @ blk["mlp"]["proj"] + blk["mlp"]["proj_bias"]
    return _layer_norm(params["ln_f"], h) @ params["tok_emb"].T


def loss_fn(params: dict, x: jax.Array, y: jax.Array, heads: int) -> jax.Array:
    logits = apply(params, x, heads)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def make_step(mesh: Mesh, heads: int, lr: float, layers: int):
    """The jitted training step on ``mesh``: ``(params, opt_state, x, y) -> (params, opt_state,
    loss, grads)``, params and grads laid out by ``param_specs``, the batch over ``data``."""
    specs = param_specs(layers)
    shard = lambda tree: jax.tree_util.tree_map(lambda s: NamedSharding(mesh, s), tree)  # noqa: E731
    p_sh = shard(specs)
    opt = optax.adam(lr)
    o_sh = shard(jax.tree_util.tree_map(lambda _: P(), opt.init(jnp.zeros(()))))
    # the opt state's moments follow the params; its counts are replicated
    o_sh = (optax.ScaleByAdamState(count=NamedSharding(mesh, P()), mu=p_sh, nu=p_sh), o_sh[1])
    b_sh = NamedSharding(mesh, P(DATA, None))
    rep = NamedSharding(mesh, P())

    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y, heads)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, grads

    jitted = jax.jit(step, in_shardings=(p_sh, o_sh, b_sh, b_sh),
                     out_shardings=(p_sh, o_sh, rep, p_sh), donate_argnums=(0, 1))
    init = jax.jit(opt.init, in_shardings=(p_sh,), out_shardings=o_sh)
    evaluate = jax.jit(functools.partial(loss_fn, heads=heads), in_shardings=(p_sh, b_sh, b_sh),
                       out_shardings=rep)
    return p_sh, b_sh, init, jitted, evaluate


def config_of(ctx) -> dict:
    unknown = set(ctx.config) - set(DEFAULTS)
    if unknown:
        raise KeyError(f"zoo.sharded_lm: unknown config keys {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    cfg = {**DEFAULTS, **ctx.config}
    out: dict = {k: int(cfg[k]) for k in DEFAULTS if k != "lr"}
    out["lr"] = float(cfg["lr"])
    if out["d_model"] % out["heads"]:
        raise ValueError(f"zoo.sharded_lm: d_model {out['d_model']} is not a multiple of heads {out['heads']}")
    return out


def train(ctx):
    """Train on ``ctx.data["corpus"]`` over ``ctx.mesh`` with ``ctx.config`` (defaults:
    ``DEFAULTS``); return the final params. Seeds: ``params`` (init) and ``data`` (batches)."""
    cfg = config_of(ctx)
    mesh = ctx.mesh
    check_mesh(mesh, cfg)
    train_tokens, val_tokens = split(load_corpus(ctx.data["corpus"]))
    xv, yv = validation_batch(val_tokens, cfg["seq_len"])
    xv, yv = xv[: cfg["val_windows"]], yv[: cfg["val_windows"]]

    p_sh, b_sh, init, step_fn, evaluate = make_step(mesh, cfg["heads"], cfg["lr"], cfg["layers"])
    params = jax.device_put(init_params(ctx.key("params"), cfg["d_model"], cfg["layers"],
                                        cfg["seq_len"]), p_sh)
    opt_state = init(params)
    xv, yv = jax.device_put(xv, b_sh), jax.device_put(yv, b_sh)
    rng = np.random.default_rng(ctx.seed("data"))

    # a replayed segment starts from a kept state, laid out as it was kept (on this mesh)
    start, state = ctx.restore({"params": params, "opt_state": opt_state,
                                "data_rng": rng.bit_generator.state})
    params, opt_state = state["params"], state["opt_state"]
    rng.bit_generator.state = state["data_rng"]
    for step in range(start, cfg["steps"]):
        xb, yb = batch(rng, train_tokens, cfg["batch_size"], cfg["seq_len"])
        params, opt_state, loss, grads = step_fn(params, opt_state, jax.device_put(xb, b_sh),
                                                 jax.device_put(yb, b_sh))
        ctx.log(step, loss=loss)
        ctx.log_grads(step, grads)
        if (step + 1) % cfg["eval_every"] == 0:
            ctx.log(step, val_loss=evaluate(params, xv, yv))
        ctx.checkpoint(step + 1, {"params": params, "opt_state": opt_state,
                                  "data_rng": rng.bit_generator.state})
    return params
