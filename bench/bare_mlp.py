"""The digits MLP as a bare Python script, no repro: the baseline `bench_verify.py` compares with.

Same training function, data, config and seeds as specs/digits-mlp.yaml, with a minimal stand-in
for the context; pinned to one CPU as the spec's `environment.cpus: 1` pins the repro run.
"""
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


class BareContext:
    def __init__(self, seeds, data, config):
        self.seeds, self.data, self.config = seeds, data, config

    def seed(self, name):
        return self.seeds[name]

    def key(self, name):
        import jax
        return jax.random.PRNGKey(self.seeds[name])

    def log(self, step, **scalars):
        for v in scalars.values():
            float(np.asarray(v))

    def log_grads(self, step, grads):
        if step % 10 == 0:
            import jax
            [np.asarray(g) for g in jax.tree_util.tree_leaves(grads)]


if __name__ == "__main__":
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    sys.path.insert(0, str(ROOT))
    from zoo import mlp

    ctx = BareContext({"params": 0, "data": 1}, {"digits": str(ROOT / "fixtures/data/digits.npz")},
                      {"epochs": 10, "lr": 1e-3, "batch_size": 64, "hidden": 32})
    params = mlp.train(ctx)
    np.savez(os.devnull, **{k: np.asarray(v) for k, v in params["dense_0"].items()})
