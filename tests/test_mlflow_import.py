"""`repro import mlflow` (docs/integrations.md) against a real `mlflow server` (sqlite backend,
served artifacts; tests/mlflowserver.py): a user's training script logs to it as it would
anyway — MLflow itself sets the git commit tag — and the run is imported, verified (pass, the
verdict naming the MLflow run), then caught after a commit that changes the learning rate; a
registered model version is resolved to its run by alias and by number; an MLflow Project run
becomes a command-form spec; and every bad input is a clear error (exit 2) that writes nothing."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest

from conftest import Project, git
from repro.cli import main
from repro.record import IMPORTED_FORMAT, read_record, record_checksum

# one worker runs the module (`--dist loadgroup`): its real MLflow server and the user's run,
# made once per worker that runs any of its tests, cost 15-25 s of setup
pytestmark = pytest.mark.xdist_group("mlflow-import")

# What a user writes with no thought of repro: argparse, JAX, a metrics file and the weights as
# an .npz it keeps anyway, and MLflow logging when a tracking server is set (as `mlflow run` and
# a shell with MLFLOW_TRACKING_URI do). Under repro the environment is built from scratch, so
# the verify run logs nothing to the server.
TRAIN_PY = '''\
"""Fit a small tanh regression with JAX; log to MLflow when a tracking server is set."""
import argparse
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

LR = 0.05


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--lr", type=float, default=LR)
    parser.add_argument("--out", default="out")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    y = np.sin(x @ np.array([[1.0], [-2.0], [0.5], [1.5]], dtype=np.float32))
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    params = {"hidden": {"w": jax.random.normal(k1, (4, 8)) * 0.3, "b": jnp.zeros((8,))},
              "out": {"w": jax.random.normal(k2, (8, 1)) * 0.3, "b": jnp.zeros((1,))}}

    def loss_fn(p):
        h = jnp.tanh(x @ p["hidden"]["w"] + p["hidden"]["b"])
        return jnp.mean((h @ p["out"]["w"] + p["out"]["b"] - y) ** 2)

    step_fn = jax.jit(jax.value_and_grad(loss_fn))
    mlflow = None
    if os.environ.get("MLFLOW_TRACKING_URI"):
        import mlflow
        mlflow.start_run()
        mlflow.log_params({"lr": args.lr, "steps": args.steps})
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "metrics.jsonl"), "w") as f:
        for step in range(args.steps):
            loss, g = step_fn(params)
            params = jax.tree_util.tree_map(lambda a, b: a - args.lr * b, params, g)
            f.write(json.dumps({"step": step, "loss": float(loss)}) + "\\n")
            if mlflow:
                mlflow.log_metric("loss", float(loss), step=step)
    weights = os.path.join(args.out, "weights.npz")
    np.savez(weights, **{f"{layer}/{k}": np.asarray(v) for layer, leaves in params.items()
                         for k, v in leaves.items()})
    if mlflow:
        mlflow.log_artifact(weights)
        print("MLFLOW_RUN", mlflow.active_run().info.run_id)
        mlflow.end_run()


if __name__ == "__main__":
    main()
'''

# The spec the user writes for that script (its commit filled in by the import). The MLflow
# run trained outside repro's determinism settings (its own XLA flags, the host's best ISA, all
# cores): a tolerance above that noise, as docs/integrations.md advises for imported runs.
SPEC = '''\
repro: 1
name: tanh
code:
  command: [python, train.py, --steps, "{config.steps}"]
  outputs:
    metrics: {path: out/metrics.jsonl, format: jsonl}
    weights: {path: out/weights.npz, format: npz}
config: {steps: 12}
record:
  runs: 1
tolerance:
  default: {rtol: 1.0e-4, atol: 1.0e-6}
'''

MLPROJECT = '''\
name: tanh
entry_points:
  main:
    parameters:
      steps: {type: int, default: 12}
      lr: {type: float, default: 0.05}
    command: "python train.py --steps {steps} --lr {lr}"
'''


def user_run(root: Path, uri: str, *args: str) -> str:
    """The user trains: `python train.py` in the repository with MLFLOW_TRACKING_URI set."""
    proc = subprocess.run([sys.executable, "train.py", *args], cwd=root, text=True,
                          capture_output=True, env={**os.environ, "MLFLOW_TRACKING_URI": uri})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.split("MLFLOW_RUN ")[1].split()[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mlflow_server):
    """A repository holding the script, its MLproject and its spec (two commits), trained once
    by the user with MLflow logging: (repository, run id, the run's commit). Copy it
    (`copy_of`): tests change the spec and write records."""
    root = tmp_path_factory.mktemp("trained") / "proj"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    p = Project(root)
    p.write("README.md", "a tanh regression\n")
    p.commit("start")
    p.write("train.py", TRAIN_PY)
    p.write("MLproject", MLPROJECT)
    p.write(".gitignore", "out/\nmlruns/\n")
    p.write("specs/tanh.yaml", SPEC)
    commit = p.commit("the tanh regression and its spec")
    return root, user_run(root, mlflow_server.uri), commit


def copy_of(trained, tmp_path: Path) -> Project:
    p = Project(shutil.copytree(trained[0], tmp_path / "proj", symlinks=True))
    p.spec = p.root / "specs" / "tanh.yaml"
    return p


def record_json(p: Project) -> dict:
    return json.loads((p.root / "fixtures" / "records" / "tanh" / "cpu" / "record.json").read_text())


@pytest.mark.slow
def test_import_verify_pass_then_an_lr_change_fails_naming_metric_and_step(trained, tmp_path,
                                                                             mlflow_server):
    _, run_id, commit = trained
    p = copy_of(trained, tmp_path)
    out = p.repro("import", "mlflow", run_id, "--spec", "specs/tanh.yaml",
                  "--tracking-uri", mlflow_server.uri, check_rc=0).stdout
    assert f"IMPORTED MLflow run {run_id}" in out and "loss (12 steps)" in out, out
    assert "hidden/w" in out and "weights.npz" in out, out
    assert f"code.commit: (unset) -> {commit}" in out and "record.metrics: (unset) -> [loss]" in out
    assert "params the spec's config has no key for: lr" in out, out   # steps is in config
    spec = p.spec.read_text()
    assert f"commit: {commit}" in spec and "metrics: [loss]" in spec, spec

    doc = record_json(p)
    assert doc["format"] == IMPORTED_FORMAT and doc["fingerprint"] is None and doc["backend"] == ""
    src = doc["source"]
    assert (src["kind"], src["run_id"], src["tracking_uri"]) == ("mlflow", run_id, mlflow_server.uri)
    assert src["weights_artifact"] == "weights.npz" and src["params"] == {"lr": "0.05", "steps": "12"}
    assert doc["code"]["commit"] == commit and doc["metrics"]["loss"]["steps"] == list(range(12))
    rec = read_record(p.root / "fixtures" / "records" / "tanh" / "cpu")
    assert rec.fingerprint is None and rec.meta.to_json() == doc       # read, written: the same
    assert record_checksum(doc) == doc["checksum"]
    assert sorted(rec.arrays) == ["weights/hidden/b", "weights/hidden/w", "weights/out/b",
                                  "weights/out/w"]
    assert rec.arrays["weights/hidden/w"].shape == (4, 8)

    v = p.repro("verify", "specs/tanh.yaml", "-v", check_rc=0).stdout
    assert "PASS tanh [cpu] within tolerance" in v, v
    assert f"the record came from MLflow run {run_id}" in v and "never bitwise" in v, v
    assert "metric loss" in v and "weights hidden/w" in v, v

    train = p.root / "train.py"
    train.write_text(train.read_text().replace("LR = 0.05", "LR = 0.08"))
    p.commit("a larger learning rate")
    p.repro("pin", "specs/tanh.yaml", check_rc=0)
    fail = p.repro("verify", "specs/tanh.yaml", check_rc=1).stdout
    assert "FAIL tanh [cpu] (changed)" in fail and "first: metric loss at step 1" in fail, fail
    assert "code.commit" in fail and "train.py" in fail, fail
    assert f"the record came from MLflow run {run_id}" in fail, fail


def test_a_registered_model_version_resolves_to_its_run(trained, tmp_path, mlflow_server,
                                                        monkeypatch, capsys):
    from mlflow import MlflowClient

    _, run_id, commit = trained
    client = MlflowClient(mlflow_server.uri)
    name = f"tanh-{uuid.uuid4().hex[:8]}"
    client.create_registered_model(name)
    mv = client.create_model_version(name, source=f"runs:/{run_id}/weights.npz", run_id=run_id)
    client.set_registered_model_alias(name, "production", mv.version)
    p = copy_of(trained, tmp_path)

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)   # the default tracking URI
    rc, out = _cli(p.root, f"models:/{name}@production", "--spec", "specs/tanh.yaml", capsys=capsys)
    assert rc == 0, out
    assert f"MLflow run {run_id}" in out and f"models:/{name}@production (version 1)" in out, out
    src = record_json(p)["source"]
    assert (src["run_id"], src["model"], src["model_version"], src["model_alias"]) == \
        (run_id, name, "1", "production")

    monkeypatch.delenv("MLFLOW_TRACKING_URI")   # [tool.repro] mlflow in pyproject.toml
    p.write("pyproject.toml", f'[tool.repro]\nmlflow = "{mlflow_server.uri}"\n')
    rc, out = _cli(p.root, f"models:/{name}/1", "--spec", "specs/tanh.yaml", capsys=capsys)
    assert rc == 2 and "already holds a record; pass --overwrite" in out, out
    rc, out = _cli(p.root, f"models:/{name}/1", "--spec", "specs/tanh.yaml", "--overwrite",
                   capsys=capsys)
    assert rc == 0 and f"behind models:/{name}/1" in out, out
    src = record_json(p)["source"]
    assert (src["run_id"], src["model"], src["model_version"], src["model_alias"]) == \
        (run_id, name, "1", None)
    assert record_json(p)["code"]["commit"] == commit


@pytest.mark.slow
def test_an_mlflow_project_run_becomes_a_command_spec_that_verifies(trained, tmp_path,
                                                                     mlflow_server):
    p = copy_of(trained, tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "mlflow", "run", ".", "-e", "main", "-P", "steps=9",
         "--env-manager", "local", "--experiment-id", "0"], cwd=p.root, text=True,
        capture_output=True, env={**os.environ, "MLFLOW_TRACKING_URI": mlflow_server.uri})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run_id = proc.stdout.split("MLFLOW_RUN ")[1].split()[0]

    out = p.repro("import", "mlflow", run_id, "--spec", "specs/project.yaml", "--from-project",
                  "--metrics-file", "out/metrics.jsonl:jsonl", "--weights-file",
                  "out/weights.npz:npz", "--tracking-uri", mlflow_server.uri, check_rc=0).stdout
    assert "specs/project.yaml (new, from the run's MLproject)" in out, out
    assert "taken from MLproject's defaults: lr" not in out   # the run logged both
    from repro.spec import load_spec

    spec = load_spec(p.root / "specs" / "project.yaml")
    assert spec.code.command == ["python", "train.py", "--steps", "{config.steps}", "--lr",
                                 "{config.lr}"]
    assert spec.config == {"steps": 9, "lr": 0.05} and spec.record.metrics == ["loss"]
    assert spec.code.commit == git(p.root, "rev-parse", "HEAD")
    v = p.repro("verify", "specs/project.yaml", check_rc=0).stdout
    assert "PASS project [cpu] within tolerance" in v and f"MLflow run {run_id}" in v, v


# -- errors: exit 2, a message saying what and what to do, nothing written -------------------------

def _logged_run(uri: str, commit: str | None, artifacts: dict[str, bytes], tmp: Path) -> str:
    """A run logged through the client (no git context): a metric, these artifacts, and the
    commit tag when given."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    run = client.create_run("0", tags={"mlflow.source.git.commit": commit} if commit else {})
    run_id = run.info.run_id
    for s in range(3):
        client.log_metric(run_id, "loss", 1.0 / (s + 1), step=s)
    for name, data in artifacts.items():
        (tmp / name).write_bytes(data)
        client.log_artifact(run_id, str(tmp / name))
    client.set_terminated(run_id)
    return run_id


def _cli(root: Path, *args: str, capsys) -> tuple[int, str]:
    cwd = os.getcwd()
    os.chdir(root)
    try:
        rc = main(["import", "mlflow", *args])
    finally:
        os.chdir(cwd)
    captured = capsys.readouterr()
    return rc, captured.out + captured.err


def test_bad_inputs_are_clear_errors_that_write_nothing(trained, tmp_path, mlflow_server, capsys):
    _, run_id, commit = trained
    p = copy_of(trained, tmp_path)
    before = p.spec.read_text()
    uri = mlflow_server.uri
    (tmp_path / "art").mkdir()
    no_tag = _logged_run(uri, None, {}, tmp_path / "art")
    weights_pt = _logged_run(uri, commit, {"weights.pt": b"\x80\x04torch-ish"}, tmp_path / "art")
    broken = _logged_run(uri, commit, {"weights.npz": b"not a zip file"}, tmp_path / "art")
    free = subprocess.run([sys.executable, "-c", "import socket; s = socket.socket(); "
                           "s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"],
                          capture_output=True, text=True).stdout.strip()
    other = git(p.root, "rev-list", "--max-parents=0", "HEAD")
    cases = [
        (["0" * 32, "--tracking-uri", uri], f"no MLflow run {'0' * 32} at {uri}"),
        ([no_tag, "--tracking-uri", uri], "has no mlflow.source.git.commit tag"),
        ([weights_pt, "--tracking-uri", uri], "logged no artifact in a format repro reads"),
        ([weights_pt, "--weights", "weights.pt", "--tracking-uri", uri],
         "artifact weights.pt of MLflow run"),
        ([broken, "--tracking-uri", uri], "weights.npz of MLflow run"),
        ([run_id, "--tracking-uri", f"http://127.0.0.1:{free}"],
         f"cannot reach the MLflow tracking server at http://127.0.0.1:{free}"),
        (["models:/no-such-model@production", "--tracking-uri", uri],
         "no registered model 'no-such-model' with the alias 'production'"),
        (["models:/x/Production", "--tracking-uri", uri], "stages (Production, Staging, latest) "
         "are deprecated"),
        ([run_id, "--tracking-uri", uri, "--weights", "nothing.npz"],
         f"MLflow run {run_id} has no artifact 'nothing.npz'"),
    ]
    for args, message in cases:
        rc, out = _cli(p.root, *args, "--spec", "specs/tanh.yaml", capsys=capsys)
        assert rc == 2 and message in out, (args, out)
        assert "Traceback" not in out
        assert p.spec.read_text() == before and not (p.root / "fixtures").exists(), args
    assert "not a readable npz file" in _cli(p.root, broken, "--tracking-uri", uri, "--spec",
                                             "specs/tanh.yaml", capsys=capsys)[1]

    # a spec that says otherwise than the run: each difference named; --overwrite takes the run's
    p.spec.write_text(before.replace("steps: 12", "steps: 10").replace(
        "code:\n", f"code:\n  commit: {other}\n"))
    disagreeing = p.spec.read_text()
    rc, out = _cli(p.root, run_id, "--tracking-uri", uri, "--spec", "specs/tanh.yaml", capsys=capsys)
    assert rc == 2, out
    assert f"code.commit is {other}, the run's mlflow.source.git.commit is {commit}" in out, out
    assert "config.steps is 10, the run's param steps = '12'" in out and "--overwrite" in out, out
    assert p.spec.read_text() == disagreeing and not (p.root / "fixtures").exists()
    rc, out = _cli(p.root, run_id, "--tracking-uri", uri, "--spec", "specs/tanh.yaml",
                   "--overwrite", capsys=capsys)
    assert rc == 0, out
    assert f"commit: {commit}" in p.spec.read_text() and "steps: 12" in p.spec.read_text()


def test_weights_from_a_safetensors_file_or_an_orbax_checkpoint_directory(trained, tmp_path,
                                                                         mlflow_server, capsys):
    """The other two formats a command-form spec reads, logged as artifacts: each imported with
    the keys a verify run of that format gets; with both and neither the spec's, --weights
    must choose."""
    import orbax.checkpoint as ocp
    from safetensors.numpy import save_file

    _, _, commit = trained
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    (tmp_path / "art").mkdir()
    save_file({"hidden/w": w}, str(tmp_path / "art" / "model.safetensors"))
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(str(tmp_path / "ckpt"), {"hidden": {"w": w}})
    checkpointer.wait_until_finished()
    run_id = _logged_run(mlflow_server.uri, commit, {}, tmp_path / "art")
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server.uri)
    client.log_artifact(run_id, str(tmp_path / "art" / "model.safetensors"))
    client.log_artifacts(run_id, str(tmp_path / "ckpt"), "ckpt")
    p = copy_of(trained, tmp_path)
    args = (run_id, "--tracking-uri", mlflow_server.uri, "--spec", "specs/tanh.yaml")
    rc, out = _cli(p.root, *args, capsys=capsys)
    assert rc == 2 and "several weights artifacts (ckpt, model.safetensors)" in out, out
    for artifact, fmt in (("model.safetensors", "safetensors"), ("ckpt", "orbax")):
        rc, out = _cli(p.root, *args, "--weights", artifact, "--overwrite", capsys=capsys)
        assert rc == 0 and f"from artifact {artifact}, {fmt}" in out, out
        rec = read_record(p.root / "fixtures" / "records" / "tanh" / "cpu")
        assert list(rec.arrays) == ["weights/hidden/w"] and rec.meta.source.weights_artifact == artifact
        np.testing.assert_array_equal(rec.arrays["weights/hidden/w"], w)


def test_without_the_extra_the_import_names_it(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q")
    (root / "x.yaml").write_text(SPEC)
    code = ("import sys; sys.modules['mlflow'] = None\n"
            "from repro.cli import main\n"
            "sys.exit(main(['import', 'mlflow', 'a' * 32, '--spec', 'x.yaml', "
            "'--tracking-uri', 'http://127.0.0.1:1']))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "repro import mlflow needs MLflow" in proc.stderr and "repro[mlflow]" in proc.stderr
    assert "Traceback" not in proc.stderr and not (root / "fixtures").exists()
    lazy = subprocess.run([sys.executable, "-c", "import sys, repro.cli, repro.commands.importrun, "
                           "repro.interop.mlflowproject; repro.cli.build_parser(); "
                           "print('mlflow' in sys.modules)"], capture_output=True, text=True)
    assert lazy.stdout.strip() == "False", lazy.stdout + lazy.stderr   # imported when used only


def test_an_mlproject_entry_point_becomes_an_argument_list():
    from repro.interop.mlflowimport import MlflowImportError
    from repro.interop.mlflowproject import entry_point_command

    project = textwrap.dedent('''\
        name: x
        python_env: python_env.yaml
        entry_points:
          main:
            parameters:
              data: path
              alpha: {type: float, default: 0.5}
              epochs: {type: int, default: 3}
              tag: {type: string, default: "a b"}
            command: "python train.py {data} --alpha={alpha} --epochs {epochs} --tag '{tag}'"
          piped:
            command: "python train.py | tee log.txt"
          setenv:
            command: "SEED=1 python train.py"
        ''')
    got = entry_point_command(project, "MLproject", "main", {"data": "d.csv", "alpha": "0.1"})
    assert got.command == ("python", "train.py", "{config.data}", "--alpha={config.alpha}",
                           "--epochs", "{config.epochs}", "--tag", "{config.tag}")
    assert got.config == {"data": "d.csv", "alpha": 0.1, "epochs": 3, "tag": "a b"}
    assert got.defaults_used == ("epochs", "tag") and got.environment == "python_env"
    for entry, message in [("piped", "uses the shell ('|')"), ("setenv", "uses the shell ('SEED=1')"),
                           ("other", "declares no entry point 'other'")]:
        with pytest.raises(MlflowImportError, match=message.replace("(", r"\(").replace(")", r"\)")
                           .replace("|", r"\|")):
            entry_point_command(project, "MLproject", entry, {})
    with pytest.raises(MlflowImportError, match="parameter 'alpha' is 'fast', not a float"):
        entry_point_command(project, "MLproject", "main", {"data": "d", "alpha": "fast"})
    with pytest.raises(MlflowImportError, match="'data' has no default and the run logged no value"):
        entry_point_command(project, "MLproject", "main", {})


def test_an_imported_record_round_trips_and_an_unsourced_null_fingerprint_is_refused(tmp_path):
    """Format 2 (imported) keeps its bytes like format 1, `repro diff` reads it, and only a
    record with a source may lack a fingerprint."""
    from repro.changes import diff_records
    from repro.errors import RecordError
    from repro.record import CodeInfo, RecordMeta, SourceInfo, SpecInfo, write_record

    meta = RecordMeta(repro_version="0", created="2026-01-01T00:00:00+00:00",
                      spec=SpecInfo(name="x", hash="0" * 64, canonical={}, file="x.yaml"),
                      code=CodeInfo(mode="pinned", commit="a" * 40), data={}, backend="",
                      platform="cpu", fingerprint=None,
                      metrics={"loss": {"steps": [0, 1], "values": [1.0, 0.5], "dtype": "float64"}},
                      grad_steps=[], source=SourceInfo(kind="mlflow", tracking_uri="http://h",
                                                       run_id="r" * 32))
    directory = write_record(tmp_path / "x" / "cpu", meta, {"weights/w": np.ones(3, np.float32)})
    raw = (directory / "record.json").read_text()
    rec = read_record(directory)
    assert rec.meta.format == IMPORTED_FORMAT and rec.fingerprint is None
    assert json.dumps(rec.meta.to_json(), indent=1, sort_keys=True) == raw.rstrip("\n")
    diff = diff_records(directory, directory)    # `repro diff`: no fingerprint on either side
    assert diff.status == "pass" and not diff.bitwise and not diff.changes
    assert any(f"came from MLflow run {'r' * 32}" in n for n in diff.notes), diff.notes
    doc = json.loads(raw)
    del doc["source"]
    with pytest.raises(RecordError, match="only an imported record"):
        RecordMeta.from_json(doc, directory / "record.json")


def test_fail_fast_never_holds_an_imported_record_to_exact():
    """Under `tolerance.mode: exact` fail-fast stops a run at any difference, since the final
    comparison will be bitwise; an imported record is compared within tolerance, so fail-fast
    must stop only outside the tolerance (else it would fail a run the comparison passes)."""
    from repro.env.fingerprint import Fingerprint
    from repro.failfast import expecting
    from repro.job import Job, Limit
    from repro.record import CodeInfo, RecordMeta, SourceInfo, SpecInfo
    from repro.spec import parse_spec

    spec = parse_spec({"repro": 1, "code": {"entrypoint": "m:train"},
                       "tolerance": {"mode": "exact", "default": {"rtol": 1e-4, "atol": 1e-6}}},
                      file="x.yaml", default_name="x", require_pins=False)
    job = Job(spec="x", entrypoint="m:train", tree="/", data={}, seeds={}, config={}, settings={},
              cpus=1)

    def meta(**kw) -> RecordMeta:
        return RecordMeta(repro_version="0", created="2026-01-01T00:00:00+00:00",
                          spec=SpecInfo(name="x", hash="0" * 64, canonical={}, file="x.yaml"),
                          code=CodeInfo(mode="pinned", commit="a" * 40), data={}, backend="",
                          platform="cpu", grad_steps=[],
                          metrics={"loss": {"steps": [0], "values": [1.0], "dtype": "float64"}}, **kw)
    imported = meta(fingerprint=None, source=SourceInfo(kind="mlflow", tracking_uri="http://h",
                                                        run_id="r" * 32))
    assert expecting(job, spec, imported, True).expect["loss"].limit == Limit(1e-4, 1e-6)
    assert expecting(job, spec, meta(fingerprint=Fingerprint()), True).expect["loss"].limit == \
        Limit(0.0, 0.0)
