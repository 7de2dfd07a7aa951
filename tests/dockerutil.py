"""Helpers for the docker tests: a real engine, the project's envs/cpu image, no mocks.

Outside CI a missing engine or image skips the docker tests with the reason; in CI (CI=true)
it fails them, because `.ci/run` sets both up (envs/setup.sh).
"""
from __future__ import annotations

import os
import subprocess

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
SETUP = "bash envs/setup.sh (as root) installs and starts an engine and builds the images"


def unavailable(reason: str):
    if IN_CI:
        pytest.fail(f"CI needs the docker tests to run: {reason}; {SETUP}", pytrace=False)
    pytest.skip(f"{reason}; {SETUP}")


def engine_client():
    from repro.docker.client import EngineError, connect

    try:
        return connect(timeout=30)
    except EngineError as exc:
        unavailable(str(exc))


def cpu_image_id(client) -> str:
    import docker

    try:
        return client.images.get("repro-jax-cpu:latest").id
    except docker.errors.ImageNotFound:
        unavailable("the envs/cpu image (repro-jax-cpu:latest) is not built")


def repro_containers(label_value: str | None = None) -> list[str]:
    """Containers (running or not) that carry repro's label, as `docker ps -a` lists them."""
    flt = f"label=repro.spec={label_value}" if label_value else "label=repro"
    out = subprocess.run(["docker", "ps", "-a", "-q", "--filter", flt], capture_output=True,
                         text=True, check=True).stdout
    return out.split()


def pin_image(project, ref: str, extra: str = "") -> None:
    """Give the tiny project's spec an environment section pinning `ref`."""
    text = project.spec.read_text()
    assert "environment:" not in text
    project.spec.write_text(text + f"environment:\n  image: {ref}\n{extra}")
