"""Bad runs: every failure of user code or of the environment is a clear verdict, never a
traceback from repro's insides, and never a pass."""
from __future__ import annotations

import os

import pytest

from repro import pipeline


def _break_training(project, old: str, new: str) -> None:
    train = project.root / "tinyproj" / "train.py"
    text = train.read_text()
    assert old in text
    train.write_text(text.replace(old, new))
    project.commit("break training")
    project.repro("pin", str(project.spec), check_rc=0)


def test_exception_in_user_code_shows_the_users_frames_only(project):
    train = project.root / "tinyproj" / "train.py"
    train.write_text(train.read_text().replace("    step_fn = jax.jit", "    raise_deep(ctx)\n    step_fn = jax.jit")
                     + "\n\ndef raise_deep(ctx):\n    raise ValueError(f\"bad config: lr={ctx.config['lr']}\")\n")
    project.commit("raise in user code")
    project.repro("pin", str(project.spec), check_rc=0)
    proc = project.repro("run", str(project.spec), check_rc=2)
    out = proc.stdout
    assert "the training function raised: ValueError: bad config: lr=0.05" in out
    assert "your frames only" in out
    assert "tinyproj/train.py" in out and "raise_deep" in out
    assert "repro/child/runner.py" not in out  # the harness's own frames are trimmed


def test_nan_metric_is_named_with_its_step(project):
    _break_training(project, "ctx.log(step, loss=loss)",
                    "ctx.log(step, loss=loss if step < 5 else jnp.nan)")
    v = pipeline.run(project.spec)
    assert v.status == "error"
    assert "metric 'loss' is not finite at step 5 (nan)" in v.error
    assert pipeline.record(project.spec).status == "error"
    assert not project.record_dir.exists()


def test_timeout_kills_the_run_and_says_so(project):
    _break_training(project, "    return params", "    import time\n    time.sleep(60)\n    return params")
    v = pipeline.run(project.spec, pipeline.Options(timeout=8))
    assert v.status == "error"
    assert "timed out after 8 s and was killed" in v.error


def test_missing_commit_is_exit_2_naming_it(project):
    bogus = "0123456789abcdef0123456789abcdef01234567"
    text = project.spec.read_text()
    import re
    project.spec.write_text(re.sub(r"commit: [0-9a-f]{40}", f"commit: {bogus}", text))
    proc = project.repro("verify", str(project.spec), check_rc=2)
    assert f"pinned commit {bogus} does not exist" in proc.stdout


def test_missing_entrypoint_function_is_a_clear_error(project):
    project.edit_spec("tinyproj.train:train", "tinyproj.train:fit")
    v = pipeline.run(project.spec)
    assert v.status == "error"
    assert "cannot load entrypoint 'tinyproj.train:fit'" in v.error
    assert "AttributeError" in v.error


def test_package_pins_are_asserted_inside_the_run(project):
    project.edit_spec("seeds: {params: 0}", "environment:\n  packages: {numpy: 0.0.1, jax: 0.10.2}\n"
                      "seeds: {params: 0}")
    v = pipeline.run(project.spec)
    assert v.status == "error"
    assert "numpy: expected 0.0.1, found" in v.error


def test_inherited_jax_and_xla_variables_are_dropped_and_noted(project, monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=true")
    monkeypatch.setenv("JAX_ENABLE_X64", "1")
    v = pipeline.run(project.spec)
    assert v.status == "ran", v.error
    assert any("JAX_ENABLE_X64" in n and "XLA_FLAGS" in n for n in v.notes)
    assert v.fingerprint.settings["jax_enable_x64"] is False
    assert "fast_math=false" in v.fingerprint.xla_flags


def test_fingerprint_holds_the_determinism_facts(project):
    v = pipeline.run(project.spec)
    fp = v.fingerprint
    for key in ("python", "jax", "jaxlib", "numpy", "backend", "device_kind", "device_count",
                "cpus", "cpu_isa", "prng_canary", "settings"):
        assert getattr(fp, key) is not None and key in fp.to_json(), key
    assert fp.cpus == 1 and fp.backend == "cpu"
    assert fp.prng_canary is not None and len(fp.prng_canary) == 64
    assert fp.settings["jax_default_prng_impl"] == "threefry2x32"
    assert fp.settings["jax_threefry_partitionable"] is True


def test_more_cpus_than_the_machine_has_is_a_clear_error(project):
    project.edit_spec("seeds: {params: 0}", "environment: {cpus: 4096}\nseeds: {params: 0}")
    from repro.errors import SpecError
    with pytest.raises(SpecError, match="environment.cpus"):
        pipeline.as_spec(project.spec)
    n = len(os.sched_getaffinity(0)) + 1
    project.edit_spec("environment: {cpus: 4096}", f"environment: {{cpus: {n}}}")
    v = pipeline.run(project.spec)
    assert v.status == "error"
    assert f"environment.cpus is {n}" in v.error


def test_record_refuses_metrics_the_run_never_logged(project):
    project.edit_spec("metrics: [loss]", "metrics: [loss, accuracy]")
    v = pipeline.record(project.spec)
    assert v.status == "error"
    assert "record.metrics lists ['accuracy']" in v.error


def test_worktree_mode_says_it_and_whether_dirty(project):
    (project.root / "notes.txt").write_text("scratch\n")
    v = pipeline.run(project.spec, pipeline.Options(code="worktree"))
    assert v.status == "ran", v.error
    assert "working tree" in v.code and "dirty: 1 changed file" in v.code


def test_a_killed_repro_process_takes_its_training_run_with_it(project):
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import alive, runner_children

    _break_training(project, "    return params", "    import time\n    time.sleep(120)\n    return params")
    proc = subprocess.Popen([sys.executable, "-m", "repro.cli", "run", "--no-stream", str(project.spec)],
                            cwd=project.root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    deadline = time.time() + 60
    while time.time() < deadline and not runner_children(proc.pid):
        time.sleep(0.2)
    kids = runner_children(proc.pid)
    assert kids, "the training child should be running"
    time.sleep(2.0)  # well inside train(), past the runner's start-up
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline and alive(kids):
        time.sleep(0.1)
    assert alive(kids) == [], "the child outlived its killed parent"


def test_a_run_directory_in_use_is_never_removed_as_stale(tmp_path, monkeypatch):
    """A run directory is stale when its process is gone: a pid this process cannot see (a
    process in another PID namespace: a container, a sandboxed test) is not enough while the
    directory's in-use lock is held; once it is let go, the directory goes."""
    import os

    from repro.backends.base import _HELD, IN_USE, RunDir

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    run = RunDir.create("inuse")
    dead_pid = 4194304 + 7            # above any pid_max: no such process here
    moved = tmp_path / f"repro-{dead_pid}-inuse-x"
    run.root.rename(moved)            # as another namespace's run looks from here
    assert (moved / IN_USE).exists()
    RunDir.remove_stale()
    assert moved.exists(), "a held run directory was removed"
    os.close(_HELD.pop(run.root))     # its process lets go (or dies)
    RunDir.remove_stale()
    assert not moved.exists(), "a run directory nobody holds stayed"
