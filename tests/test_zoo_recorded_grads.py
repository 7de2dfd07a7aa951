"""Gradients recorded by a spec run equal a fresh `jax.grad`, evaluated at the recorded
trajectory's parameters and batches (issue: property tests on backprop; zoo MLP).

The committed record of `specs/digits-mlp.yaml` keeps the gradient pytree every 10 steps and the
final weights. Replaying the zoo's own init/update helpers from the spec's seeds walks the same
trajectory (the final replayed weights equal the record's); at every kept step a separately
built `jax.grad(loss_fn)` of the parameters and batch of that step must equal what the run logged.
"""
from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from repro.child.treepath import flatten_with_paths
from repro.record import read_record
from repro.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]


def test_recorded_grads_equal_fresh_jax_grad_for_the_zoo_mlp():
    from zoo import mlp

    spec = load_spec(ROOT / "specs" / "digits-mlp.yaml")
    rec = read_record(ROOT / "fixtures" / "records" / spec.name / "cpu")
    cfg = {**mlp.DEFAULTS, **spec.config}
    data = mlp.load_digits(str(ROOT / spec.data["digits"].path))
    x, y = data["x_train"], data["y_train"]

    params = mlp.init_params(jax.random.PRNGKey(spec.seeds["params"]), (x.shape[1], cfg["hidden"], 10))
    opt_state = mlp.make_init(cfg["lr"])(params)
    update = mlp.make_update(cfg["lr"])
    fresh_grad = jax.jit(jax.grad(mlp.loss_fn))
    kept = sorted(int(k.split("/")[1]) for k in rec.arrays if k.startswith("grads/"))
    kept = sorted(set(kept))
    assert kept[:3] == [0, 10, 20] and len(kept) == 23
    checked = 0
    rng = np.random.default_rng(spec.seeds["data"])
    for step, _, idx in mlp.batches(rng, x.shape[0], cfg["batch_size"], cfg["epochs"]):
        xb, yb = x[idx], y[idx]
        if step in kept:
            for path, g in flatten_with_paths(fresh_grad(params, xb, yb)):
                np.testing.assert_allclose(np.asarray(g), rec.arrays[f"grads/{step}/{path}"],
                                           rtol=1e-5, atol=1e-7, err_msg=f"step {step} {path}")
                checked += 1
        params, opt_state, _, _ = update(params, opt_state, xb, yb)
    assert checked == len(kept) * 4
    # the replay walked the recorded trajectory: its end is the recorded final weights
    for path, w in flatten_with_paths(params):
        np.testing.assert_allclose(np.asarray(w), rec.arrays[f"weights/{path}"], rtol=1e-5,
                                   atol=1e-7, err_msg=path)
