"""YAML reading for specs: line numbers for every key path, duplicate keys rejected, and YAML 1.2
floats (``1e-3`` is a float, not the string PyYAML's YAML 1.1 rules make of it).
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import TypeAlias

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

    Raises SpecError for malformed YAML (with its line) and for duplicate keys. Parsing is
    bounded — size, nesting, and the values aliases expand to — so a hostile spec is refused
    at once instead of taking minutes and gigabytes (an alias bomb of a few hundred bytes
    expands to millions of values).
    """
    size = len(text.encode("utf-8", errors="replace"))
    if size > MAX_SPEC_BYTES:
        raise SpecError(f"the spec is {size:,} bytes; a spec holds at most {MAX_SPEC_BYTES:,} "
                        "(pins and settings: large data belongs in a pinned data file)", file=file)
    deep_at = _flow_too_deep(text)   # PyYAML's scanner is quadratic in bracket depth
    if deep_at is not None:
        raise SpecError(_TOO_DEEP, file=file, line=text.count("\n", 0, deep_at) + 1)
    try:
        loader = SpecLoader(text)
    except yaml.YAMLError as exc:  # the reader refuses some characters at once
        raise _malformed(exc, text, file) from None
    try:
        return _load(loader, text, file)
    finally:
        loader.dispose()


def _malformed(exc: yaml.YAMLError, text: str, file: str) -> SpecError:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    line = mark.line + 1 if mark else None
    position = getattr(exc, "position", None)
    if line is None and isinstance(position, int):  # reader errors
        line = text.count("\n", 0, position) + 1
    return SpecError(f"malformed YAML: {problem}", file=file, line=line)


def _load(loader: SpecLoader, text: str, file: str) -> tuple[object, dict[tuple, int]]:
    try:
        node = loader.get_single_node()
    except yaml.YAMLError as exc:
        raise _malformed(exc, text, file) from None
    except RecursionError:
        raise SpecError(_TOO_DEEP, file=file) from None
    if node is None:
        return None, {}
    lines: dict[tuple, int] = {}
    try:
        _walk(node, (), lines, file, frozenset(), set())
    except RecursionError:
        raise SpecError(_TOO_DEEP, file=file) from None
    expanded = _expanded_size(node, {})
    if expanded > MAX_SPEC_VALUES:
        raise SpecError(f"its aliases (*name) expand to {expanded:,} values; a spec holds at most "
                        f"{MAX_SPEC_VALUES:,} (an alias bomb?)", file=file)
    _commit_as_text(node)
    try:
        data = loader.construct_document(node)
    except yaml.YAMLError as exc:  # e.g. a bad tag only found at construction time
        mark = getattr(exc, "problem_mark", None)
        raise SpecError(f"malformed YAML: {getattr(exc, 'problem', exc)}", file=file,
                        line=mark.line + 1 if mark else None) from None
    except (ValueError, RecursionError) as exc:  # e.g. an integer of more than 4300 digits
        raise SpecError(f"malformed YAML: {exc}", file=file) from None
    return data, lines


def _commit_as_text(node: yaml.Node) -> None:
    """A commit id is text even when YAML would read it as a number (`1234567`, `12e4567`, a
    40-digit id): keep the plain scalar's own characters, so a short or unquoted commit gets the
    commit-id error and `repro pin` can replace it."""
    commit = _mapping_value(_mapping_value(node, "code"), "commit")
    if isinstance(commit, yaml.ScalarNode) and commit.style is None and commit.tag in (
            "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"):
        commit.tag = "tag:yaml.org,2002:str"


def _mapping_value(node: yaml.Node | None, key: str) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == key:
                return v
    return None


_TOO_DEEP = "malformed YAML: nested too deeply (a spec needs a few levels, not hundreds)"
_MAX_DEPTH = 100
MAX_SPEC_BYTES = 256 * 1024      # a spec is pins and settings: a few KB
MAX_SPEC_VALUES = 100_000        # values after aliases are expanded (what the hash would see)


_PRESCAN_DEPTH = 1000   # bracket depth refused before PyYAML sees the text (at 5,000 it takes 4 s);
                        # shallower nesting past _MAX_DEPTH is refused by the walk, with its key


def _flow_too_deep(text: str) -> int | None:
    """The offset where [ ] / { } nesting (outside quotes and comments) passes _PRESCAN_DEPTH,
    or None (one linear pass)."""
    depth = 0
    quote = ""
    comment = False
    for offset, ch in enumerate(text):
        if comment:
            comment = ch != "\n"
        elif quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "#":
            comment = True
        elif ch in "[{":
            depth += 1
            if depth > _PRESCAN_DEPTH:
                return offset
        elif ch in "]}":
            depth = max(0, depth - 1)
    return None


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """How many values `node` stands for once every alias is expanded (shared nodes counted
    each time they are used), computed once per node. Saturates past the limit."""
    known = memo.get(id(node))
    if known is not None:
        return known
    memo[id(node)] = MAX_SPEC_VALUES + 1   # a cycle counts as too large (also refused by _walk)
    total = 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            total += _expanded_size(key, memo) + _expanded_size(value, memo)
            if total > MAX_SPEC_VALUES:
                break
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            total += _expanded_size(item, memo)
            if total > MAX_SPEC_VALUES:
                break
    memo[id(node)] = min(total, MAX_SPEC_VALUES + 1)
    return memo[id(node)]


def _walk(node: yaml.Node, path: tuple, lines: dict[tuple, int], file: str, ancestors: frozenset[int],
          seen_nodes: set[int]) -> None:
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


# -- editing a spec in place -------------------------------------------------------------------
# `repro pin` and `repro calibrate --write` change values inside the user's file. Each edit
# replaces or inserts the text of one value, so comments, key order, quoting and every other
# byte stay as the user wrote them.

YamlValue: TypeAlias = "str | float | bool | Sequence[YamlValue] | Mapping[str, YamlValue] | None"


def set_value(text: str, key: tuple[str, ...], value: YamlValue, file: str) -> str:
    """`text` with the value at `key` (a path of mapping keys) set to `value`.

    An existing scalar is replaced in place (keeping the user's quotes); a mapping `value` set
    on an existing mapping sets its keys one by one (keeping that block's style and comments);
    a missing key is inserted after its last sibling, with any missing parent blocks (block
    style under block mappings, flow style inside flow ones; a mapping of scalars is written
    flow style: `grads: {rtol: 1.5e-5, atol: 3.0e-8}`)."""
    root = yaml.compose(text, Loader=SpecLoader)
    node, parent, depth = root, None, 0
    while node is not None and depth < len(key):
        if not isinstance(node, yaml.MappingNode):
            raise SpecError("cannot edit: expected a mapping", file=file, key_path=".".join(key))
        parent = node
        node = next((v for k, v in node.value if k.value == key[depth]), None)
        depth += node is not None
    if node is not None:
        if isinstance(value, Mapping) and isinstance(node, yaml.MappingNode):
            for k, v in value.items():
                text = set_value(text, key + (k,), v, file)
            return text
        start, end = node.start_mark.index, node.end_mark.index
        if start == end:  # `key:` with no value: the empty scalar starts right after the colon
            return text[:start] + " " + _render_flow(value) + text[end:]
        if isinstance(value, Mapping) or (isinstance(value, Sequence) and not isinstance(value, str)):
            return text[:start] + _render_flow(value) + text[end:]
        return text[:start] + scalar_text(value, getattr(node, "style", None)) + text[end:]
    missing = key[depth]
    for part in reversed(key[depth + 1:]):   # missing parent blocks: nest the value in them
        value = {part: value}
    assert parent is not None  # the loop ran: `key` is never empty
    if parent.flow_style:
        if not parent.value:
            close = parent.end_mark.index - 1
            return text[:close] + f"{missing}: {_render_flow(value)}" + text[close:]
        pos = parent.value[-1][1].end_mark.index  # after the last value: any trailing ',' stays
        return text[:pos] + f", {missing}: {_render_flow(value)}" + text[pos:]
    if not parent.value:
        raise SpecError(f"cannot insert {missing!r} into an empty mapping; add it by hand",
                        file=file, key_path=".".join(key))
    column = parent.value[0][0].start_mark.column
    entry = _render_block(missing, value, column)
    pos = parent.value[-1][1].end_mark.index
    if pos > 0 and text[pos - 1] == "\n":
        # a block value ends where the next key starts: step back over the blank and comment
        # lines before it, which belong to what follows
        while pos > 0:
            line_start = text.rfind("\n", 0, pos - 1) + 1
            if text[line_start:pos].strip() and not text[line_start:pos].lstrip().startswith("#"):
                break
            pos = line_start
        return text[:pos] + entry + "\n" + text[pos:]
    eol = text.find("\n", pos)
    eol = len(text) if eol < 0 else eol
    return text[:eol] + "\n" + entry + text[eol:]


def _render_block(key: str, value: YamlValue, column: int) -> str:
    """`key: value` at `column`, block style for mappings that hold mappings."""
    indent = " " * column
    if isinstance(value, Mapping) and any(isinstance(v, Mapping) for v in value.values()):
        lines = [f"{indent}{key}:"] + [_render_block(k, v, column + 2) for k, v in value.items()]
        return "\n".join(lines)
    return f"{indent}{key}: {_render_flow(value)}"


def _render_flow(value: YamlValue) -> str:
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {_render_flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, Sequence) and not isinstance(value, str):
        return "[" + ", ".join(_render_flow(v) for v in value) + "]"
    return scalar_text(value)


def scalar_text(value: str | float | bool | None, style: str | None = None) -> str:
    """`value` as YAML text. A string keeps the quotes the user had, else is bare unless YAML
    would read the bare text as something other than this string (an all-digit commit id loads
    as an int). A float is written with a mantissa dot and an exponent (`1.5e-5`), which YAML 1.2
    and 1.1 readers both take as a float; booleans, integers and null as YAML writes them."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return float_text(value)
    if style == "'":
        return "'" + value.replace("'", "''") + "'"
    if style == '"' or _FLOW_UNSAFE.search(value) or not _reads_back(value):
        return json.dumps(value, ensure_ascii=False)   # a JSON string is a YAML one
    return value


# Text a plain scalar cannot hold as is, inside a flow collection (`[a, b]`, `{k: v}`) too: a
# flow indicator anywhere, a comment or key marker, an indicator character at the start (in
# the middle, `@`, `!`, `'` … are ordinary: `repro-jax-cpu@sha256:…` stays bare), edge spaces.
_FLOW_UNSAFE = re.compile(r"[,\[\]{}]| #|: |:$|^[#&*!|>'\"%@`]|^[-?:](\s|$)|^\s|\s$")


def _reads_back(value: str) -> bool:
    """Does YAML read the bare text `value` as this very string?"""
    try:
        return bool(yaml.load(value, Loader=SpecLoader) == value)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError:
        return False


def float_text(value: float) -> str:
    """The shortest text that reads back as `value`, with a mantissa dot and a signed exponent
    when it has one (`0.15`, `2.0e-6`, `1.5e-5`): a float to YAML 1.2 and 1.1 readers alike."""
    if value != value or value in (float("inf"), float("-inf")):
        return ".nan" if value != value else ("-.inf" if value < 0 else ".inf")
    text = repr(value)
    if "e" not in text:
        return text
    mantissa, exponent = text.split("e")
    if "." not in mantissa:
        mantissa += ".0"
    return f"{mantissa}e{int(exponent):+d}"
