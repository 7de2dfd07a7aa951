"""Sharded training (docs/sharding.md): a spec's devices and mesh, sharded values in records,
sharded checkpoints restored onto the spec's mesh, resharded programs named.

The workload is a tiny 2-layer MLP on 4 forced CPU devices (`{data: 2, model: 2}`): the batch
is split over `data`, the hidden layer over `model`. Real jax, real git, real child processes.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

from conftest import Project, build_workload, sha256

SHARDED_PY = '''
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

HIDDEN = P(None, "model")   # the hidden layer's columns over `model`


def train(ctx):
    mesh = ctx.mesh
    d = np.load(ctx.data["xy"])
    batch = NamedSharding(mesh, P("data", None))
    x = jax.device_put(jnp.asarray(d["x"]), batch)
    y = jax.device_put(jnp.asarray(d["y"]), batch)
    k1, k2 = jax.random.split(ctx.key("params"))
    put = lambda a, spec: jax.device_put(a, NamedSharding(mesh, spec))
    params = {"hidden": {"w": put(jax.random.normal(k1, (4, 8)) * 0.3, HIDDEN),
                         "b": put(jnp.zeros((8,)), P("model"))},
              "out": {"w": put(jax.random.normal(k2, (8, 1)) * 0.3, P("model", None)),
                      "b": put(jnp.zeros((1,)), P())}}

    def loss_fn(p, x, y):
        h = jnp.tanh(x @ p["hidden"]["w"] + p["hidden"]["b"])
        return jnp.mean((h @ p["out"]["w"] + p["out"]["b"] - y) ** 2)

    lr = ctx.config["lr"]
    step_fn = ctx.traced(jax.jit(jax.value_and_grad(loss_fn)))
    update = jax.jit(lambda p, g: jax.tree_util.tree_map(lambda a, b: a - lr * b, p, g))
    start, params = ctx.restore(params)
    for step in range(start, ctx.config["steps"]):
        loss, g = step_fn(params, x, y)
        params = update(params, g)
        ctx.log(step, loss=loss)
        ctx.log_grads(step, g)
        ctx.checkpoint(step + 1, params)
    return params
'''

SPEC = '''\
repro: 1
name: tiny
code:
  commit: {commit}
  entrypoint: tinyproj.train:train
data:
  xy:
    path: data/xy.npz
    sha256: {sha}
environment:
  devices: 4
  mesh: {{data: 2, model: 2}}
seeds: {{params: 0}}
config: {{lr: 0.05, steps: 8}}
record:
  metrics: [loss]
  grads: {{every: 4}}
  checkpoints: {{every: 4}}
  runs: 1
'''


def make_sharded(root: Path) -> Project:
    p, _ = build_workload(root)
    p.write("tinyproj/train.py", textwrap.dedent(SHARDED_PY))
    commit = p.commit("sharded workload")
    p.write("specs/tiny.yaml", SPEC.format(commit=commit, sha=sha256(p.data)))
    p.commit("spec")
    return p
