"""Parallelism invariance (issue #27 part 3, docs/sharding.md): `record.invariance` checked at
record time, `repro calibrate --meshes` and its `tolerance.mesh`, verify on another mesh.

The workload is a tiny 2-layer MLP on 4 forced CPU devices, the batch over `data` and the hidden
layer over `model`; MESH_DEPENDENT makes its loss depend on the model axis's size (a result
tied to the layout, as a sum in a mesh-dependent order would be, only larger). Real jax, real
git, real child processes.
"""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from conftest import Project, build_workload, sha256
from repro import pipeline
from repro.errors import SpecError
from repro.record import check_record
from repro.spec import Spec, load_spec
from repro.verdict import Status

MLP_PY = '''
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

MESH_DEPENDENT = False


def train(ctx):
    mesh = ctx.mesh
    put = lambda a, spec: jax.device_put(a, NamedSharding(mesh, spec))
    d = np.load(ctx.data["xy"])
    x, y = put(jnp.asarray(d["x"]), P("data", None)), put(jnp.asarray(d["y"]), P("data", None))
    k1, k2 = jax.random.split(ctx.key("params"))
    params = {"w1": put(jax.random.normal(k1, (4, 8)) * 0.3, P(None, "model")),
              "w2": put(jax.random.normal(k2, (8, 1)) * 0.3, P("model", None))}
    scale = 1.0 + 0.01 * mesh.shape["model"] if MESH_DEPENDENT else 1.0

    def loss_fn(p):
        return scale * jnp.mean((jnp.tanh(x @ p["w1"]) @ p["w2"] - y) ** 2)

    step = jax.jit(jax.value_and_grad(loss_fn))
    for s in range(ctx.config["steps"]):
        loss, g = step(params)
        params = jax.tree_util.tree_map(lambda a, b: a - 0.05 * b, params, g)
        ctx.log(s, loss=loss)
        ctx.log_grads(s, g)
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
config: {{steps: 6}}
record:
  metrics: [loss]
  grads: {{every: 3}}
  runs: 1
{invariance}tolerance:
  default: {{rtol: 1.0e-6, atol: 1.0e-8}}
'''


def make(root, *, dependent: bool = False, invariance: str = "") -> Project:
    p, _ = build_workload(root)
    p.write("tinyproj/train.py", textwrap.dedent(MLP_PY).replace(
        "MESH_DEPENDENT = False", f"MESH_DEPENDENT = {dependent}"))
    commit = p.commit("mlp on a mesh")
    p.write("specs/tiny.yaml", SPEC.format(commit=commit, sha=sha256(p.data), invariance=invariance))
    p.commit("spec")
    return p


INVARIANCE = "  invariance: {meshes: [[2, 2], [4, 1], [1, 4]]}\n"


# -- the spec -----------------------------------------------------------------------------------
def test_invariance_is_validated_and_absent_from_the_canonical_form(tmp_path):
    p = make(tmp_path / "proj", invariance=INVARIANCE)
    spec = load_spec(p.spec)
    assert spec.record.invariance is not None and spec.record.invariance.meshes == [[2, 2], [4, 1], [1, 4]]
    assert "invariance" not in spec.canonical["record"] and "mesh" not in spec.canonical["tolerance"]
    cases = [
        ("  invariance: {meshes: [[2, 2], [8, 1]]}\n", r"meshes\[1\] \[8, 1\] has 8 places but "
                                                      r"environment.devices is 4"),
        ("  invariance: {meshes: [[4]]}\n", r"meshes\[0\] \[4\] has 1 sizes but environment.mesh "
                                           r"has 2 axes \(data, model\)"),
        ("  invariance: {meshes: [[0, 4]]}\n", r"sizes are at least 1"),
        ("  invariance: {meshes: []}\n", r"record.invariance.meshes"),
    ]
    for block, message in cases:
        p.write("specs/tiny.yaml", p.spec.read_text().replace(INVARIANCE, block))
        with pytest.raises(SpecError, match=message):
            load_spec(p.spec)
        p.write("specs/tiny.yaml", p.spec.read_text().replace(block, INVARIANCE))
    # no mesh to size
    p.write("specs/tiny.yaml", p.spec.read_text().replace("  mesh: {data: 2, model: 2}\n", ""))
    with pytest.raises(SpecError, match=r"record.invariance needs environment.mesh"):
        load_spec(p.spec)


# -- record time --------------------------------------------------------------------------------
def test_invariance_met_records_what_was_checked(tmp_path):
    # one other mesh (the spec's own is listed too, and not run again): one extra training
    p = make(tmp_path / "proj", invariance="  invariance: {meshes: [[4, 1], [2, 2]]}\n")
    # a few ulps move between meshes (the batch mean split another way): tolerance.mesh covers it
    p.edit_spec("tolerance:\n", "tolerance:\n  mesh: {rtol: 1.0e-4, atol: 1.0e-6}\n")
    p.commit("mesh tolerance")
    out = p.repro("record", "specs/tiny.yaml", check_rc=0).stdout
    assert "RECORDED tiny" in out, out
    meta = json.loads((p.record_dir / "record.json").read_text())
    inv = meta["invariance"]
    assert inv["axes"] == ["data", "model"] and inv["recorded"] == [2, 2]
    assert [c["mesh"] for c in inv["checked"]] == [[4, 1]]
    for c in inv["checked"]:
        assert c["moved"] == 0 if c["bitwise"] else c["moved"] > 0
        assert c["max_abs"] is not None and c["max_abs"] < 1e-5
    _, read = check_record(p.record_dir)                 # checksummed and typed as any record
    assert read.invariance is not None and read.invariance.checked[0].mesh == [4, 1]


def test_invariance_violated_fails_to_record_naming_quantity_and_meshes(tmp_path):
    p = make(tmp_path / "proj", dependent=True, invariance=INVARIANCE)
    proc = p.repro("record", "specs/tiny.yaml")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout + proc.stderr
    assert ("compared within tolerance: tolerance.mesh, on each mesh record.invariance lists: the "
            "result depends on the mesh: metric loss from step 0") in out, out
    assert "mesh {data: 2, model: 2} (the spec's) and mesh {data: 4, model: 1}" in out, out
    assert "FAIL tiny [cpu] (mesh-dependent)" in out and "Class: mesh-dependent" in out, out
    assert not (p.record_dir / "record.json").exists()   # nothing written


# -- calibrate --meshes, tolerance.mesh, verify on another mesh -----------------------------------
@pytest.mark.slow
def test_calibrate_meshes_writes_tolerance_mesh_and_verify_uses_it(tmp_path):
    p = make(tmp_path / "proj", dependent=True)
    p.repro("record", "specs/tiny.yaml", check_rc=0)
    p.commit("record")
    out = p.repro("calibrate", "specs/tiny.yaml", "--meshes", "4x1,2x2,1x4", "--write",
                  "--no-progress", check_rc=0).stdout
    assert "mesh=4x1" in out and "mesh=1x4" in out and "mesh=2x2" not in out, out
    assert "metric loss" in out, out                       # the mesh-dependent loss moved
    assert "mesh.metrics.loss" in out and "wrote tolerances" in out, out
    spec = load_spec(p.spec)
    assert spec.tolerance.mesh is not None and spec.tolerance.mesh.metrics["loss"].rtol is not None
    assert spec.tolerance.default.rtol == 1e-6            # the spec's own blocks untouched
    p.commit("calibrated")
    p.repro("verify", "specs/tiny.yaml", check_rc=0)       # the record is still valid
    # another mesh: compared within tolerance.mesh and named
    p.edit_spec("mesh: {data: 2, model: 2}", "mesh: {data: 1, model: 4}")
    p.commit("another mesh")
    p.repro("pin", "specs/tiny.yaml", check_rc=0)
    p.commit("pin")
    proc = p.repro("verify", "specs/tiny.yaml", "--no-stream")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "within tolerance" in out and "stopped" not in out, out
    assert "environment.mesh: {data: 2, model: 2} -> {data: 1, model: 4}" in out, out
    report = tmp_path / "audit.json"
    p.repro("audit", "specs", "--json", str(report), check_rc=0)
    (v,) = json.loads(report.read_text())["results"]
    assert "the mesh alone: tolerance.mesh applies" in v["compared_because"], v["compared_because"]
    # without tolerance.mesh the spec's own tolerance applies, and the mesh-dependent loss fails
    text = p.spec.read_text()
    start = text.index("  mesh:\n", text.index("tolerance:"))
    p.write("specs/tiny.yaml", text[:start] + "\n".join(
        line for line in text[start:].splitlines()[1:] if not line.startswith("    ")) + "\n")
    assert load_spec(p.spec).tolerance.mesh is None
    p.commit("no mesh tolerance")
    proc = p.repro("verify", "specs/tiny.yaml", "--no-stream", "--confirm", "0")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "metric loss" in out and "environment.mesh: {data: 2, model: 2} -> {data: 1, model: 4}" in out, out


def test_calibrate_meshes_refuses_a_bad_mesh(tmp_path):
    p = make(tmp_path / "proj")
    proc = p.repro("calibrate", "specs/tiny.yaml", "--meshes", "8x1", "--no-progress")
    assert proc.returncode == 2 and "'8x1' has 8 places but environment.devices is 4" in proc.stderr, proc.stderr
    proc = p.repro("calibrate", "specs/tiny.yaml", "--meshes", "2by2", "--no-progress")
    assert proc.returncode == 2 and "'2by2' is not a mesh" in proc.stderr, proc.stderr


# -- the zoo's sharded spec -----------------------------------------------------------------------
ZOO_SPEC = Path(__file__).resolve().parents[1] / "specs" / "sharded-lm.yaml"


def zoo_on(mesh: dict[str, int], *, mesh_tolerance: bool = True) -> Spec:
    """specs/sharded-lm.yaml with another mesh (same file, so the same repository and record)."""
    spec = load_spec(ZOO_SPEC)
    tolerance = spec.tolerance if mesh_tolerance else spec.tolerance.model_copy(update={"mesh": None})
    other = spec.model_copy(update={"environment": spec.environment.model_copy(update={"mesh": mesh}),
                                    "tolerance": tolerance})
    other._path = spec.path
    return other


def test_the_zoo_record_kept_its_invariance_check_and_noise_floor():
    meta = json.loads((ZOO_SPEC.parents[1] / "fixtures/records/sharded-lm/cpu/record.json").read_text())
    assert meta["noise"] == {"runs": 2, "spread": {}}          # two runs, bitwise the same
    inv = meta["invariance"]
    assert inv["axes"] == ["data", "model"] and inv["recorded"] == [4, 2]
    assert [c["mesh"] for c in inv["checked"]] == [[8, 1], [2, 4]]
    assert all(not c["bitwise"] and c["moved"] > 0 for c in inv["checked"])   # measured, not assumed
    assert meta["fingerprint"]["mesh"] == [["data", 4], ["model", 2]]
    assert load_spec(ZOO_SPEC).tolerance.mesh is not None


@pytest.mark.slow
def test_the_zoo_spec_on_another_mesh_passes_within_tolerance_mesh_and_fails_without():
    v = pipeline.verify(zoo_on({"data": 2, "model": 4}), pipeline.Options(echo=False, confirm=0))
    assert v.status == Status.PASS and not v.bitwise, v.mode_reason
    assert "mesh {data: 4, model: 2} -> {data: 2, model: 4} (the mesh alone: tolerance.mesh " \
           "applies)" in v.mode_reason, v.mode_reason
    changes = {c.key: (c.recorded, c.current) for c in v.changes}
    assert changes["environment.mesh"] == ("{data: 4, model: 2}", "{data: 2, model: 4}")
    # the spec's own tolerances are far tighter than the layout's effect on Adam's weights
    v = pipeline.verify(zoo_on({"data": 2, "model": 4}, mesh_tolerance=False),
                        pipeline.Options(echo=False, confirm=0))
    assert v.status == Status.FAIL, v.mode_reason
    assert any(r.kind == "weight" and not r.ok for r in v.rows)
    assert "tolerance.mesh" not in v.mode_reason


@pytest.mark.slow
def test_the_zoo_spec_replays_its_segments_bitwise_and_a_segment_on_another_mesh_within_tolerance():
    """#27: `--segments all` on the sharded spec passes. Each segment restores the recorded
    state (params, Adam's moments, the batch generator) laid out by its PartitionSpecs on the
    spec's mesh; on another mesh the same state is laid out there and the segment compares
    within tolerance.mesh, naming the mesh change."""
    from repro.commands.check import check

    v = check(ZOO_SPEC, pipeline.Options(echo=False, confirm=0, segments="all", jobs=3))
    assert v.status == Status.PASS and v.bitwise, v.mode_reason
    assert v.segments is not None and v.segments.text() == "segments: 3 of 3 replayed (all), all pass"
    assert not any(o.continued for o in v.segments.outcomes)   # -j 3: each restored on its own
    v = check(zoo_on({"data": 2, "model": 4}), pipeline.Options(echo=False, confirm=0, segments="20-40"))
    assert v.status == Status.PASS and not v.bitwise, v.mode_reason
    assert "mesh {data: 4, model: 2} -> {data: 2, model: 4} (the mesh alone: tolerance.mesh " \
           "applies)" in v.mode_reason, v.mode_reason
