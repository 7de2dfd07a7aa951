"""`repro audit --mlflow`: each verdict becomes a run in a real MLflow server (tests/mlflowserver.py,
sqlite backend, served artifacts), read back through MLflow's own client; a later night's run
lines up with the first; an unreachable server is a warning after the audit's reports, not a
lost audit; a missing extra or a bad setting is exit 2 before anything trains."""
from __future__ import annotations

import datetime as dt
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from repro.interop.mlflowlog import MlflowSink
from repro.interop.publish import metric_key, publication, publish_all
from repro.verdict import FAIL, PASS, QuantityResult, Verdict
from tests.conftest import Project, lr_times, sha256
from tests.s3server import free_port

# one worker runs the module (`--dist loadgroup`): its real MLflow server, started once per
# worker that runs any of its tests, costs 15-25 s of setup
pytestmark = pytest.mark.xdist_group("mlflow-audit")


def _copy(template: Project, tmp_path: Path) -> Project:
    shutil.copytree(template.root, tmp_path / "p", symlinks=True)
    return Project(tmp_path / "p")


def _runs(uri: str, experiment: str):
    """MLflow's own client and the experiment's runs, oldest first."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment!r} in {uri}"
    return client, client.search_runs([found.experiment_id],
                                      order_by=["attributes.start_time ASC"])


def _artifact(client, run_id: str, name: str, tmp_path: Path) -> bytes:
    dst = tmp_path / f"dl-{run_id}"
    dst.mkdir(exist_ok=True)
    return Path(client.download_artifacts(run_id, name, str(dst))).read_bytes()


@pytest.mark.slow
def test_each_verdict_is_a_run_and_a_later_night_lines_up(recorded_template, mlflow_server,
                                                          tmp_path):
    p = _copy(recorded_template, tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    proc = p.repro("audit", "specs", "--json", str(out / "n1.json"), "--report",
                   str(out / "n1.html"), "--mlflow", mlflow_server.uri, "--mlflow-experiment",
                   "nightly")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"mlflow: 1 run in {mlflow_server.uri}/#/experiments/" in proc.stdout
    assert "View run" not in proc.stdout        # MLflow's own per-run print is silenced
    doc = json.loads((out / "n1.json").read_text())["results"][0]

    client, runs = _runs(mlflow_server.uri, "nightly")
    assert len(runs) == 1
    first = runs[0]
    assert first.info.run_name == "tiny" and first.info.status == "FINISHED"
    assert first.data.params == {"spec": "specs/tiny.yaml", "commit": doc["pins"]["commit"],
                                 "image": "none", "platform": "cpu", "backend": "local",
                                 "data/xy": sha256(p.data)}
    tags = first.data.tags
    assert tags["status"] == "pass" and tags["compared"] == "bitwise"
    assert tags["spec_hash"] == doc["pins"]["spec_hash"] and tags["spec_name"] == "tiny"
    assert "fail_class" not in tags and "first_divergence" not in tags
    assert tags["mlflow.note.content"] == "bitwise"
    m = first.data.metrics
    assert m["max_abs_error/metric/loss"] == 0.0 and m["max_rel_error/weights/out/w"] == 0.0
    assert m["exit_code"] == 0.0 and m["quantities_out_of_tolerance"] == 0.0
    assert m["quantities_compared"] == len(doc["quantities"])
    assert m["training_s"] > 0 and m["duration_s"] == pytest.approx(doc["duration_s"], abs=1e-3)
    assert m["final/loss"] == doc["metrics_final"]["loss"]
    assert "first_divergent_step" not in m
    run_id = first.info.run_id
    assert sorted(a.path for a in client.list_artifacts(run_id)) == ["report.html", "verdict.json"]
    assert json.loads(_artifact(client, run_id, "verdict.json", tmp_path)) == doc
    assert _artifact(client, run_id, "report.html", tmp_path) == (out / "n1.html").read_bytes()

    # the next night: the training changed, and the server comes from [tool.repro]
    lr_times(p, "1.5")
    p.write("pyproject.toml", f'[tool.repro]\nmlflow = "{mlflow_server.uri}"\n'
                              'mlflow_experiment = "nightly"\n')
    proc = p.repro("audit", "specs", "--json", str(out / "n2.json"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "mlflow: 1 run in" in proc.stdout and "warning" not in proc.stderr
    doc2 = json.loads((out / "n2.json").read_text())["results"][0]

    client, runs = _runs(mlflow_server.uri, "nightly")
    assert [r.info.run_name for r in runs] == ["tiny", "tiny"]
    second = runs[1]
    assert second.info.status == "FAILED"
    tags = second.data.tags
    assert tags["status"] == "fail" and tags["fail_class"] == "changed"
    assert tags["first_divergence"] == "metric loss" == doc2["first_divergence"]["quantity"]
    step = doc2["first_divergence"]["step"]
    assert step is not None
    assert tags["mlflow.note.content"].startswith(f"changed: metric loss at step {step}, max rel")
    assert second.data.params["commit"] == doc2["pins"]["commit"] != first.data.params["commit"]
    m2 = second.data.metrics
    assert m2["first_divergent_step"] == step and m2["exit_code"] == 1.0
    assert m2["max_abs_error/metric/loss"] > 0
    # the same names every night: the compare view lines the two runs up
    assert set(m2) - set(first.data.metrics) == {"first_divergent_step"}
    assert set(first.data.metrics) <= set(m2)
    assert [a.path for a in client.list_artifacts(second.info.run_id)] == ["verdict.json"]


@pytest.mark.slow
def test_an_unreachable_server_is_a_warning_after_the_reports(recorded_template, tmp_path):
    p = _copy(recorded_template, tmp_path)
    uri = f"http://127.0.0.1:{free_port()}"      # nothing listens there
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "repro.cli", "audit", "specs", "--json",
                           str(tmp_path / "a.json"), "--mlflow", uri], cwd=p.root, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=os.environ.copy())
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout     # the audit's own code
    doc = json.loads((tmp_path / "a.json").read_text())
    assert doc["summary"]["pass"] == 1
    lines = proc.stdout.strip().splitlines()
    warning = lines[-1]
    assert lines[-2] == f"json: {tmp_path / 'a.json'}"           # the reports came first
    assert warning.startswith(f"repro: warning: MLflow at {uri} (experiment repro-audit): "
                              "opening failed: MlflowException:"), proc.stdout
    assert "Connection refused" in warning and "nothing was published there" in warning
    assert "exit code is unchanged" in warning
    # seconds, not the client's default minutes of retries (7 retries, backoff 2)
    assert elapsed - doc["duration_s"] < 20, (elapsed, doc["duration_s"])


def _verdict(name: str, status=PASS, **kw) -> Verdict:
    rows = kw.pop("rows", [QuantityResult("metric", "loss", True, True, n_total=12)])
    return Verdict(name=name, status=status, spec_path=f"specs/{name}.yaml", platform="cpu",
                   spec_hash="ab" * 32, commit="c" * 40, rows=rows,
                   pins={"commit": "c" * 40, "spec_hash": "ab" * 32,
                         "data": {"xy": "d" * 64}, "image": None}, **kw)


def test_names_mlflow_refuses_are_published_the_same_way_every_night(mlflow_server, tmp_path):
    """Leaf names MLflow would refuse (brackets, a `..` segment, doubled slashes) and
    non-finite errors reach the server; the names are stable and stay apart."""
    odd = ["layers[0]/w", "layers(0)/w", "a//b", "x/../y", "ok/name"]
    rows = [QuantityResult("grad", n, False, False, first_step=3, max_abs=0.5, max_rel=0.25,
                           rtol=1e-6, atol=0.0) for n in odd]
    rows.append(QuantityResult("weight", "w", False, False, max_abs=math.inf, max_rel=math.nan))
    v = _verdict("odd-names", FAIL, rows=rows, fail_class="nondeterministic",
                 timings={"train_s": 1.5}, metrics_final={"loss": 0.25, "note": "text"})
    item = publication(v, {"name": "odd-names"}, started="2026-11-28T04:12:16+00:00",
                       note="nondeterministic: grad layers[0]/w at step 3")
    sink = MlflowSink(mlflow_server.uri, "odd-names")
    [outcome] = publish_all([sink], [item])
    assert outcome.failure == "" and outcome.published == ["odd-names"]

    client, [run] = _runs(mlflow_server.uri, "odd-names")
    m = run.data.metrics
    keys = {n: f"max_abs_error/grad/{n}" for n in odd}
    assert keys["ok/name"] in m and m[keys["ok/name"]] == 0.5      # a good name is kept as is
    for name in odd[:4]:
        key = metric_key(keys[name])
        assert key != keys[name] and key == metric_key(keys[name]) and m[key] == 0.5
    assert len({metric_key(k) for k in keys.values()}) == len(odd)    # none merged
    assert m["max_abs_error/weights/w"] > 1e308                  # MLflow keeps +inf as max float
    assert math.isnan(m["max_rel_error/weights/w"])
    assert m["first_divergent_step"] == 3.0 and m["final/loss"] == 0.25
    assert "final/note" not in m                                 # not a number
    assert run.data.tags["fail_class"] == "nondeterministic"
    assert run.data.tags["first_divergence"] == "grad layers[0]/w"
    night = dt.datetime(2026, 11, 28, 4, 12, 16, tzinfo=dt.UTC)
    assert run.info.start_time == night.timestamp() * 1000      # the night the audit ran
    assert run.info.end_time - run.info.start_time == 0          # the verdict's duration (0 s)
    assert json.loads(_artifact(client, run.info.run_id, "verdict.json", tmp_path)) == \
        {"name": "odd-names"}


def test_a_deleted_experiment_says_how_to_restore_it(mlflow_server):
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server.uri)
    client.delete_experiment(client.create_experiment("gone"))
    item = publication(_verdict("tiny"), {}, started="2026-11-28T04:12:16+00:00")
    [outcome] = publish_all([MlflowSink(mlflow_server.uri, "gone")], [item])
    assert outcome.published == []
    assert "opening failed" in outcome.failure and "is deleted in MLflow" in outcome.failure
    assert "mlflow experiments restore --experiment-id" in outcome.failure
    assert "--mlflow-experiment" in outcome.failure



def test_a_verdict_that_cannot_be_published_leaves_no_half_run(mlflow_server, tmp_path):
    """The HTML report is gone by the time the second verdict goes out: the first is a whole
    run, the second leaves nothing behind, and the warning says how far it got."""
    night = "2026-11-28T04:12:16+00:00"
    first = publication(_verdict("a"), {"name": "a"}, started=night)
    second = publication(_verdict("b"), {"name": "b"}, started=night, report=tmp_path / "gone.html")
    [outcome] = publish_all([MlflowSink(mlflow_server.uri, "half")], [first, second])
    assert outcome.published == ["a"]
    assert outcome.failure.startswith("publishing b failed: FileNotFoundError"), outcome.failure
    assert "published 1 of 2 verdicts (a) before this" in outcome.warning()
    _, runs = _runs(mlflow_server.uri, "half")
    assert [r.info.run_name for r in runs] == ["a"]


def test_an_interrupted_audit_publishes_nothing():
    """Half a night would read as a night in MLflow: an audit stopped by Ctrl-C publishes
    nothing and says so; the server is not even contacted (nothing listens at this URI)."""
    from repro.commands.audit import Audit, publish_audit
    from repro.pipeline import Options

    audit = Audit("specs", 1, Options(), "2026-11-28T04:12:16+00:00", complete=False,
                  verdicts=[_verdict("tiny")])
    sink = MlflowSink(f"http://127.0.0.1:{free_port()}")
    t0 = time.monotonic()
    [outcome] = publish_audit([sink], audit, [{}])
    assert time.monotonic() - t0 < 1.0          # no connection tried, so no retry waited
    assert outcome.published == [] and outcome.failure == "not published: the audit was interrupted"
    assert "nothing was published there" in outcome.warning()

def _without_mlflow(project: Project, *args: str) -> subprocess.CompletedProcess:
    """The CLI in a process where `import mlflow` fails, as without the extra."""
    code = ("import sys; sys.modules['mlflow'] = None; from repro.cli import main; "
            f"sys.exit(main({list(args)!r}))")
    return subprocess.run([sys.executable, "-c", code], cwd=project.root, text=True,
                          capture_output=True, env=os.environ.copy())


def test_without_the_extra_the_audit_is_exit_2_before_anything_trains(project, tmp_path):
    out = tmp_path / "a.json"
    settings = {"setting": '[tool.repro]\nmlflow = "http://127.0.0.1:9"\n',
                "table": '[tool.repro.mlflow]\ntracking_uri = "http://127.0.0.1:9"\n'}
    for args, how in ((("--mlflow", "http://127.0.0.1:9"), "flag"), ((), "setting"), ((), "table")):
        if how in settings:
            project.write("pyproject.toml", settings[how])
        proc = _without_mlflow(project, "audit", "specs", "--json", str(out), *args)
        assert proc.returncode == 2, (how, proc.stdout, proc.stderr)
        assert "repro audit --mlflow needs MLflow" in proc.stderr, proc.stderr
        assert "pip install 'repro[mlflow]'" in proc.stderr
        assert not out.exists() and "1/1" not in proc.stdout      # nothing ran
    # --no-mlflow turns the setting off: the audit runs (and errors: tiny is not recorded)
    proc = _without_mlflow(project, "audit", "specs", "--json", str(out), "--no-mlflow")
    assert proc.returncode == 2 and out.exists(), proc.stderr
    assert json.loads(out.read_text())["results"][0]["status"] == "error"


def test_bad_publishing_flags_and_settings_are_exit_2_before_anything_trains(project, tmp_path):
    out = tmp_path / "a.json"
    cases = [
        (("--mlflow-experiment", "nightly"), "no tracking server is given: add --mlflow URI"),
        (("--mlflow", "http://x", "--no-mlflow"), "--no-mlflow with --mlflow"),
        (("--mlflow", " "), "--mlflow was given an empty value"),
    ]
    for args, message in cases:
        proc = project.repro("audit", "specs", "--json", str(out), *args)
        assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr)
    project.write("pyproject.toml", "[tool.repro]\nmlflow = 5\n")
    proc = project.repro("audit", "specs", "--json", str(out))
    assert proc.returncode == 2
    assert f"{project.root.resolve() / 'pyproject.toml'}: [tool.repro] mlflow must be a " \
           "non-empty string" in proc.stderr, proc.stderr
    project.write("pyproject.toml", "[tool.repro.mlflow]\ntracking_uri = 5\n")
    proc = project.repro("audit", "specs", "--json", str(out))
    assert proc.returncode == 2 and "[tool.repro] mlflow.tracking_uri must be a non-empty " \
        "string" in proc.stderr, proc.stderr
    project.write("pyproject.toml", "[tool.repro\n")
    proc = project.repro("audit", "specs", "--json", str(out))
    assert proc.returncode == 2 and "pyproject.toml cannot be read" in proc.stderr
    assert "--no-mlflow" in proc.stderr
    assert not out.exists()


def test_an_audit_that_publishes_nowhere_imports_neither_tool(project):
    """The extras are imported only when their feature is used: deciding that an audit
    publishes nowhere loads neither MLflow nor wandb."""
    code = ("import sys; from repro.commands.audit import Publishing, audit_sinks; "
            "import repro.cli; assert audit_sinks('specs', Publishing()) == []; "
            "print(sorted(m for m in ('mlflow', 'wandb') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=project.root, text=True,
                          capture_output=True, env=os.environ.copy())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_mlflow_reports_nothing_to_its_vendor(tmp_path):
    """Outside CI, importing mlflow starts its usage telemetry; the sink imports it with
    telemetry off, and leaves the variable as it found it."""
    ci = ("PYTEST_CURRENT_TEST", "CI", "GITHUB_ACTIONS", "GITLAB_CI", "JENKINS_URL", "BUILDKITE",
          "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK")
    env = {k: v for k, v in os.environ.items() if k not in ci}
    probe = ("from mlflow.telemetry.client import get_telemetry_client; "
             "from mlflow.telemetry.utils import _is_ci_env_or_testing; import os; "
             "print(_is_ci_env_or_testing(), get_telemetry_client() is None, "
             "'MLFLOW_DISABLE_TELEMETRY' in os.environ)")
    plain = subprocess.run([sys.executable, "-c", "import mlflow; " + probe], env=env, text=True,
                           capture_output=True, cwd=tmp_path)
    assert plain.stdout.split() == ["False", "False", "False"], plain.stderr   # on, by default
    ours = subprocess.run([sys.executable, "-c", "from repro.interop.mlflowlog import MlflowSink; "
                           "MlflowSink('http://127.0.0.1:9'); " + probe], env=env, text=True,
                          capture_output=True, cwd=tmp_path)
    assert ours.stdout.split() == ["False", "True", "False"], ours.stderr
