"""Flax state in repro (issue #13, "Flax"): leaf paths that read naturally, checkpoints that
give the same Flax structure back bit for bit, and the Flax workload verified bitwise.

Real Flax throughout: the NNX model, nnx.Optimizer and nnx.Rngs of `zoo.nnx_mlp`, a Linen
module's FrozenDict variables, a flax.struct dataclass. The spec check records
`specs/flax-digits-mlp.yaml` into a tmp directory on this host and verifies against that (never
against the committed record's host).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx, struct
from flax.core import freeze

from repro.child.checkpoint import Checkpoints
from repro.child.state import LeafKind
from repro.child.treepath import flatten_with_paths, numeric_leaves
from zoo import nnx_mlp

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "fixtures" / "data" / "digits.npz"


def fresh(seed: int = 0):
    """zoo.nnx_mlp's model and optimizer from `seed`, and the digits training data."""
    cfg = dict(nnx_mlp.DEFAULTS)
    model, opt = nnx_mlp.make_model(jax.random.PRNGKey(seed), jax.random.PRNGKey(seed + 2), cfg)
    data = nnx_mlp.load_digits(str(DIGITS))
    return model, opt, data["x_train"], data["y_train"]


def steps(model, opt, x, y, rng, n: int) -> list[float]:
    out = []
    for _ in range(n):
        idx = nnx_mlp.batch(rng, x.shape[0], 64)
        loss, _, _ = nnx_mlp.train_step(model, opt, x[idx], y[idx])
        out.append(float(loss))
    return out


@pytest.mark.slow
def test_flax_leaves_are_named_like_the_model_not_like_its_wrappers():
    model, opt, x, y = fresh()
    _, _, grads = nnx_mlp.train_step(model, opt, x[:64], y[:64])
    names = ["linear1/bias", "linear1/kernel", "linear2/bias", "linear2/kernel"]
    # the nnx.State of Param gradients ctx.log_grads gets, and the weights train returns
    assert [p for p, _ in numeric_leaves(grads, "grads")] == names
    weights = numeric_leaves(nnx.state(model, nnx.Param), "weights")
    assert [p for p, _ in weights] == names
    assert weights[1][1].shape == (64, 32) and weights[1][1].dtype == np.float32
    state = {"model": nnx.state(model), "opt": nnx.state(opt)}
    paths = [p for p, _ in flatten_with_paths(state)]
    assert {"model/dropout/rngs/count", "model/dropout/rngs/key", "opt/step",
            "opt/opt_state/0/count", "opt/opt_state/0/mu/linear1/kernel",
            "opt/opt_state/0/nu/linear2/bias"} <= set(paths)
    assert not any(seg in ("value", "raw_value") for p in paths for seg in p.split("/"))
    # a typed PRNG key (nnx.Rngs) is kept as its key data
    (key,) = [a for p, a in numeric_leaves(nnx.state(model, nnx.RngKey), "keys")]
    assert key.dtype == np.uint32 and key.shape == (2,)

    # Linen: FrozenDict variables (auto-named submodules), and a flax.struct dataclass
    class Linen(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(2)(nn.relu(nn.Dense(4)(x)))

    variables = freeze(Linen().init(jax.random.PRNGKey(0), jnp.ones((1, 3))))
    assert [p for p, _ in numeric_leaves(variables, "linen")] == [
        "params/Dense_0/bias", "params/Dense_0/kernel", "params/Dense_1/bias",
        "params/Dense_1/kernel"]

    @struct.dataclass
    class TrainState:
        params: object
        step: int

    dense = nn.Dense(3).init(jax.random.PRNGKey(1), jnp.ones((1, 2)))
    assert [p for p, _ in flatten_with_paths(TrainState(dense["params"], 7))] == [
        "params/bias", "params/kernel", "step"]
    # only a node that wraps nothing but its `value` loses the segment: a field named value
    # beside others, and a dict key "value", stay
    Pair = namedtuple("Pair", ["value", "count"])
    assert [p for p, _ in flatten_with_paths({"a": Pair(jnp.ones(2), 3), "b": {"value": 1}})] == [
        "a/value", "a/count", "b/value"]
    assert [p for p, _ in flatten_with_paths(nnx.Param(jnp.ones(2)))] == [""]


def test_nnx_state_and_optax_state_round_trip_through_a_checkpoint(tmp_path):
    model, opt, x, y = fresh()
    rng = np.random.default_rng(1)
    steps(model, opt, x, y, rng, 5)
    state = {"model": nnx.state(model), "opt": nnx.state(opt), "data_rng": rng.bit_generator.state}
    kept = Checkpoints(tmp_path, keeps=lambda s: s == 5)
    kept.checkpoint(5, state)
    layout = [LeafKind.from_list(x) for x in kept.layout["5"]]
    kinds = {k.path: k.kind for k in layout}
    assert kinds["model/dropout/rngs/key"] == "key:threefry2x32"
    assert kinds["model/linear1/kernel"] == kinds["opt/step"] == "jax"
    assert kinds["data_rng/state/state"] == "bigint"

    # a fresh model from another seed is the template; the checkpoint's leaves come back into it
    model2, opt2, _, _ = fresh(seed=5)
    rng2 = np.random.default_rng(99)
    template = {"model": nnx.state(model2), "opt": nnx.state(opt2),
                "data_rng": rng2.bit_generator.state}
    replay = Checkpoints(None, keeps=lambda s: False, restore=(5, str(tmp_path / "5.npz"), layout))
    start, back = replay.restore(template)
    assert start == 5
    assert type(back["model"]) is type(state["model"]) is nnx.State
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(state)
    for (p, a), (q, b) in zip(flatten_with_paths(state), flatten_with_paths(back)):
        assert p == q and type(a) is type(b), p
        if isinstance(a, int | str):   # the numpy Generator's state: 128-bit ints, its name
            assert a == b, p
            continue
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            assert jax.random.key_impl(b) == jax.random.key_impl(a)   # a typed key again
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), p

    # restored into the other model, training continues exactly as the original does
    nnx.update(model2, back["model"])
    nnx.update(opt2, back["opt"])
    rng2.bit_generator.state = back["data_rng"]
    assert steps(model2, opt2, x, y, rng2, 3) == steps(model, opt, x, y, rng, 3)


def repro(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "repro.cli", *args, "--no-stream"], cwd=ROOT,
                          text=True, capture_output=True, env=os.environ.copy(), timeout=600)


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs the repository's git history")
@pytest.mark.slow
def test_the_flax_spec_verifies_bitwise_against_a_record_made_here(tmp_path):
    records = tmp_path / "records"
    proc = repro("record", "specs/flax-digits-mlp.yaml", "--records", str(records), "--runs", "1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    meta = json.loads((records / "flax-digits-mlp" / "cpu" / "record.json").read_text())
    assert {"weights/linear1/kernel", "grads/20/linear2/bias"} <= set(meta["arrays"]["index"])
    assert meta["checkpoints"]["steps"] == [40, 80, 120]
    leaves = {x["path"]: x for x in meta["checkpoints"]["states"]["80"]}
    assert len(leaves) == 21
    assert leaves["model/dropout/rngs/key"]["kind"] == "key:threefry2x32"
    assert leaves["opt/opt_state/0/mu/linear1/kernel"]["shape"] == [64, 32]
    assert leaves["opt/step"]["dtype"] == "uint32" and leaves["model/linear2/bias"]["shape"] == [10]

    proc = repro("verify", "specs/flax-digits-mlp.yaml", "--records", str(records), "-v",
                 "--no-progress")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    # 4 metrics, 4 gradient and 4 weight leaves, 21 state leaves (the table shows the first 15)
    assert "PASS flax-digits-mlp [cpu] bitwise identical (33 quantities)" in out, out
    for row in ("grad linear1/kernel", "weights linear2/bias", "state data_rng/state/inc"):
        assert row in out, out
