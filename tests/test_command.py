"""Unmodified scripts (`code.command`, docs/scripts.md): a typical Flax user's script, unchanged,
recorded and verified bitwise from what it writes (TensorBoard scalars, an Orbax checkpoint);
a commit that changes its learning rate fails with the commit named; the readers of every
format on real files; missing and malformed outputs named with file and line."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from conftest import Project, git
from repro.child.outputs import OutputError, read_metrics, read_weights
from repro.errors import SpecError
from repro.pipeline import Options, record, run, verify
from repro.report.json import verdict_json
from repro.spec import load_spec
from repro.verdict import Status

# What a user writes, with no thought of repro: argparse, Flax Linen, optax, TensorBoard
# logging through tensorboardX, an Orbax checkpoint of the final params.
USER_SCRIPT = '''\
"""Train a small MLP on a synthetic regression task (Flax Linen + optax)."""
import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import linen as nn
from flax.training import train_state
from tensorboardX import SummaryWriter


class MLP(nn.Module):
    hidden: int = 16

    @nn.compact
    def __call__(self, x):
        x = nn.tanh(nn.Dense(self.hidden)(x))
        return nn.Dense(1)(x)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default="out")
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    y = np.sin(x @ np.array([[1.0], [-2.0], [0.5], [1.5]], dtype=np.float32))

    model = MLP()
    params = model.init(jax.random.PRNGKey(args.seed), x[:1])
    state = train_state.TrainState.create(apply_fn=model.apply, params=params,
                                          tx=optax.adam(args.lr))

    @jax.jit
    def train_step(state, x, y):
        def loss_fn(params):
            return jnp.mean((state.apply_fn(params, x) - y) ** 2)
        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        return state.apply_gradients(grads=grads), loss

    writer = SummaryWriter(os.path.join(args.workdir, "tb"))
    for step in range(args.steps):
        state, loss = train_step(state, x, y)
        writer.add_scalar("train/loss", float(loss), step)
        if step % 5 == 0:
            print(f"step {step}: loss {float(loss):.5f}")
    writer.close()

    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.abspath(os.path.join(args.workdir, "ckpt")), state.params)
    checkpointer.wait_until_finished()


if __name__ == "__main__":
    main()
'''

FLAX_SPEC = '''\
repro: 1
code:
  commit: {commit}
  command: [python, train.py, --seed, "{{seeds.params}}", --steps, "{{config.steps}}"]
  outputs:
    metrics: {{path: out/tb, format: tensorboard}}
    weights: {{path: out/ckpt, format: orbax}}
seeds: {{params: 0}}
config: {{steps: 12}}
record: {{runs: 1}}
'''


def _project(root, files: dict[str, str], spec: str, name: str) -> Project:
    root.mkdir(parents=True)
    git(root, "init", "-q", "-b", "main")
    p = Project(root)
    p.spec = root / "specs" / f"{name}.yaml"
    for rel, text in files.items():
        p.write(rel, text)
    commit = p.commit("the script")
    p.write(f"specs/{name}.yaml", spec.format(commit=commit))
    p.commit("spec")
    return p


@pytest.mark.slow
def test_flax_script_records_verifies_bitwise_and_names_the_lr_commit(tmp_path):
    p = _project(tmp_path / "proj", {"train.py": USER_SCRIPT}, FLAX_SPEC, "script")
    p.repro("record", "specs/script.yaml", check_rc=0)
    meta = json.loads((p.root / "fixtures/records/script/cpu/record.json").read_text())
    assert meta["metrics"]["train/loss"]["steps"] == list(range(12))
    with np.load(p.root / "fixtures/records/script/cpu/arrays.npz") as z:
        assert {"weights/params/Dense_0/kernel", "weights/params/Dense_1/bias"} <= set(z.files)

    ok = verdict_json(verify(p.spec, Options(fail_fast=True)))   # `repro verify`'s default
    assert ok["status"] == "pass" and ok["compared"] == "bitwise"
    assert any("fail-fast does not apply" in n for n in ok["notes"])   # verify's default is on

    # a commit that changes the script's default learning rate, pinned
    train = p.root / "train.py"
    train.write_text(train.read_text().replace('default=0.05', 'default=0.1'))
    commit = p.commit("raise the lr")
    p.repro("pin", "specs/script.yaml", check_rc=0)
    p.commit("pin")
    bad = verdict_json(verify(p.spec, Options(fail_fast=True)))
    assert bad["status"] == "fail" and bad["fail_class"] == "changed"
    moved = [c for c in bad["changes"] if c["key"] == "code.commit"]
    assert moved and moved[0]["current"] == commit
    failed = {q["label"] for q in bad["quantities"] if not q["ok"]}
    assert "metric train/loss" in failed, failed
    assert {"weights params/Dense_0/kernel", "weights params/Dense_1/bias"} <= failed, failed
    loss = next(q for q in bad["quantities"] if q["label"] == "metric train/loss")
    assert loss["first_step"] == 1   # step 0's loss is before the first update: equal


LIGHT_SCRIPT = '''\
import argparse, json, os, sys
import numpy as np

PYTHON = {python!r}

ap = argparse.ArgumentParser()
ap.add_argument("--lr", type=float)
ap.add_argument("--seed", type=int)
ap.add_argument("--out", default="out")
args = ap.parse_args()
config = json.loads(os.environ["REPRO_CONFIG"])
if config.get("crash"):
    print("loading the data ...")
    sys.exit("cannot find the data")
os.makedirs(args.out, exist_ok=True)
w = np.random.default_rng(args.seed).normal(size=(3, 2)).astype(np.float32)
with open(os.path.join(args.out, "metrics.jsonl"), "w") as f:
    for step in range(3):
        w = w * (1 - args.lr)
        f.write(json.dumps({"step": step, "loss": float((w ** 2).sum()), "lr_arg": args.lr,
                            "lr_env": config["lr"], "seed_env": int(os.environ["REPRO_SEED_INIT"]),
                            "python_ok": sys.executable == PYTHON,
                            "leaked": "CALLER_ONLY" in os.environ}) + "\\n")
np.savez(os.path.join(args.out, "w.npz"), **{"layer/w": w})
'''

LIGHT_SPEC = '''\
repro: 1
code:
  commit: {commit}
  command: [python, fit.py, --lr, "{{config.lr}}", --seed, "{{seeds.init}}"]
  outputs:
    metrics: {{path: out/metrics.jsonl, format: jsonl}}
    weights: {{path: out/w.npz, format: npz}}
seeds: {{init: 7}}
config: {{lr: 0.25}}
'''


@pytest.mark.slow
def test_placeholders_environment_and_output_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("CALLER_ONLY", "1")
    script = LIGHT_SCRIPT.replace("{python!r}", repr(sys.executable))
    p = _project(tmp_path / "proj", {"fit.py": script}, LIGHT_SPEC, "light")
    v = run(p.spec, Options())
    assert v.status == Status.RAN, (v.error, v.error_detail)
    assert v.metrics_final["lr_arg"] == 0.25 and v.metrics_final["lr_env"] == 0.25
    assert v.metrics_final["seed_env"] == 7
    # `python` is the runner's interpreter; the environment is built from scratch
    assert v.metrics_final["python_ok"] == 1.0 and v.metrics_final["leaked"] == 0.0

    p.edit_spec("out/metrics.jsonl", "out/metrics.json")
    v = run(p.spec, Options())
    assert v.status == Status.ERROR
    assert "out/metrics.json was not written by the script" in v.error and "exited with status 0" in v.error

    p.edit_spec("config: {lr: 0.25}", "config: {lr: 0.25, crash: true}")
    v = run(p.spec, Options())
    assert v.status == Status.ERROR and "exited with status 1" in v.error
    assert "cannot find the data" in v.error_detail and "loading the data" in v.error_detail


def test_spec_refuses_bad_commands(tmp_path):
    base = "repro: 1\ncode:\n  command: [python, t.py, {arg}]\n  outputs: {outputs}\n{extra}"
    cases = {
        ('"{config.nope}"', "{metrics: {path: m.jsonl, format: jsonl}}", "record: {weights: none}"):
            "{config.nope} names no key of `config`",
        ("x", "{metrics: {path: ../m.jsonl, format: jsonl}}", "record: {weights: none}"):
            "leaves the script's working directory",
        ("x", "{metrics: {path: /tmp/m.jsonl, format: jsonl}}", "record: {weights: none}"):
            "is absolute",
        ("x", "{metrics: {path: m.jsonl, format: jsonl}}", ""):
            "code.outputs names no weights file",
        ("x", "{weights: {path: w.npz, format: npz}}", "record: {grads: {every: 1}}"):
            "record.grads need a train(ctx) entrypoint",
    }
    for (arg, outputs, extra), message in cases.items():
        f = tmp_path / "s.yaml"
        f.write_text(base.format(arg=arg, outputs=outputs, extra=extra))
        with pytest.raises(SpecError) as err:
            load_spec(f, require_pins=False)
        assert message in str(err.value), (message, str(err.value))


def test_readers_on_real_files(tmp_path):
    jl = tmp_path / "m.jsonl"
    jl.write_text('{"step": 0, "loss": 1.5}\n\n{"step": 1, "loss": 1.25, "acc": 0.5}\n')
    assert read_metrics(jl, "jsonl", "m.jsonl") == [
        ("m.jsonl:1", 0, {"loss": 1.5}), ("m.jsonl:3", 1, {"loss": 1.25, "acc": 0.5})]
    jl.write_text('{"step": 0, "loss": 1.5}\n{"step": 1, "loss": 1.2\n')
    with pytest.raises(OutputError, match=r"m\.jsonl:2: not a JSON object"):
        read_metrics(jl, "jsonl", "m.jsonl")
    jl.write_text('{"step": 0, "loss": "low"}\n')
    with pytest.raises(OutputError, match=r"m\.jsonl:1: 'loss' is str"):
        read_metrics(jl, "jsonl", "m.jsonl")
    jl.write_text('{"loss": 1}\n')
    with pytest.raises(OutputError, match=r"m\.jsonl:1: no 'step' key"):
        read_metrics(jl, "jsonl", "m.jsonl")

    cv = tmp_path / "m.csv"
    cv.write_text("step,loss,val_loss\n0,1.5,\n1,1.25,2.0\n")
    assert read_metrics(cv, "csv", "m.csv") == [
        ("m.csv:2", 0, {"loss": 1.5}), ("m.csv:3", 1, {"loss": 1.25, "val_loss": 2.0})]
    cv.write_text("step,loss\n0,1.5\n1,oops\n")
    with pytest.raises(OutputError, match=r"m\.csv:3: 'loss' is 'oops'"):
        read_metrics(cv, "csv", "m.csv")
    cv.write_text("epoch,loss\n0,1.5\n")
    with pytest.raises(OutputError, match=r"m\.csv:1: the header has no 'step'"):
        read_metrics(cv, "csv", "m.csv")

    from tensorboardX import SummaryWriter
    for run_name in ("train", "eval"):
        w = SummaryWriter(str(tmp_path / "tb" / run_name))
        for step in range(3):
            w.add_scalar("loss", 1.0 / (step + 1), step)
        w.close()
    rows = read_metrics(tmp_path / "tb", "tensorboard", "tb")
    assert [(r[1], r[2]) for r in rows if "train/loss" in r[2]] == \
        [(s, {"train/loss": float(np.float32(1.0 / (s + 1)))}) for s in range(3)]
    assert sorted({k for r in rows for k in r[2]}) == ["eval/loss", "train/loss"]
    events = next((tmp_path / "tb" / "train").iterdir())
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / events.name).write_bytes(events.read_bytes()[:-5])
    with pytest.raises(OutputError, match=r"cut/events\.out\.tfevents\.[^:]*: damaged TensorBoard "
                       r"event file at record 4 \(has truncated record"):   # the third scalar
        read_metrics(tmp_path / "cut", "tensorboard", "cut")

    arrays = {"dense/kernel": np.arange(6, dtype=np.float32).reshape(2, 3),
              "dense/bias": np.zeros(3, np.float32)}
    np.savez(tmp_path / "w.npz", **arrays)
    from safetensors.numpy import save_file
    save_file(arrays, str(tmp_path / "w.safetensors"))
    for name, fmt in (("w.npz", "npz"), ("w.safetensors", "safetensors")):
        got = read_weights(tmp_path / name, fmt, name)
        assert sorted(got) == sorted(arrays) and all(np.array_equal(got[k], arrays[k]) for k in arrays)
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(OutputError, match=r"junk\.safetensors: not a readable safetensors file"):
        read_weights(tmp_path / "junk.safetensors", "safetensors", "junk.safetensors")

    import orbax.checkpoint as ocp
    ckpt = ocp.StandardCheckpointer()
    tree = {"params": {"Dense_0": {"kernel": arrays["dense/kernel"]}}}
    with ocp.CheckpointManager(tmp_path / "mgr") as mgr:   # a manager's directory: its latest step
        for step in (1, 2):
            mgr.save(step, args=ocp.args.StandardSave({"params": {"Dense_0": {
                "kernel": arrays["dense/kernel"] * step}}}))
    got = read_weights(tmp_path / "mgr", "orbax", "mgr")
    assert np.array_equal(got["params"]["Dense_0"]["kernel"], arrays["dense/kernel"] * 2)
    ckpt.save(tmp_path / "one", tree)
    ckpt.wait_until_finished()
    got = read_weights(tmp_path / "one", "orbax", "one")
    assert isinstance(got["params"]["Dense_0"]["kernel"], np.ndarray)
    with pytest.raises(OutputError, match=r"empty: not an Orbax checkpoint"):
        (tmp_path / "empty").mkdir()
        read_weights(tmp_path / "empty", "orbax", "empty")



CSV_SCRIPT = '''\
import argparse, csv, os, sys
import numpy as np

ap = argparse.ArgumentParser()
ap.add_argument("--lr", type=float)
ap.add_argument("--seed", type=int)
args = ap.parse_args()
os.makedirs("out", exist_ok=True)
w = np.random.default_rng(args.seed).normal(size=(3, 2)).astype(np.float32)
with open("out/metrics.csv", "w", newline="") as f:
    out = csv.writer(f)
    out.writerow(["step", "loss", "in_image"])
    for step in range(3):
        w = w * (1 - args.lr)
        out.writerow([step, float((w ** 2).sum()), int(sys.executable.startswith("/opt/venv/"))])  # the envs/cpu image
np.savez("out/w.npz", **{"layer/w": w})
'''


def test_script_runs_in_the_docker_sandbox(tmp_path, cpu_image):
    """In the container: the read-only tree copied into the writable run directory, `python`
    the image's interpreter, a CSV and an npz read back; recorded and verified bitwise there."""
    spec = LIGHT_SPEC.replace("out/metrics.jsonl, format: jsonl", "out/metrics.csv, format: csv") \
        + f"environment: {{{{image: 'repro-jax-cpu@{cpu_image}'}}}}\nrecord: {{{{runs: 1}}}}\n"
    p = _project(tmp_path / "proj", {"fit.py": CSV_SCRIPT}, spec, "light")
    v = record(p.spec, Options(backend="docker"))
    assert v.status == Status.RECORDED, (v.error, v.error_detail)
    assert v.metrics_final["in_image"] == 1.0
    assert any("ran in container image" in n for n in v.notes)
    v = verify(p.spec, Options(backend="docker"))
    assert v.status == Status.PASS and v.bitwise, (v.error, v.rows)
    assert {r.label for r in v.rows} == {"metric loss", "metric in_image", "weights layer/w"}
