"""YAML reading for specs: line numbers for every key path, duplicate keys rejected, and YAML 1.2
floats (``1e-3`` is a float, not the string PyYAML's YAML 1.1 rules make of it).
"""
from __future__ import annotations

import re

import yaml

from repro.errors import SpecError

_FLOAT_12 = re.compile(r"""^[-+]?(
    \d[\d_]*\.\d*([eE][-+]?\d+)?
  | \.\d+([eE][-+]?\d+)?
  | \d[\d_]*[eE][-+]?\d+
  | \.(inf|Inf|INF) | \.(nan|NaN|NAN))$""", re.X)


class SpecLoader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-3`` as a float (as YAML 1.2 and every user expects)."""


SpecLoader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
SpecLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12, list("-+0123456789."))


def load_with_lines(text: str, file: str) -> tuple[object, dict[tuple, int]]:
    """Parse YAML text; return (data, {key path tuple: 1-based line}).

    Raises SpecError for malformed YAML (with its line) and for duplicate keys.
    """
    try:
        node = yaml.compose(text, Loader=SpecLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        line = mark.line + 1 if mark else None
        if line is None and isinstance(getattr(exc, "position", None), int):  # reader errors
            line = text.count("\n", 0, exc.position) + 1
        raise SpecError(f"malformed YAML: {problem}", file=file, line=line) from None
    except RecursionError:
        raise SpecError(_TOO_DEEP, file=file) from None
    if node is None:
        return None, {}
    lines: dict[tuple, int] = {}
    try:
        _walk(node, (), lines, file, frozenset(), set())
    except RecursionError:
        raise SpecError(_TOO_DEEP, file=file) from None
    try:
        data = yaml.load(text, Loader=SpecLoader)  # noqa: S506 - SpecLoader is a SafeLoader
    except yaml.YAMLError as exc:  # e.g. a bad tag only found at construction time
        mark = getattr(exc, "problem_mark", None)
        raise SpecError(f"malformed YAML: {getattr(exc, 'problem', exc)}", file=file,
                        line=mark.line + 1 if mark else None) from None
    except (ValueError, RecursionError) as exc:  # e.g. an integer of more than 4300 digits
        raise SpecError(f"malformed YAML: {exc}", file=file) from None
    return data, lines


_TOO_DEEP = "malformed YAML: nested too deeply (a spec needs a few levels, not hundreds)"
_MAX_DEPTH = 100


def _walk(node, path: tuple, lines: dict, file: str, ancestors: frozenset, seen_nodes: set) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if len(path) > _MAX_DEPTH:
        raise SpecError(_TOO_DEEP, file=file, key_path=str(path[0]), line=lines[path])
    if id(node) in ancestors:  # an alias to a node that contains it: a cyclic structure
        raise SpecError("an alias (*name) refers to a mapping or list that contains it; a spec "
                        "cannot be recursive", file=file,
                        key_path=".".join(str(p) for p in path) or None, line=lines[path])
    if id(node) in seen_nodes:  # another alias to a node already walked: its keys are known
        return
    seen_nodes.add(id(node))
    ancestors = ancestors | {id(node)}
    if isinstance(node, yaml.MappingNode):
        seen: dict = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key in seen:
                dotted = ".".join(str(p) for p in path + (key,))
                raise SpecError(f"duplicate key {key!r} (first at line {seen[key]})", file=file,
                                key_path=dotted, line=key_node.start_mark.line + 1)
            seen[key] = key_node.start_mark.line + 1
            lines[path + (key,)] = key_node.start_mark.line + 1
            _walk(value_node, path + (key,), lines, file, ancestors, seen_nodes)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, path + (i,), lines, file, ancestors, seen_nodes)
