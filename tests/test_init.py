"""`repro init` (docs/init.md): from a training function in a fresh repository to a spec and a
record that `pytest specs/` passes, in one command. Real git repository, real runs."""
from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import Project, build_workload, git

INIT = ("init", "--entrypoint", "tinyproj.train:train", "--data", "xy=data/xy.npz",
        "--seed", "params=0", "--config", "lr=0.05", "--config", "steps=12")


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> Project:
    """A new repository holding a new training function and its data: no spec, no record."""
    p, _ = build_workload(tmp_path_factory.mktemp("init") / "proj")
    return p


@pytest.mark.slow
def test_init_writes_records_and_pytest_specs_passes(fresh):
    out = fresh.repro(*INIT, "--no-stream", check_rc=0).stdout
    spec = fresh.root / "specs" / "tinyproj-train.yaml"
    text = spec.read_text()
    head = git(fresh.root, "rev-parse", "HEAD")
    assert f"commit: {head}" in text and "entrypoint: tinyproj.train:train" in text
    assert "#   record.grads: steps [0, 5, 11] — the function logs gradients" in text, text
    assert "#   data.xy: data/xy.npz sha256" in text
    assert "record.metrics: loss" in out and "record.runs: 2" in out
    assert "RECORDED tinyproj-train" in out, out
    assert "git add specs/tinyproj-train.yaml fixtures/records/tinyproj-train" in out
    assert "python -m pytest specs/" in out
    assert (fresh.root / "fixtures" / "records" / "tinyproj-train" / "cpu" / "record.json").is_file()
    proc = subprocess.run([sys.executable, "-m", "pytest", "specs/", "-q", "-p", "no:cacheprovider"],
                          cwd=fresh.root, text=True, capture_output=True)
    assert proc.returncode == 0 and "1 passed" in proc.stdout, proc.stdout + proc.stderr
    again = fresh.repro(*INIT, check_rc=2)          # refuses to overwrite; the spec is unchanged
    assert "never overwrites a spec" in again.stderr
    assert spec.read_text() == text


@pytest.mark.slow
def test_init_refuses_code_the_pin_would_not_hold_and_leaves_nothing(fresh):
    fresh.write("tinyproj/other.py", "def train(ctx):\n    return {}\n")
    bad = fresh.repro("init", "--entrypoint", "tinyproj.other:train", check_rc=2)
    assert "tinyproj/other.py exists but is not committed" in bad.stderr, bad.stderr
    (fresh.root / "tinyproj" / "other.py").unlink()
    noseed = fresh.repro("init", "--entrypoint", "tinyproj.train:train", "--name", "noseed",
                         "--data", "xy=data/xy.npz", "--config", "lr=0.05", "--config", "steps=3",
                         "--no-stream", check_rc=2)
    assert "the probe run of tinyproj.train:train failed; nothing was written" in noseed.stderr
    assert "seed 'params' is not in the spec's seeds" in noseed.stderr, noseed.stderr
    assert not (fresh.root / "specs" / "noseed.yaml").exists()
    outside = fresh.repro("init", "--entrypoint", "tinyproj.train:train", "--name", "o",
                          "--data", "xy=../xy.npz", check_rc=2)
    assert "leaves the repository" in outside.stderr


SCRIPT = """\
import argparse, json, os
import numpy as np

ap = argparse.ArgumentParser()
ap.add_argument("--lr", type=float, default=0.1)
ap.add_argument("--seed", type=int, default=0)
args = ap.parse_args()
os.makedirs("out", exist_ok=True)
w = np.random.default_rng(args.seed).normal(size=(3, 2)).astype(np.float32)
with open("out/metrics.jsonl", "w") as f:
    for step in range(4):
        w = w * np.float32(1 - args.lr)
        f.write(json.dumps({"step": step, "loss": float((w ** 2).sum())}) + "\\n")
np.savez("out/w.npz", **{"layer/w": w})
"""


@pytest.mark.slow
def test_init_from_a_command_records_an_unmodified_script(fresh):
    fresh.write("fit.py", SCRIPT)
    fresh.commit("a script")
    out = fresh.repro("init", "--command", "python fit.py --lr {config.lr} --seed {seeds.init}",
                      "--metrics", "out/metrics.jsonl:jsonl", "--weights", "out/w.npz:npz",
                      "--seed", "init=3", "--config", "lr=0.2", "--no-stream", check_rc=0).stdout
    assert "HEAD, which holds fit.py; the command runs in a copy of that tree" in out, out
    assert "RECORDED fit" in out
    text = (fresh.root / "specs" / "fit.yaml").read_text()
    assert "command: [python, fit.py, --lr, '{config.lr}', --seed, '{seeds.init}']" in text, text
    assert "grads" not in text.split("record:")[1]
    verify = fresh.repro("verify", "specs/fit.yaml", "--no-stream", check_rc=0).stdout
    assert "PASS fit" in verify and "bitwise identical" in verify
    whole = fresh.repro("verify", "specs/fit.yaml", "--no-stream", "--segments", "all", check_rc=0).stdout
    assert "runs an unmodified script (code.command), which keeps no checkpoint" in whole, whole
    fresh.write("fit.py", SCRIPT + "# edited\n")
    dirty = fresh.repro("init", "--command", "python fit.py", "--name", "fit2", "--metrics",
                        "out/metrics.jsonl:jsonl", check_rc=2)
    assert "fit.py has uncommitted changes" in dirty.stderr


@pytest.mark.slow
def test_init_derives_a_valid_name_and_refuses_a_spec_outside_before_probing(tmp_path):
    """Issue 25, item 10: `_x.train:train` gives the spec name `x-train` (a name starts with a
    letter or digit), and `--spec` outside the repository is refused before the probe runs."""
    p, _ = build_workload(tmp_path / "proj")
    p.write("_x/__init__.py", "")
    p.write("_x/train.py", (p.root / "tinyproj" / "train.py").read_text())
    p.commit("a module whose name starts with _")
    out = p.repro("init", "--entrypoint", "_x.train:train", "--data", "xy=data/xy.npz", "--seed",
                  "params=0", "--config", "lr=0.05", "--config", "steps=3", "--no-stream", check_rc=0).stdout
    assert "RECORDED x-train" in out and (p.root / "specs" / "x-train.yaml").is_file(), out
    marker = tmp_path / "probed"
    p.write("tinyproj/train.py", (p.root / "tinyproj" / "train.py").read_text().replace(
        "def train(ctx):\n", f"def train(ctx):\n    open({str(marker)!r}, 'w').close()\n"))
    p.commit("a training that leaves a mark when it runs")
    bad = p.repro("init", *INIT[1:], "--spec", str(tmp_path / "elsewhere" / "s.yaml"), check_rc=2)
    assert "is outside the repository" in bad.stderr, bad.stderr
    assert not marker.exists(), "the probe ran before the refusal"
