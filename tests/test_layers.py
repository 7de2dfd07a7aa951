"""The package's layering, checked from the source: the rules docs/architecture.md states."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "repro"


def imports_of(path: Path) -> set[str]:
    """Every `repro.*` module a file imports, at any depth of the file (lazy imports too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m == "repro" or m.startswith("repro.")}


def files(sub: str) -> list[Path]:
    return sorted((PKG / sub).rglob("*.py"))


def test_backends_and_docker_import_nothing_from_pins():
    bad = {str(p.relative_to(PKG)): sorted(m for m in imports_of(p) if m.startswith("repro.pins"))
           for p in files("backends") + files("docker")}
    assert not {k: v for k, v in bad.items() if v}


def test_pins_import_no_backend_and_start_no_container():
    bad = {str(p.relative_to(PKG)): sorted(m for m in imports_of(p)
                                           if m.startswith(("repro.docker", "repro.backends")))
           for p in files("pins")}
    assert not {k: v for k, v in bad.items() if v}
    for p in files("pins"):
        tree = ast.parse(p.read_text())
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        assert "docker" not in names, p


def test_report_only_renders():
    for p in files("report"):
        assert not {m for m in imports_of(p) if m.startswith(("repro.pipeline", "repro.backends",
                                                              "repro.docker", "repro.pins"))}, p


def test_the_runner_needs_no_pydantic_or_yaml():
    """The child imports the harness inside any image: only numpy and jax are its dependencies
    there. Importing everything the runner imports must not pull pydantic or PyYAML."""
    code = ("import sys, repro.runner, repro.env.fingerprint, repro.env.isa, repro.env.inputs, repro.context, "
            "repro.env.portable, repro.env.kernels, "
            "repro.job, repro.treepath, repro.proctree, repro.traced, repro.expect, repro.command, "
            "repro.outputs; "
            "print(sorted(m for m in ('pydantic', 'yaml', 'docker') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_pipeline_has_no_backend_specific_branch():
    text = (PKG / "pipeline.py").read_text()
    assert '== "docker"' not in text and "'docker'" not in text.replace('"local", "docker"', "")
    assert len(text.splitlines()) <= 250


def test_script_output_readers_load_only_when_used():
    """tensorboard, orbax and safetensors are imported by repro.outputs only when a script's
    spec names that format, in the child: neither the harness nor the runner loads them."""
    code = ("import sys, repro.runner, repro.outputs, repro.command, repro.pipeline, repro.cli; "
            "print(sorted(m for m in ('tensorboard', 'orbax', 'safetensors', 'tensorboardX') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
