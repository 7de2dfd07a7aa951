"""Checkpoints, segment replay and the restart check (docs/checkpoints.md, docs/segments.md).

Real runs of a tiny Adam regression that keeps its state every 100 of 400 steps — params, the
optax state (namedtuples, an int32 count) and a numpy Generator's bit_generator.state (a 128-bit
Python int and a string) — recorded on this machine in a real git repository.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import Project, build_project, edit_train

CK_TRAIN = '''
import jax
import jax.numpy as jnp
import numpy as np
import optax

BIG = 0


def train(ctx):
    d = np.load(ctx.data["xy"])
    x, y = jnp.asarray(d["x"]), jnp.asarray(d["y"])
    k1, k2 = jax.random.split(ctx.key("params"))
    params = {"hidden": {"w": jax.random.normal(k1, (x.shape[1], 8)) * 0.3, "b": jnp.zeros((8,))},
              "out": {"w": jax.random.normal(k2, (8, 1)) * 0.3, "b": jnp.zeros((1,))}}
    lr = ctx.config["lr"]
    opt = optax.adam(lr)

    def loss_fn(p, xb, yb):
        h = jnp.tanh(xb @ p["hidden"]["w"] + p["hidden"]["b"])
        return jnp.mean((h @ p["out"]["w"] + p["out"]["b"] - yb) ** 2)

    @jax.jit
    def update(p, s, xb, yb, scale):
        loss, g = jax.value_and_grad(loss_fn)(p, xb, yb)
        u, s = opt.update(g, s, p)
        u = jax.tree_util.tree_map(lambda a: a * scale, u)
        return optax.apply_updates(p, u), s, loss, g

    rng = np.random.default_rng(ctx.seed("data"))
    state = {"params": params, "opt": opt.init(params), "rng": rng.bit_generator.state}
    if BIG:
        state["frozen"] = jnp.ones((BIG,), jnp.float32)
    start, state = ctx.restore(state)
    params, opt_state = state["params"], state["opt"]
    rng.bit_generator.state = state["rng"]
    for step in range(start, ctx.config["steps"]):
        idx = rng.choice(x.shape[0], 16, replace=False)
        params, opt_state, loss, g = update(params, opt_state, x[idx], y[idx], 1.0)
        ctx.log(step, loss=loss)
        ctx.log_grads(step, g)
        state = {**state, "params": params, "opt": opt_state, "rng": rng.bit_generator.state}
        ctx.checkpoint(step + 1, state)
    return params
'''


def make_ck(root: Path) -> Project:
    p = build_project(root)
    (p.root / "tinyproj" / "train.py").write_text(CK_TRAIN)
    p.edit_spec("steps: 12", "steps: 400")
    p.edit_spec("seeds: {params: 0}", "seeds: {params: 0, data: 1}")
    p.edit_spec("  grads: {every: 4}", "  grads: {every: 50}\n  checkpoints: {every: 100}")
    p.commit("a training that keeps its state every 100 steps")
    p.repro("pin", str(p.spec), check_rc=0)
    p.commit("pin")
    return p


@pytest.fixture(scope="module")
def ck_recorded(tmp_path_factory) -> Project:
    p = make_ck(tmp_path_factory.mktemp("ck") / "proj")
    p.repro("record", "specs/tiny.yaml", check_rc=0)
    p.commit("record")
    return p


def copy_of(p: Project, tmp_path: Path) -> Project:
    q = Project(tmp_path / "proj")
    shutil.copytree(p.root, q.root)
    return q


@pytest.mark.slow
def test_the_record_keeps_each_state_as_blobs_once_in_git(ck_recorded):
    meta = json.loads((ck_recorded.record_dir / "record.json").read_text())
    ck = meta["checkpoints"]
    assert ck["steps"] == [100, 200, 300, 400]
    leaves = {x["path"]: x for x in ck["states"]["200"]}
    assert leaves["opt/0/count"]["kind"] == "jax" and leaves["opt/0/count"]["dtype"] == "int32"
    assert leaves["rng/state/state"]["kind"] == "bigint" and leaves["rng/bit_generator"]["kind"] == "str"
    assert leaves["params/hidden/w"]["shape"] == [4, 8]
    assert all(x["place"] == "record" for s in ck["states"].values() for x in s)
    blobs = [f for f in (ck_recorded.record_dir / "blobs").rglob("*") if f.is_file()]
    shas = {x["sha256"] for s in ck["states"].values() for x in s}
    # content-addressed: one file per distinct leaf (the bit-generator name, the unchanging
    # inc and flags are one blob each for all four states)
    assert len(blobs) == len(shas) < sum(len(s) for s in ck["states"].values())
    assert not any(k.startswith("checkpoints/") for k in meta["arrays"]["index"])  # not in arrays.npz


def audited(p: Project, *args: str, rc: int) -> dict:
    """`repro audit specs --json` (with `args`): the one spec's verdict as JSON, and the JUnit
    and HTML reports were written."""
    out = p.root / "out"
    proc = p.repro("audit", "specs", "--json", str(out / "a.json"), "--junit", str(out / "a.xml"),
                   "--report", str(out / "a.html"), *args)
    assert proc.returncode == rc, proc.stdout + proc.stderr
    (verdict,) = json.loads((out / "a.json").read_text())["results"]
    verdict["junit"] = (out / "a.xml").read_text()
    verdict["html"] = (out / "a.html").read_text()
    return verdict


@pytest.mark.slow
def test_a_full_verify_compares_the_kept_states(ck_recorded):
    out = ck_recorded.repro("verify", "specs/tiny.yaml", "--no-stream", check_rc=0).stdout
    assert "PASS tiny" in out and "bitwise identical" in out
    v = audited(ck_recorded, rc=0)
    states = {q["name"]: q for q in v["quantities"] if q["kind"] == "state"}
    assert {"opt/0/mu/hidden/w", "opt/0/count", "rng/state/state", "params/out/b"} <= set(states)
    assert states["opt/0/count"]["n_total"] == 4   # one per kept state
    assert v["segments"] is None


@pytest.mark.slow
def test_segment_replay_passes_bitwise_on_two_workers(ck_recorded):
    out = ck_recorded.repro("verify", "specs/tiny.yaml", "--no-stream", "--segments", "all",
                            "-j", "2", "-v", check_rc=0).stdout
    assert "PASS tiny [cpu] bitwise identical" in out and "4 of 4 segments" in out, out
    for label in ("[0, 100) pass", "[100, 200) pass", "[200, 300) pass", "[300, 400) pass"):
        assert label in out
    # four segments on two workers: two runs, each going on from its first segment into the
    # next, whose start state came out bitwise the record's
    assert "[100, 200) pass (continued from the segment before, in its run)" in out
    assert "[300, 400) pass (continued from the segment before, in its run)" in out
    assert "[200, 300) pass (continued" not in out
    v = audited(ck_recorded, "--segments", "all", rc=0)
    assert [(o["label"], o["status"]) for o in v["segments"]["replayed"]] == [
        ("[0, 100)", "pass"), ("[100, 200)", "pass"), ("[200, 300)", "pass"), ("[300, 400)", "pass")]
    labels = {q["label"] for q in v["quantities"]}
    assert "state params/out/w in [300, 400)" in labels   # the state each segment reaches
    assert "state params/out/w in [0, 100)" in labels
    assert "weights out/w in [300, 400)" in labels        # the last one also its final weights
    assert "weights out/w in [0, 100)" not in labels
    assert 'name="repro_segments" value="segments: 4 of 4 replayed (all), all pass"' in v["junit"]
    assert "<h4>Segments</h4>" in v["html"] and "[300, 400)" in v["html"]


@pytest.mark.slow
def test_an_lr_change_after_step_300_fails_in_that_segment_only(ck_recorded, tmp_path):
    p = copy_of(ck_recorded, tmp_path)
    edit_train(p, "params, opt_state, loss, g = update(params, opt_state, x[idx], y[idx], 1.0)",
               "params, opt_state, loss, g = update(params, opt_state, x[idx], y[idx], "
               "1.0 + 1e-3 * (step > 300))", "lr up by 0.1% after step 300")
    out = p.repro("verify", "specs/tiny.yaml", "--no-stream", "--segments", "all", "-j", "2",
                  "-v", check_rc=1).stdout
    assert "first: metric loss in [300, 400) at step 302" in out, out
    assert "diverges in [300, 400) fail: metric loss at step 302, stopped at step 302 (fail-fast)" in out
    for label in ("[0, 100) pass", "[100, 200) pass", "[200, 300) pass"):
        assert label in out
    assert "code.commit" in out                                  # and what changed is named
    v = audited(p, "--segments", "all", rc=1)                    # an audit runs to the end
    assert [o["status"] for o in v["segments"]["replayed"]] == ["pass", "pass", "pass", "fail"]
    bad = {q["label"]: q for q in v["quantities"] if not q["ok"]}
    assert bad["metric loss in [300, 400)"]["first_step"] == 302
    assert bad["state params/hidden/w in [300, 400)"]["first_step"] == 400   # the state reached
    assert not [q for q in bad if "[200, 300)" in q]


@pytest.mark.slow
def test_a_state_out_of_tolerance_stops_the_run_when_it_is_kept(ck_recorded, tmp_path):
    """Fail-fast on checkpoints: the loss may drift (loose tolerance), the state kept at step
    300 may not; a segment ending there stops on it as well."""
    p = copy_of(ck_recorded, tmp_path)
    p.edit_spec("record:", "tolerance:\n  metrics: {loss: {rtol: 1.0}}\nrecord:")
    edit_train(p, "params, opt_state, loss, g = update(params, opt_state, x[idx], y[idx], 1.0)",
               "params, opt_state, loss, g = update(params, opt_state, x[idx], y[idx], "
               "1.0 + 1e-2 * (step > 260))", "lr up by 1% after step 260")
    out = p.repro("verify", "specs/tiny.yaml", "--no-stream", check_rc=1).stdout
    assert "stopped at step 300 of 399 (fail-fast): state opt/0/mu/" in out, out
    seg = p.repro("verify", "specs/tiny.yaml", "--no-stream", "--segments", "250-260", "-v",
                  check_rc=1).stdout
    assert "[200, 300) fail: " in seg and "stopped at step 300 (fail-fast)" in seg, seg
    # one worker for two segments: one run from 200 stops at the state kept at 300, so
    # [300, 400) is replayed again from the recorded state at 300, not continued
    two = p.repro("verify", "specs/tiny.yaml", "--no-stream", "--segments", "250-350", "-j", "1",
                  "-v", check_rc=1).stdout
    assert "[200, 300) fail: " in two and "[300, 400) " in two and "(continued" not in two, two
    replayed = audited(p, "--segments", "250-350", rc=1)["segments"]["replayed"]
    assert [(o["label"], o["continued"]) for o in replayed] == [("[200, 300)", False), ("[300, 400)", False)]
    assert replayed[1]["stopped_at"] != 300


@pytest.mark.slow
def test_a_sample_is_seeded_and_reported_and_a_range_picks_its_segments(ck_recorded):
    a = ck_recorded.repro("verify", "specs/tiny.yaml", "--no-stream", "--segments", "sample:1:7",
                          "-v", check_rc=0).stdout
    b = ck_recorded.repro("verify", "specs/tiny.yaml", "--no-stream", "--segments", "sample:1:7",
                          "-v", check_rc=0).stdout
    assert "segments: 1 of 4 replayed (sample:1:7, sample seed 7)" in a
    picked = [line.split("(")[0] for line in a.splitlines() if line.startswith("    [")]
    assert len(picked) == 1, a
    assert picked == [line.split("(")[0] for line in b.splitlines() if line.startswith("    [")]
    r = ck_recorded.repro("verify", "specs/tiny.yaml", "--no-stream", "--segments", "150-250",
                          "-v", check_rc=0).stdout
    assert "2 of 4 replayed (150-250)" in r and "[100, 200) pass" in r and "[200, 300) pass" in r
    bad = ck_recorded.repro("verify", "specs/tiny.yaml", "--segments", "sample:x", check_rc=2)
    assert "expected all, sample:K[:SEED] or A-B" in bad.stderr


def test_the_restart_check_passes_for_a_complete_restore(ck_recorded):
    out = ck_recorded.repro("verify", "specs/tiny.yaml", "--no-stream", "--resume-check",
                            check_rc=0).stdout
    assert "PASS tiny" in out and "restart check: restored at step 100, compared up to step 200" in out


def test_the_restart_check_flag_before_the_spec_takes_no_value_and_the_step_has_its_own_flag(ck_recorded):
    """`--resume-check SPEC` once read the spec as the step ("'specs/tiny.yaml' is not a step
    number"): the flag takes no value; the step is `--resume-check-at STEP` (or
    `--resume-check=STEP`), and the old `--resume-check STEP SPEC` says how to write it."""
    first = ck_recorded.repro("verify", "--resume-check", "specs/tiny.yaml", "--no-stream",
                              check_rc=0).stdout
    assert "restart check: restored at step 100, compared up to step 200" in first, first
    at = ck_recorded.repro("verify", "--resume-check-at", "200", "specs/tiny.yaml", "--no-stream",
                           check_rc=0).stdout
    assert "restart check: restored at step 200, compared up to step 300" in at, at
    same = ck_recorded.repro("verify", "specs/tiny.yaml", "--resume-check=200", "--no-stream",
                             check_rc=0).stdout
    assert "restart check: restored at step 200, compared up to step 300" in same, same
    old = ck_recorded.repro("verify", "--resume-check", "200", "specs/tiny.yaml", check_rc=2)
    assert "'200' is not a spec: --resume-check takes no value; to restore at step 200 write " \
           "--resume-check-at 200" in old.stderr, old.stderr
    assert "Traceback" not in old.stderr
    both = ck_recorded.repro("verify", "specs/tiny.yaml", "--resume-check", "--segments", "all",
                             check_rc=2)
    assert "not allowed with argument" in both.stderr, both.stderr
    ray = ck_recorded.repro("verify", "specs/tiny.yaml", "--resume-check", "--engine", "ray",
                            check_rc=2)
    assert "--resume-check runs on this machine only" in ray.stderr, ray.stderr


@pytest.mark.parametrize("forget, part, leaf", [
    ('opt_state = state["params"], state["opt"]', "opt", "opt/0/mu/hidden/w"),
    ('rng.bit_generator.state = state["rng"]', "rng", "rng/state/state"),
])
@pytest.mark.slow
def test_an_incomplete_restore_fails_the_restart_check_naming_what_it_misses(
        ck_recorded, tmp_path, forget, part, leaf):
    p = copy_of(ck_recorded, tmp_path)
    if part == "opt":
        edit_train(p, 'params, opt_state = state["params"], state["opt"]',
                   'params, opt_state = state["params"], opt.init(state["params"])',
                   "restore forgets the optimizer state")
    else:
        edit_train(p, '    rng.bit_generator.state = state["rng"]\n', "",
                   "restore forgets the data RNG")
    out = p.repro("verify", "specs/tiny.yaml", "--no-stream", "--resume-check", check_rc=1).stdout
    assert "at step 101, the first state after the restore" in out, out
    assert leaf in out
    assert f"not restored: {part} — a run restored with {part} nudged" in out


def test_a_training_function_without_ctx_restore_cannot_be_replayed(ck_recorded, tmp_path):
    p = copy_of(ck_recorded, tmp_path)
    edit_train(p, "    start, state = ctx.restore(state)\n", "    start = 0\n", "no restore")
    out = p.repro("verify", "specs/tiny.yaml", "--no-stream", "--segments", "200-300",
                  check_rc=2).stdout
    assert "before ctx.restore: this run replays from the checkpoint at step 200" in out, out


def test_large_blobs_stay_out_of_git_and_a_missing_or_damaged_blob_is_named(tmp_path, monkeypatch):
    p = make_ck(tmp_path / "big")
    edit_train(p, "BIG = 0", "BIG = 300_000", "a 1.2 MB frozen leaf in the state")
    p.edit_spec("steps: 400", "steps: 200")
    p.commit("200 steps")
    p.repro("record", "specs/tiny.yaml", "--runs", "1", check_rc=0)
    meta = json.loads((p.record_dir / "record.json").read_text())
    frozen = [x for x in meta["checkpoints"]["states"]["100"] if x["path"] == "frozen"][0]
    assert frozen["place"] == "store" and frozen["size"] > 1 << 20
    # equal in both states: stored once, in this machine's store, not in git
    assert frozen["sha256"] == [x for x in meta["checkpoints"]["states"]["200"]
                                if x["path"] == "frozen"][0]["sha256"]
    assert not any(f.stat().st_size > 1 << 20 for f in (p.record_dir / "blobs").rglob("*") if f.is_file())
    from repro.paths import cache_dir
    blob = cache_dir() / "store" / frozen["sha256"][:2] / frozen["sha256"][2:]
    assert blob.is_file()
    small = next(f for f in (p.record_dir / "blobs").rglob("*") if f.is_file())
    small_bytes = small.read_bytes()
    small.write_bytes(small_bytes[:-4] + b"\0\0\0\1")   # damage one blob in git
    out = p.repro("verify", "specs/tiny.yaml", "--no-stream", check_rc=2).stdout
    assert "is damaged" in out and "it is not used" in out, out
    small.write_bytes(small_bytes)
    saved = blob.read_bytes()
    blob.unlink()   # a record made on another machine: its large blob is not here
    try:
        out = p.repro("verify", "specs/tiny.yaml", "--no-stream", "--segments", "all", check_rc=2).stdout
        assert "leaf frozen" in out and "is missing from this machine's store" in out, out
    finally:
        blob.write_bytes(saved)


def test_state_leaves_come_back_as_they_were():
    import collections

    import jax.numpy as jnp

    from repro.child.state import decode_state, encode_state

    Pair = collections.namedtuple("Pair", "mu count")
    rng = np.random.default_rng(3)
    rng.random(5)
    state = {"p": jnp.arange(3.0), "opt": Pair(jnp.zeros(2), jnp.asarray(7, jnp.int32)),
             "weak": jnp.asarray(0.5), "rng": rng.bit_generator.state, "n": 2**70 + 3,
             "f": 0.1, "np": np.float32(2.5), "flag": True}
    encoded = encode_state(state, "test")
    back = decode_state({**state, "n": 0, "rng": {**state["rng"], "state": {"state": 0, "inc": 0}}},
                        {k.path: (k, a) for k, a in encoded}, 5)
    assert isinstance(back["opt"], Pair) and back["opt"].count.dtype == jnp.int32
    assert back["weak"].weak_type and not back["p"].weak_type
    assert back["rng"] == state["rng"] and back["n"] == 2**70 + 3 and back["f"] == 0.1
    assert type(back["np"]) is np.float32 and back["flag"] is True
    fresh = np.random.default_rng(0)
    fresh.bit_generator.state = back["rng"]
    assert fresh.random() == rng.random()
    with pytest.raises(ValueError, match="the checkpoint has leaves the state lacks: flag"):
        decode_state({k: v for k, v in state.items() if k != "flag"},
                     {k.path: (k, a) for k, a in encoded}, 5)
    with pytest.raises(TypeError, match="leaf 'fn' is a function"):
        encode_state({"fn": lambda: 0}, "ctx.checkpoint at step 1")


def test_segments_replay_in_docker_containers_too(tmp_path, cpu_image):
    """The restored state reaches a sandboxed container through its run directory."""
    import uuid

    from dockerutil import pin_image, repro_containers

    p = make_ck(tmp_path / "dk")
    name = f"dk-{uuid.uuid4().hex[:8]}"
    p.edit_spec("name: tiny", f"name: {name}")
    p.edit_spec("steps: 400", "steps: 200")
    pin_image(p, f"repro-jax-cpu@{cpu_image}")
    p.commit("docker")
    p.repro("record", "specs/tiny.yaml", "--backend", "docker", "--runs", "1", check_rc=0)
    out = p.repro("verify", "specs/tiny.yaml", "--backend", "docker", "--no-stream", "--segments",
                  "all", "-j", "2", "-v", check_rc=0).stdout
    assert "PASS" in out and "2 of 2 segments" in out and "[100, 200) pass" in out, out
    assert not repro_containers(name)


def test_consecutive_segments_share_runs_as_even_as_the_slots_allow():
    from repro.commands.segmentplan import Segment, plan_units

    four = [Segment(0, 750), Segment(750, 1500), Segment(1500, 2250), Segment(2250, 3000, final=True)]
    assert plan_units(four, 2, 2999) == [[0, 1], [2, 3]]
    assert plan_units(four, 1, 2999) == [[0, 1, 2, 3]]
    assert plan_units(four, 4, 2999) == [[0], [1], [2], [3]]
    assert plan_units(four, 3, 2999) == [[0], [1], [2, 3]] or plan_units(four, 3, 2999) == [[0, 1], [2], [3]]
    # only neighbours share a run: a gap between chosen segments always cuts
    gap = [four[0], four[2], four[3]]
    assert plan_units(gap, 1, 2999) == [[0], [1, 2]]
    # uneven segments: the cut balances steps, a final segment without an end counts to the last step
    uneven = [Segment(0, 100), Segment(100, 200), Segment(200, 300), Segment(300, None, final=True)]
    assert plan_units(uneven, 2, 1099) == [[0, 1, 2], [3]]
