"""`repro env build` and rebuild-from-recipe against a real Docker Engine.

The recipes here build FROM the envs/cpu image (repro-jax-cpu:latest, built by
envs/setup.sh) with an empty lock, so each build takes a second or two; the full offline
path (debootstrap base, wheels downloaded on the host) is what `.ci/run` exercises on envs/cpu.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from dockerutil import cpu_image_id, engine_client, pin_image, repro_containers

from repro import pipeline

pytestmark = pytest.mark.slow   # a real Docker engine and image builds: `-m "not slow"` leaves them out

DOCKER = pipeline.Options(backend="docker")
FAKE_DIST = ("RUN d=/opt/venv/lib/python3.11/site-packages/fakepkg-1.0.dist-info && mkdir $d "
             "&& printf 'Metadata-Version: 2.1\\nName: fakepkg\\nVersion: 1.0\\n' > $d/METADATA")


@pytest.fixture(scope="module")
def client():
    c = engine_client()
    cpu_image_id(c)
    return c


@pytest.fixture
def recipe(tmp_path, client):
    """A recipe directory maker; every image it builds is removed afterwards."""
    names = []

    def make(root: Path, extra: str = "", lock: str = "# nothing to install\n") -> Path:
        name = f"repro-test-{uuid.uuid4().hex[:8]}"
        names.append(name)
        d = root / "envs" / "t"
        d.mkdir(parents=True, exist_ok=True)
        (d / "Dockerfile").write_text(f"FROM repro-jax-cpu:latest\nLABEL repro.test={name}\n{extra}\n")
        (d / "requirements.lock").write_text(lock)
        (d / "recipe.yaml").write_text(f"image: {name}\n")
        return d

    yield make
    for name in names:
        for image in client.images.list(name=name):
            client.images.remove(image.id, force=True)


def test_env_build_prints_name_at_digest_last(tmp_path, recipe, client):
    d = recipe(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "repro.cli", "env", "build", str(d)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    m = re.fullmatch(r"(repro-test-[0-9a-f]{8})@(sha256:[0-9a-f]{64})", last)
    assert m, last
    assert client.images.get(f"{m[1]}:latest").id == m[2]


def test_env_build_refuses_an_unhashed_lock(tmp_path, recipe):
    d = recipe(tmp_path, lock="numpy==2.4.6\n")
    proc = subprocess.run([sys.executable, "-m", "repro.cli", "env", "build", str(d)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "numpy==2.4.6 has no --hash" in proc.stderr


def _rename(project, name: str) -> Path:
    """A spec name of its own (test_audit counts `repro-tiny-*` runs machine-wide)."""
    project.edit_spec("name: tiny", f"name: {name}")
    return project.root / "fixtures" / "records" / name / "cpu"


def test_rebuild_from_recipe_runs_only_when_the_package_set_matches(project, recipe, client):
    cpu = cpu_image_id(client)
    record_dir = _rename(project, "dk-rebuild")
    d = recipe(project.root)
    pin_image(project, f"repro-jax-cpu@{cpu}", extra="  recipe: envs/t\n")
    assert pipeline.record(project.spec, DOCKER).status == "recorded"
    meta = json.loads((record_dir / "record.json").read_text())
    assert meta["image"] == f"repro-jax-cpu@{cpu}"

    absent = "sha256:" + uuid.uuid4().hex * 2
    project.edit_spec(f"repro-jax-cpu@{cpu}", f"repro-jax-cpu@{absent}")
    v = pipeline.verify(project.spec, DOCKER)
    assert v.status == "pass", v.error or v.rows
    assert v.bitwise is True
    rebuilt = [n for n in v.notes if "rebuilt it from recipe envs/t" in n]
    assert rebuilt and "digest differs, package set identical to the record's" in rebuilt[0]

    # the recipe now installs one more (fake) distribution: the rebuild is refused, not run
    (d / "Dockerfile").write_text((d / "Dockerfile").read_text() + FAKE_DIST + "\n")
    v = pipeline.verify(project.spec, DOCKER)
    assert v.status == "error"
    assert "the rebuilt image installs other packages than the record was made with" in v.error
    assert "+fakepkg==1.0" in v.error
    assert repro_containers("dk-rebuild") == []


def test_rebuild_needs_a_record_made_in_a_container(project, recipe, client):
    recipe(project.root)
    _rename(project, "dk-local-record")
    assert pipeline.record(project.spec).status == "recorded"  # local backend
    pin_image(project, "repro-jax-cpu@sha256:" + uuid.uuid4().hex * 2, extra="  recipe: envs/t\n")
    v = pipeline.verify(project.spec, DOCKER)
    assert v.status == "error"
    assert "the record (made with the local backend) holds no installed-package list" in v.error


def test_pin_rewrites_the_image_digest_to_the_local_image(project, client):
    image_id = cpu_image_id(client)
    stale = "repro-jax-cpu@sha256:" + "0" * 64
    pin_image(project, stale)
    project.repro("pin", str(project.spec), check_rc=0)
    assert f"image: repro-jax-cpu@{image_id}" in project.spec.read_text()
    # an image name with no local image keeps its pin and says why
    missing = "repro-no-such-image@sha256:" + "1" * 64
    project.spec.write_text(project.spec.read_text().replace(f"repro-jax-cpu@{image_id}", missing))
    proc = project.repro("pin", str(project.spec), check_rc=0)
    assert missing in project.spec.read_text()
    assert "no local image 'repro-no-such-image'" in proc.stderr
