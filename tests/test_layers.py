"""The package's shape, checked from the source: the wings and their import rules that
docs/architecture.md states. Every import counts — at module level, inside functions, and under
`TYPE_CHECKING` — read with `ast`, so a rule cannot be dodged by importing lazily."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "repro"

# Small modules any part may import, the child included: they import only each other.
LEAVES = {"repro.errors", "repro.paths", "repro.ioutil", "repro.proctree", "repro.signals",
          "repro.job", "repro.env", "repro.env.isa", "repro.env.cpu", "repro.env.fingerprint"}
FRONT_ENDS = {"repro.cli", "repro.pytest_plugin"}
# Floors, bottom up: a module imports only from its own floor or below.
FLOORS = ["leaf", "child", "store", "core", "engines", "commands", "report", "front end"]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PKG.rglob("*.py")}


def floor(module: str) -> str:
    if module in LEAVES:
        return "leaf"
    if module in FRONT_ENDS:
        return "front end"
    wing = module.split(".")[1]
    # pins/, env/, backends/, docker/, grad/ and interop/ sit on the core floor with the root
    return {"child": "child", "store": "store", "engines": "engines", "commands": "commands",
            "report": "report"}.get(wing, "core")


def imports_of(path: Path) -> set[str]:
    """Every repro module a file imports, at any depth of the file (lazy and type-only ones
    too). `from repro.x import name` counts as `repro.x.name` when that is a module. The
    package itself (`import repro`: its location, its version, the public `repro.Context`) is
    the public surface, not a floor."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                out.add(full if full in MODULES else node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m.startswith("repro.") and m in MODULES}


GRAPH = {m: imports_of(p) - {m} for m, p in MODULES.items() if m != "repro"}


def test_every_module_is_known():
    assert set(GRAPH) == set(MODULES) - {"repro"}
    assert all(m in MODULES for deps in GRAPH.values() for m in deps)


def test_root_holds_about_twenty_modules_and_the_wings():
    root = sorted(p.stem for p in PKG.glob("*.py") if p.stem != "__init__")
    shims = {"gradcheck", "strategies", "backprop"}   # public names kept for users
    assert len(set(root) - shims) <= 24, root
    wings = sorted(p.name for p in PKG.iterdir() if (p / "__init__.py").exists())
    assert {"child", "store", "engines", "commands", "env", "pins", "backends", "docker",
            "report", "grad"} <= set(wings), wings


def test_no_import_climbs_to_a_higher_floor():
    bad = sorted(f"{m} ({floor(m)}) imports {d} ({floor(d)})"
                 for m, deps in GRAPH.items() for d in deps
                 if FLOORS.index(floor(d)) > FLOORS.index(floor(m)))
    assert not bad, "\n".join(bad)


def test_the_child_imports_only_the_child_and_the_leaves():
    bad = sorted(f"{m} imports {d}" for m, deps in GRAPH.items() if floor(m) == "child"
                 for d in deps if floor(d) not in ("child", "leaf"))
    assert not bad, "\n".join(bad)


def test_the_pipeline_imports_no_command_engine_or_report():
    bad = sorted(d for d in GRAPH["repro.pipeline"] if floor(d) in ("engines", "commands", "report"))
    assert not bad


def test_no_import_circle_at_all():
    """Tarjan's strongly connected components over every import: none has two modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert not circles


def test_the_rules_catch_what_they_forbid():
    """The checks above can fail: a climbing import and a circle, planted in a copy of the
    graph, are both found."""
    planted = {m: set(d) for m, d in GRAPH.items()}
    planted["repro.store.blobs"].add("repro.pipeline")
    climbs = [(m, d) for m, deps in planted.items() for d in deps
              if FLOORS.index(floor(d)) > FLOORS.index(floor(m))]
    assert ("repro.store.blobs", "repro.pipeline") in climbs
    assert "repro.store.blobs" in _reachable(planted, "repro.pipeline")   # and a circle


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for w in graph[todo.pop()] - seen:
            seen.add(w)
            todo.append(w)
    return seen


def test_backends_and_docker_import_nothing_from_pins():
    bad = {m: sorted(d for d in deps if d.startswith("repro.pins"))
           for m, deps in GRAPH.items() if m.startswith(("repro.backends", "repro.docker"))}
    assert not {k: v for k, v in bad.items() if v}


def test_pins_import_no_backend_and_start_no_container():
    bad = {m: sorted(d for d in deps if d.startswith(("repro.docker", "repro.backends")))
           for m, deps in GRAPH.items() if m.startswith("repro.pins")}
    assert not {k: v for k, v in bad.items() if v}
    for p in sorted((PKG / "pins").rglob("*.py")):
        names = {n.id for n in ast.walk(ast.parse(p.read_text())) if isinstance(n, ast.Name)}
        assert "docker" not in names, p


def test_report_only_renders():
    for m, deps in GRAPH.items():
        if floor(m) == "report":
            assert not {d for d in deps if d.startswith(("repro.pipeline", "repro.backends",
                                                         "repro.docker", "repro.pins"))}, m


def test_no_module_imports_another_modules_private_name():
    bad = []
    for m, p in MODULES.items():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("repro"):
                bad += [f"{m}: from {node.module} import {a.name}" for a in node.names
                        if a.name.startswith("_")]
    assert not bad, "\n".join(bad)


def test_the_runner_needs_no_pydantic_or_yaml():
    """The child imports the harness inside any image: only numpy and jax are its dependencies
    there. Importing every module of the child wing must not pull pydantic, PyYAML or docker."""
    child = sorted(m for m in GRAPH if floor(m) in ("child", "leaf"))
    code = (f"import sys, {', '.join(child)}; "
            "print(sorted(m for m in ('pydantic', 'yaml', 'docker') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_pipeline_has_no_backend_specific_branch():
    text = (PKG / "pipeline.py").read_text()
    assert '== "docker"' not in text and "'docker'" not in text.replace('"local", "docker"', "")


def test_script_output_readers_load_only_when_used():
    """tensorboard, orbax and safetensors are imported by repro.child.outputs only when a
    script's spec names that format, in the child: neither the harness nor the runner loads them."""
    code = ("import sys, repro.child.runner, repro.child.outputs, repro.child.command, "
            "repro.pipeline, repro.cli; "
            "print(sorted(m for m in ('tensorboard', 'orbax', 'safetensors', 'tensorboardX') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
