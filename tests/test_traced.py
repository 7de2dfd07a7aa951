"""ctx.traced (docs/localisation.md): program fingerprints and op-level localisation, on real git
histories with real training runs (the `project` fixture); no mocks."""
from __future__ import annotations

import json

import pytest

from conftest import Project, edit_train, train_does  # noqa: F401  (train_does: shared helper)
from repro import pipeline
from repro.variation import Variation
from repro.verdict import Status

FAST = pipeline.Options(runs=1, confirm=0)
PLAIN_STEP = "    step_fn = jax.jit(jax.value_and_grad(loss_fn))"
TRACED_STEP = "    step_fn = ctx.traced(jax.jit(jax.value_and_grad(loss_fn)))"
LOSS = "        return jnp.mean((h @ p[\"out\"][\"w\"] + p[\"out\"][\"b\"] - y) ** 2)"
HIDDEN = "        h = jnp.tanh(x @ p[\"hidden\"][\"w\"] + p[\"hidden\"][\"b\"])"


def line_of(project: Project, fragment: str) -> str:
    lines = (project.root / "tinyproj" / "train.py").read_text().splitlines()
    return f"tinyproj/train.py:{next(i for i, t in enumerate(lines, 1) if fragment in t)}"


def traced_record(project: Project, loss: str = LOSS) -> None:
    edit_train(project, PLAIN_STEP, TRACED_STEP, "trace the step")
    if loss != LOSS:
        edit_train(project, LOSS, loss, "loss form")
    v = pipeline.record(project.spec, FAST)
    assert v.status == Status.RECORDED, v.error + v.error_detail


@pytest.mark.slow
def test_traced_gives_the_same_bits_and_an_untraced_spec_still_works(project):
    v = pipeline.record(project.spec, FAST)    # no ctx.traced anywhere
    assert v.status == Status.RECORDED, v.error
    assert json.loads((project.record_dir / "record.json").read_text())["traced"] is None
    edit_train(project, PLAIN_STEP, TRACED_STEP, "trace the step")
    v = pipeline.verify(project.spec, FAST)
    assert v.status == Status.PASS and v.bitwise, v.rows
    assert v.localisation is None and v.programs_unchanged is None
    # and the traced record holds fingerprints and the op traces of the kept-gradient steps
    v = pipeline.record(project.spec, FAST)
    assert v.status == Status.RECORDED
    traced = json.loads((project.record_dir / "record.json").read_text())["traced"]
    [fn] = traced["functions"]
    assert fn["name"].endswith("loss_fn") and fn["calls"] == 12
    assert sorted(fn["steps"], key=int) == ["0", "4", "8"]
    [program] = fn["programs"]
    assert program["eqns"] == len(program["ops"]) > 10 and len(program["jaxpr_sha256"]) == 64
    v = pipeline.verify(project.spec, FAST)
    assert v.status == Status.PASS and v.bitwise and v.programs_unchanged is True
    # another commit with the same training code: its tree is exported to another path, which
    # compiled HLO text names (op metadata, stack-frame tables); the fingerprint leaves it out
    project.write("NOTES.md", "nothing that runs\n")
    project.commit("notes")
    project.repro("pin", str(project.spec), check_rc=0)
    v = pipeline.verify(project.spec, FAST)
    assert v.status == Status.PASS and v.programs_unchanged is True
    assert not [c for c in v.changes if "program" in c.key], v.changes


def test_a_changed_constant_in_the_loss_is_localised_to_its_line(project):
    traced_record(project, LOSS.replace("return jnp.mean(", "return 0.5 * jnp.mean("))
    edit_train(project, "return 0.5 * jnp.mean(", "return 0.7 * jnp.mean(", "another constant")
    v = pipeline.verify(project.spec, FAST)
    assert v.status == Status.FAIL
    loc = v.localisation
    assert loc is not None and loc.kind == "value" and loc.step == 0, loc
    assert loc.primitive == "mul" and loc.source == f"{line_of(project, '0.7 * jnp.mean')} in loss_fn", loc
    assert loc.max_abs is not None and loc.max_abs > 0
    program = [c for c in v.changes if c.key.startswith("program of")]
    assert program and line_of(project, "0.7 * jnp.mean") in program[0].detail, v.changes
    assert v.programs_unchanged is False
    from repro.report.text import render
    assert "first diverging op: mul float32[] at tinyproj/train.py" in render(v)


@pytest.mark.slow
def test_an_op_swapped_for_an_approximation_is_a_structural_difference_at_its_line(project):
    traced_record(project)
    approx = HIDDEN.replace("jnp.tanh(x @ p[\"hidden\"][\"w\"] + p[\"hidden\"][\"b\"])",
                            "x @ p[\"hidden\"][\"w\"] + p[\"hidden\"][\"b\"]\n"
                            "        h = h * (27 + h * h) / (27 + 9 * h * h)")
    edit_train(project, HIDDEN, approx, "a rational tanh")
    v = pipeline.verify(project.spec, FAST)
    assert v.status == Status.FAIL
    loc = v.localisation
    assert loc is not None and loc.kind == "structure", loc
    assert loc.source == f"{line_of(project, '(27 + h * h)')} in loss_fn", loc
    assert "tanh" in loc.recorded
    change = next(c for c in v.changes if c.key.startswith("program of"))
    assert change.recorded != change.current and "first difference at tinyproj/train.py" in change.detail
    print(change.text())
    from repro.report.json import verdict_json
    doc = verdict_json(v)
    assert doc["localisation"]["kind"] == "structure" and doc["programs_unchanged"] is False
    json.dumps(doc)
    from repro.report.html import _localisation
    assert "First diverging op" in _localisation(doc)


def _has_avx2() -> bool:
    try:
        from repro.env.isa import host_isas  # type: ignore[attr-defined]
        return "AVX2" in host_isas()
    except ImportError:
        import platform
        flags = open("/proc/cpuinfo").read() if platform.system() == "Linux" else ""
        return " avx2" in flags


@pytest.mark.skipif(not _has_avx2(), reason="the ISA cap test lowers AVX2 to AVX: needs an AVX2 host")
@pytest.mark.slow
def test_a_lower_isa_cap_names_the_op_that_moved_and_the_program_is_unchanged(project):
    traced_record(project)
    v = pipeline.verify(project.spec, pipeline.Options(confirm=0, variation=Variation(name="avx", isa="AVX")))
    if v.status == Status.PASS:
        pytest.skip("this host gives the same bits under AVX and AVX2: nothing to localise")
    assert v.status == Status.FAIL, v.error
    assert v.programs_unchanged is True, v.changes
    loc = v.localisation
    assert loc is not None and loc.kind == "value", (loc, v.notes)
    assert loc.source.startswith("tinyproj/train.py:"), loc
    print("ISA localisation:", loc.text())
