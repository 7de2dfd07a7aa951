"""The child started ahead of its job (repro/backends/prestart.py): `repro verify SPEC` starts
its run's child while the command loads, hands it its job, and the verdict is the same; a start
the job does not match is never used, and a command that fails before its run leaves no child
and no directory behind. Real processes, real git, no mocks."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import Project

EARLY = "the process started while repro loaded"


def copy_of(template: Project, tmp_path: Path) -> Project:
    root = tmp_path / "proj"
    shutil.copytree(template.root, root, symlinks=True)
    return Project(root)


def verify(p: Project, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    """`repro verify specs/tiny.yaml -v` with its temporary files (the early child's directory)
    under `tmp`."""
    tmp.mkdir(exist_ok=True)
    return subprocess.run([sys.executable, "-m", "repro.cli", "verify", "specs/tiny.yaml", "-v",
                           "--no-stream", *args], cwd=p.root, text=True, capture_output=True,
                          env={**os.environ, "TMPDIR": str(tmp)})


def leftovers(tmp: Path) -> list[str]:
    return sorted(x.name for x in tmp.glob("repro-early-*"))


def test_a_verify_starts_its_child_early_and_its_verdict_is_bitwise(recorded_template, tmp_path):
    p, tmp = copy_of(recorded_template, tmp_path), tmp_path / "tmp"
    for _ in range(2):   # the first reads the spec for the start, the second its cached start
        proc = verify(p, tmp)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "PASS tiny [cpu] bitwise identical" in proc.stdout and EARLY in proc.stdout, proc.stdout
        assert leftovers(tmp) == []


def test_a_start_the_job_does_not_match_is_not_used_and_its_cache_entry_goes(recorded_template,
                                                                           tmp_path, monkeypatch):
    from repro.backends.prestart import _cache_file

    monkeypatch.setenv("REPRO_CACHE_DIR", str(tmp_path / "cache"))   # the stale entry is ours alone
    p, tmp = copy_of(recorded_template, tmp_path), tmp_path / "tmp"
    cached = _cache_file((p.root / "specs/tiny.yaml").read_bytes())
    cached.parent.mkdir(parents=True, exist_ok=True)
    # a stale entry: the same bytes once gave another start (two cores, another isa)
    cached.write_text(json.dumps({"cpus": 2, "isa": "native", "settings": [], "xla_flags": []}))
    proc = verify(p, tmp)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASS tiny [cpu] bitwise identical" in proc.stdout and EARLY not in proc.stdout, proc.stdout
    assert leftovers(tmp) == [] and not cached.exists()
    proc = verify(p, tmp)   # read from the spec again, and cached right
    assert "PASS tiny [cpu] bitwise identical" in proc.stdout and EARLY in proc.stdout, proc.stdout
    assert json.loads(cached.read_text())["cpus"] == 1


def test_a_command_that_fails_before_its_run_leaves_no_early_child(recorded_template, tmp_path):
    p, tmp = copy_of(recorded_template, tmp_path), tmp_path / "tmp"
    p.data.write_bytes(p.data.read_bytes() + b"\0")   # the pinned data changed: exit 2, no run
    proc = verify(p, tmp)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "sha256" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert leftovers(tmp) == []
    stray = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and str(tmp).encode() in (entry / "cmdline").read_bytes():
                stray.append(int(entry.name))
        except OSError:
            continue
    assert stray == [], stray
