"""Sharded training (docs/sharding.md): a spec's devices and mesh, sharded values in records,
sharded checkpoints restored onto the spec's mesh, resharded programs named.

The workload is a tiny 2-layer MLP on 4 forced CPU devices (`{data: 2, model: 2}`): the batch
is split over `data`, the hidden layer over `model`. Real jax, real git, real child processes.
"""
from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import Project, build_workload, sha256
from repro.commands.check import check
from repro.env.devices import check_gpu
from repro.errors import NeedsDevice, SpecError
from repro.spec import EnvironmentSpec, load_spec
from repro.verdict import Status

SHARDED_PY = '''
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

RESHARD = False   # True: the hidden layer's rows over the model axis instead of its columns


def train(ctx):
    mesh = ctx.mesh
    data, model = mesh.axis_names   # whatever the spec names them
    hidden = P(model, None) if RESHARD else P(None, model)
    d = np.load(ctx.data["xy"])
    batch = NamedSharding(mesh, P(data, None))
    x = jax.device_put(jnp.asarray(d["x"]), batch)
    y = jax.device_put(jnp.asarray(d["y"]), batch)
    k1, k2 = jax.random.split(ctx.key("params"))
    put = lambda a, spec: jax.device_put(a, NamedSharding(mesh, spec))
    params = {"hidden": {"w": put(jax.random.normal(k1, (4, 8)) * 0.3, hidden),
                         "b": put(jnp.zeros((8,)), P(model))},
              "out": {"w": put(jax.random.normal(k2, (8, 1)) * 0.3, P(model, None)),
                      "b": put(jnp.zeros((1,)), P())}}

    def loss_fn(p, x, y):
        h = jnp.tanh(x @ p["hidden"]["w"] + p["hidden"]["b"])
        return jnp.mean((h @ p["out"]["w"] + p["out"]["b"] - y) ** 2)

    lr = ctx.config["lr"]
    step_fn = ctx.traced(jax.jit(jax.value_and_grad(loss_fn)))
    update = jax.jit(lambda p, g: jax.tree_util.tree_map(lambda a, b: a - lr * b, p, g))
    start, params = ctx.restore(params)
    # a restored state is laid out as it was kept, on this run's mesh
    assert params["hidden"]["w"].sharding == NamedSharding(mesh, hidden), params["hidden"]["w"].sharding
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


def repin(p: Project, message: str) -> None:
    p.commit(message)
    p.repro("pin", "specs/tiny.yaml", check_rc=0)
    p.commit("pin")


def verdict_json(p: Project, *args: str, rc: int) -> dict:
    """`repro audit specs --json` (with `args`): the one spec's verdict as JSON."""
    out = p.root / "out.json"
    proc = p.repro("audit", "specs", "--json", str(out), *args)
    assert proc.returncode == rc, proc.stdout + proc.stderr
    (verdict,) = json.loads(out.read_text())["results"]
    return verdict


def changed(v: dict) -> dict[str, tuple[object, object]]:
    return {c["key"]: (c["recorded"], c["current"]) for c in v["changes"]}


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> Project:
    """The sharded workload, recorded once and committed: copy it, do not change it."""
    p = make_sharded(tmp_path_factory.mktemp("sharded") / "proj")
    p.repro("record", "specs/tiny.yaml", check_rc=0)
    p.commit("record")
    return p


def copy_of(p: Project, tmp_path: Path) -> Project:
    root = tmp_path / "proj"
    shutil.copytree(p.root, root, symlinks=True)
    return Project(root)


# -- the spec -----------------------------------------------------------------------------------
def test_devices_and_mesh_are_validated_and_absent_from_an_unsharded_spec(tmp_path):
    plain = EnvironmentSpec()
    assert "devices" not in plain.model_dump() and "mesh" not in plain.model_dump()
    assert EnvironmentSpec(mesh={"data": 2, "model": 2}).devices == 4   # a mesh alone implies it
    env = EnvironmentSpec(devices=8, mesh={"data": 4, "model": 2})
    assert env.model_dump()["mesh"] == {"data": 4, "model": 2} and env.mesh_axes() == (("data", 4), ("model", 2))
    with pytest.raises(ValueError, match=r"mesh data=4 x model=2 has 8 places but devices is 4"):
        EnvironmentSpec(devices=4, mesh={"data": 4, "model": 2})
    with pytest.raises(ValueError, match=r"mesh axis name '2d' is not an identifier"):
        EnvironmentSpec(mesh={"2d": 2})
    with pytest.raises(ValueError, match=r"mesh axis 'data' has size 0"):
        EnvironmentSpec(devices=1, mesh={"data": 0})
    with pytest.raises(ValueError, match=r"drop the flag: `devices` sets it on CPU"):
        EnvironmentSpec(devices=2, xla_flags=["--xla_force_host_platform_device_count=2"])
    # through a spec file: a SpecError naming the key and line
    p, commit = build_workload(tmp_path / "proj")
    p.write("specs/tiny.yaml", SPEC.format(commit=commit, sha=sha256(p.data)).replace(
        "devices: 4", "devices: 6"))
    with pytest.raises(SpecError, match=r"environment.*has 4 places but devices is 6"):
        load_spec(p.spec)


def test_a_gpu_spec_needing_more_gpus_than_visible_is_skipped(tmp_path, monkeypatch):
    p, commit = build_workload(tmp_path / "proj")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")   # at most one GPU, on any host
    p.write("specs/tiny.yaml", SPEC.format(commit=commit, sha=sha256(p.data)).replace(
        "  devices: 4\n", "  platform: gpu\n  devices: 4\n"))
    p.commit("a 4-GPU spec")
    v = check(p.spec)
    assert v.status == Status.SKIPPED and v.exit_code == 0, v.error
    assert "needs" in v.error and "GPU" in v.error
    with pytest.raises(NeedsDevice, match=r"needs 4 GPUs \(environment.devices\), but this host shows 1"):
        check_gpu(load_spec(p.spec), count=1)
    check_gpu(load_spec(p.spec), count=4)   # enough: nothing raised


# -- record and verify ----------------------------------------------------------------------------
def test_a_sharded_record_keeps_global_values_partition_specs_and_the_mesh(sharded):
    meta = json.loads((sharded.record_dir / "record.json").read_text())
    fp = meta["fingerprint"]
    assert fp["device_count"] == 4 and fp["mesh"] == [["data", 2], ["model", 2]]
    assert "--xla_force_host_platform_device_count=4" in fp["settings"]["XLA_FLAGS"]
    # global values: the full shapes, not one shard's
    assert meta["arrays"]["index"]["weights/hidden/w"]["shape"] == [4, 8]
    assert meta["shardings"]["weights/hidden/w"] == [None, "model"]
    assert meta["shardings"]["weights/out/w"] == ["model"]        # P('model', None) trimmed
    assert meta["shardings"]["weights/out/b"] == []                # replicated over the mesh
    assert meta["shardings"]["grads/4/hidden/w"] == [None, "model"]
    leaf = {x["path"]: x for x in meta["checkpoints"]["states"]["4"]}
    assert leaf["hidden/w"]["sharding"] == [None, "model"] and leaf["hidden/w"]["shape"] == [4, 8]
    program = meta["traced"]["functions"][0]["programs"][0]
    assert "in 1: P(None, 'model')" in program["shardings"] and "in 4: P('data')" in program["shardings"]
    out = sharded.repro("verify", "specs/tiny.yaml", "--no-stream", check_rc=0).stdout
    assert "PASS tiny [cpu] bitwise identical" in out, out
    v = verdict_json(sharded, rc=0)
    assert v["compared"] == "bitwise" and "cpu ×4 (mesh {data: 2, model: 2})" in v["compared_because"]


def test_an_unsharded_record_has_no_sharding_keys(recorded_template):
    meta = json.loads((recorded_template.record_dir / "record.json").read_text())
    assert "shardings" not in meta and "mesh" not in meta["fingerprint"]
    assert meta["fingerprint"]["device_count"] == 1
    assert "xla_force_host_platform_device_count" not in meta["fingerprint"]["settings"]["XLA_FLAGS"]
    assert "devices" not in meta["spec"]["canonical"]["environment"]
    assert "mesh" not in meta["spec"]["canonical"]["environment"]


def test_a_verify_on_another_mesh_names_the_mesh_change(sharded, tmp_path):
    p = copy_of(sharded, tmp_path)
    p.edit_spec("mesh: {data: 2, model: 2}", "mesh: {data: 1, model: 4}")
    p.commit("another mesh")
    v = verdict_json(p, rc=0)
    # the environment differs (its mesh), so the comparison is within tolerance, and it holds
    assert v["status"] == "pass" and v["compared"] == "tolerance"
    # the batch mean is split differently (data 2 -> 1): the same numbers to a few ulps
    worst = max(q["max_abs"] for q in v["quantities"])
    assert 0 < worst < 1e-6, v["quantities"]
    changes = changed(v)
    assert changes["environment.mesh"] == ("{data: 2, model: 2}", "{data: 1, model: 4}")
    assert changes["environment.mesh.data"] == (2, 1)
    assert "mesh {data: 2, model: 2} -> {data: 1, model: 4}" in v["compared_because"]


@pytest.mark.slow
def test_a_resharded_parameter_and_program_are_named(sharded, tmp_path):
    p = copy_of(sharded, tmp_path)
    p.write("tinyproj/train.py", (p.root / "tinyproj/train.py").read_text().replace(
        "RESHARD = False", "RESHARD = True"))
    repin(p, "shard the hidden layer by rows")
    out = p.repro("verify", "specs/tiny.yaml", "--no-stream", check_rc=1).stdout
    assert "Class: changed" in out and "programs unchanged" not in out, out
    assert ("sharding     shardings of program train.<locals>.loss_fn: sharded -> sharded "
            "(in 1: P(None, 'model') -> P('model')") in out, out
    assert "sharding     sharding of weights/hidden/w: P(None, 'model') -> P('model')" in out, out
    # `repro diff` of the two records names it too
    p.repro("record", "specs/tiny.yaml", "--records", str(p.root / "resharded"), check_rc=0)
    diff = p.repro("diff", str(sharded.record_dir), str(p.root / "resharded" / "tiny" / "cpu")).stdout
    assert "sharding of weights/hidden/w: P(None, 'model') -> P('model')" in diff, diff


# -- checkpoints ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_segments_and_the_restart_check_restore_onto_the_mesh(sharded):
    # two workers: the second segment restores the state kept at step 4 (the workload asserts
    # its layout) instead of going on from the first
    out = sharded.repro("verify", "specs/tiny.yaml", "--no-stream", "--segments", "all", "-j", "2",
                        check_rc=0).stdout
    assert "PASS tiny [cpu] bitwise identical" in out and "2 of 2 segments" in out, out
    out = sharded.repro("verify", "specs/tiny.yaml", "--no-stream", "--resume-check", check_rc=0).stdout
    assert "PASS tiny [cpu] bitwise identical" in out and "restored at step 4" in out, out


def test_a_state_restored_onto_a_mesh_it_does_not_fit_is_a_clear_error(sharded, tmp_path):
    p = copy_of(sharded, tmp_path)
    p.edit_spec("mesh: {data: 2, model: 2}", "mesh: {batch: 2, hidden: 2}")   # renamed axes
    p.commit("rename the mesh axes")
    out = p.repro("verify", "specs/tiny.yaml", "--no-stream", "--segments", "4-8", check_rc=2).stdout
    assert ("leaf 'hidden/b' was recorded sharded as P('model'), which does not fit this run's "
            "mesh {batch: 2, hidden: 2}: the mesh has no axis 'model'") in out, out


# -- the child's pieces, in this process on its one CPU device --------------------------------------
def test_a_spec_that_does_not_fit_a_mesh_is_named_with_the_leaf_and_the_mesh():
    import jax

    from repro.child.sharding import build_mesh, describe, place

    mesh = build_mesh(1, [("data", 1)])
    assert mesh.axis_names == ("data",) and mesh.devices.shape == (1,)
    placed = place(np.arange(4.0), ["data"], mesh, "leaf 'w'")
    assert isinstance(placed, jax.Array) and placed.sharding.spec == jax.sharding.PartitionSpec("data")
    with pytest.raises(ValueError, match=r"leaf 'w' was recorded sharded as P\('model'\), which does not "
                                         r"fit this run's mesh \{data: 1\}: the mesh has no axis 'model'"):
        place(np.arange(4.0), ["model"], mesh, "leaf 'w'")
    with pytest.raises(ValueError, match=r"names 2 dimensions and the value has 1"):
        place(np.arange(4.0), ["data", None], mesh, "leaf 'w'")
    with pytest.raises(ValueError, match=r"environment.mesh is not set"):
        place(np.arange(4.0), ["data"], None, "leaf 'w'")
    assert describe([None, ["data", "model"]]) == "P(None, ('data', 'model'))"
    with pytest.raises(RuntimeError, match=r"environment.devices is 4096, but jax shows"):
        build_mesh(4096, [("data", 4096)])


def test_ctx_mesh_without_environment_mesh_says_what_to_add():
    from repro.child.context import Context, GradSchedule

    ctx = Context(seeds={}, data={}, config={}, grad_steps=GradSchedule())
    with pytest.raises(RuntimeError, match=r"ctx.mesh: the spec has no environment.mesh; add one"):
        _ = ctx.mesh
    assert ctx.mesh_or_none is None
    one = Context(seeds={}, data={}, config={}, grad_steps=GradSchedule(), mesh_axes=(("data", 1),))
    assert one.mesh.axis_names == ("data",) and one.mesh is one.mesh   # built once
