"""Spec loading: every bad input is a `SpecError` naming file, key path and line; defaults, YAML
1.2 floats, the canonical hash, `spec_changes`, the JSON Schema; and a fuzzer that feeds
hundreds of malformed specs through `parse_spec` / `load_spec` and accepts only `SpecError`.
"""
from __future__ import annotations

import copy
import json
import string
from pathlib import Path

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from repro.errors import SpecError
from repro.spec import Spec, load_spec, parse_spec, spec_changes, spec_json_schema
from repro.verdict import Change

COMMIT = "3f2a1c9e0b7d4a5f6e8c1b2a3d4e5f6a7b8c9d0e"
SHA = "6b1e" + "0123456789abcdef" * 3 + "0a1b2c3d4e5f"
DIGEST = "sha256:" + "cadd" * 16
REPO_ROOT = Path(__file__).resolve().parents[1]

# A complete valid spec (docs/spec.md), with comments; line numbers below refer to it.
GOOD = f"""\
repro: 1                          # format version
name: digits-mlp
description: 2-layer MLP on the digits set
code:
  repo: .
  commit: {COMMIT}
  entrypoint: zoo.mlp:train
data:
  digits:
    path: fixtures/data/digits.npz
    sha256: {SHA}
environment:
  image: repro-jax-cpu@{DIGEST}
  platform: cpu
  packages: {{jax: 0.4.30, numpy: 1.26.4}}
  cpus: 1
  x64: false
  matmul_precision: highest
  xla_flags: []
seeds: {{params: 0, data: 1}}
config: {{epochs: 5, lr: 1.0e-3, batch_size: 64}}
record:
  metrics: [loss, accuracy]
  grads: {{every: 10}}
  weights: final
tolerance:
  mode: auto
  default: {{rtol: 1.0e-6, atol: 1.0e-8}}
  metrics: {{loss: {{rtol: 1.0e-5}}}}
  grads: {{rtol: 1.0e-4, atol: 1.0e-7}}
  weights: {{rtol: 1.0e-5, atol: 1.0e-7}}
  platforms: {{gpu: {{rtol: 1.0e-3, atol: 1.0e-5}}}}
"""

MINIMAL = f"""\
repro: 1
code:
  commit: {COMMIT}
  entrypoint: zoo.mlp:train
"""


def write(tmp_path: Path, text: str | bytes, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def spec_error(tmp_path: Path, text: str | bytes, name: str = "spec.yaml", **kw) -> SpecError:
    path = write(tmp_path, text, name)
    with pytest.raises(SpecError) as info:
        load_spec(path, **kw)
    err = info.value
    assert err.file == str(path)
    assert str(err).startswith(str(path)), str(err)
    return err


def where(err: SpecError) -> str:
    """The 'file:line: key.path' prefix the message must start with."""
    out = err.file + (f":{err.line}" if err.line is not None else "")
    return out + (f": {err.key_path}" if err.key_path else "")


def replace_line(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


# -- the good spec -------------------------------------------------------------------------------
def test_good_spec_loads_with_its_values(tmp_path):
    spec = load_spec(write(tmp_path, GOOD))
    assert isinstance(spec, Spec)
    assert spec.name == "digits-mlp"
    assert spec.code.commit == COMMIT
    assert spec.data["digits"].sha256 == SHA
    assert spec.environment.image == f"repro-jax-cpu@{DIGEST}"
    assert spec.environment.packages == {"jax": "0.4.30", "numpy": "1.26.4"}
    assert spec.seeds == {"params": 0, "data": 1}
    assert spec.record.metrics == ["loss", "accuracy"]
    assert spec.record.grads.every == 10
    assert spec.tolerance.platforms["gpu"].rtol == 1e-3
    assert spec.path == (tmp_path / "spec.yaml").resolve()


def test_yaml_12_floats(tmp_path):
    text = MINIMAL + "config: {lr: 1e-3, big: 1E+3, dot: 2.5e-1, steps: 12, neg: -3e2, hexish: 0x1f}\n"
    config = load_spec(write(tmp_path, text)).config
    assert config["lr"] == 0.001 and type(config["lr"]) is float
    assert config["big"] == 1000.0 and type(config["big"]) is float
    assert config["dot"] == 0.25
    assert config["neg"] == -300.0 and type(config["neg"]) is float
    assert config["steps"] == 12 and type(config["steps"]) is int
    assert config["hexish"] == 31  # YAML ints still resolve as before


def test_defaults_are_filled_in(tmp_path):
    spec = load_spec(write(tmp_path, MINIMAL, "my-run.yaml"))
    assert spec.name == "my-run"  # the file stem
    assert spec.code.repo == "."
    assert spec.data == {} and spec.seeds == {} and spec.config == {}
    env = spec.environment
    assert (env.image, env.platform, env.cpus, env.x64, env.matmul_precision, env.xla_flags) == \
        (None, "cpu", 1, False, "highest", [])
    assert spec.record.metrics is None and spec.record.weights == "final"
    assert spec.tolerance.mode == "auto"
    assert (spec.tolerance.default.rtol, spec.tolerance.default.atol) == (1e-6, 1e-8)
    assert spec.timeout == 3600.0
    canonical = spec.canonical
    assert canonical["environment"]["platform"] == "cpu"
    assert canonical["tolerance"]["default"] == {"rtol": 1e-6, "atol": 1e-8}


def test_default_name_of_an_odd_file_stem(tmp_path):
    assert load_spec(write(tmp_path, MINIMAL, "my run (v2).yaml")).name == "my-run--v2-"


# -- every bad input: a SpecError naming file, key path and line ----------------------------------
def test_malformed_yaml_names_the_line(tmp_path):
    text = replace_line(GOOD, "seeds: {params: 0, data: 1}", "seeds: [params, data")
    err = spec_error(tmp_path, text)
    assert "malformed YAML" in str(err)
    # the bracket opens on line 20; the parser notices at the next key that cannot be in a list
    assert err.line == 21
    assert str(err).startswith(f"{err.file}:21: malformed YAML")


def test_malformed_yaml_tab_indent_names_the_line(tmp_path):
    err = spec_error(tmp_path, MINIMAL + "seeds:\n\tparams: 0\n")
    assert err.line == 6 and "malformed YAML" in str(err) and "'\\t'" in str(err)


def test_top_level_list(tmp_path):
    err = spec_error(tmp_path, "- repro: 1\n- code: {}\n")
    assert "a spec is a YAML mapping" in str(err) and "holds list" in str(err)
    assert str(err).startswith(f"{err.file}:1: ")


def test_empty_file(tmp_path):
    err = spec_error(tmp_path, "")
    assert "holds nothing" in str(err)
    err = spec_error(tmp_path, "# only a comment\n")
    assert "holds nothing" in str(err)


def test_missing_repro_key(tmp_path):
    err = spec_error(tmp_path, MINIMAL.replace("repro: 1\n", ""))
    assert "`repro: 1` is missing" in str(err)
    assert str(err).startswith(f"{err.file}:1: not a repro spec")


def test_repro_format_2(tmp_path):
    err = spec_error(tmp_path, MINIMAL.replace("repro: 1", "repro: 2"))
    assert (err.key_path, err.line) == ("repro", 1)
    assert str(err) == f"{err.file}:1: repro: Input should be 1"


def test_unknown_top_level_key(tmp_path):
    err = spec_error(tmp_path, GOOD + "bogus: 1\n")
    assert (err.key_path, err.line) == ("bogus", 33)
    assert str(err).startswith(f"{err.file}:33: bogus: unknown key")
    assert "spec.schema.json" in str(err)


def test_unknown_nested_key_names_its_line(tmp_path):
    text = replace_line(GOOD, "  cpus: 1\n", "  cpus: 1\n  bogus: 2\n")
    err = spec_error(tmp_path, text)
    assert (err.key_path, err.line) == ("environment.bogus", 17)
    assert str(err).startswith(f"{err.file}:17: environment.bogus: unknown key")


def test_unknown_key_in_a_data_entry(tmp_path):
    text = replace_line(GOOD, "    sha256: ", "    sha: x\n    sha256: ")
    err = spec_error(tmp_path, text)
    assert (err.key_path, err.line) == ("data.digits.sha", 11)


@pytest.mark.parametrize("old, new, key, line, words", [
    ("seeds: {params: 0, data: 1}", 'seeds: {params: "3", data: 1}', "seeds.params", 20,
     "valid integer (got str '3')"),
    ("  cpus: 1\n", "  cpus: 1.5\n", "environment.cpus", 16, "valid integer (got float 1.5)"),
    ("config: {epochs: 5, lr: 1.0e-3, batch_size: 64}", "config: [5, 0.001]", "config", 21,
     "valid dictionary"),
    ("  x64: false", "  x64: 'no'", "environment.x64", 17, "valid boolean (got str 'no')"),
    ("  platform: cpu", "  platform: cuda", "environment.platform", 14, "'cpu', 'gpu' or 'any'"),
    ("  metrics: [loss, accuracy]", "  metrics: loss", "record.metrics", 23, "valid list"),
    ("  grads: {every: 10}", "  grads: {every: 0}", "record.grads.every", 24,
     "greater than or equal to 1"),
    ("  mode: auto", "  mode: bitwise", "tolerance.mode", 27, "'auto', 'exact' or 'close'"),
    ("  default: {rtol: 1.0e-6, atol: 1.0e-8}", "  default: {rtol: -1.0, atol: 1.0e-8}",
     "tolerance.default.rtol", 28, "greater than or equal to 0"),
    ("seeds: {params: 0, data: 1}", "seeds: {params: 4294967296}", "seeds", 20,
     "outside 0 .. 2**32-1"),
])
def test_wrong_types_and_values(tmp_path, old, new, key, line, words):
    err = spec_error(tmp_path, replace_line(GOOD, old, new))
    assert (err.key_path, err.line) == (key, line)
    assert str(err).startswith(f"{err.file}:{line}: {key}: ")
    assert words in str(err)


def test_short_commit_says_40_hex_and_rev_parse(tmp_path):
    err = spec_error(tmp_path, GOOD.replace(COMMIT, "3f2a1c9"))
    assert (err.key_path, err.line) == ("code.commit", 6)
    assert "a full 40-hex commit is required, got 7 characters" in str(err)
    assert "`git rev-parse 3f2a1c9`" in str(err) and "repro pin" in str(err)


def test_non_hex_commit(tmp_path):
    err = spec_error(tmp_path, GOOD.replace(COMMIT, "g" * 40))
    assert (err.key_path, err.line) == ("code.commit", 6)
    assert f"{'g' * 40!r} is not a hex commit id" in str(err)


def test_upper_case_commit_is_normalised(tmp_path):
    assert load_spec(write(tmp_path, GOOD.replace(COMMIT, COMMIT.upper()))).code.commit == COMMIT


@pytest.mark.parametrize("path, words", [
    ("../outside.npz", "leaves the repository ('..')"),
    ("data/../../outside.npz", "leaves the repository ('..')"),
    ("/etc/passwd", "is absolute"),
    ("data\\\\x.npz", "use '/' as the separator"),
    ('""', "data path is empty"),
])
def test_data_path_must_stay_inside_the_repo(tmp_path, path, words):
    err = spec_error(tmp_path, GOOD.replace("fixtures/data/digits.npz", path))
    assert (err.key_path, err.line) == ("data.digits.path", 10)
    assert str(err).startswith(f"{err.file}:10: data.digits.path: ")
    assert words in str(err)


@pytest.mark.parametrize("bad", ["abc", SHA.upper(), SHA[:-1], SHA + "0", "z" * 64])
def test_bad_sha256(tmp_path, bad):
    err = spec_error(tmp_path, GOOD.replace(SHA, bad))
    assert (err.key_path, err.line) == ("data.digits.sha256", 11)
    assert "is not a 64-character lowercase hex sha256" in str(err)
    assert "`repro hash PATH`" in str(err)


@pytest.mark.parametrize("image", ["repro-jax-cpu:latest", "repro-jax-cpu", "repro-jax-cpu@sha256:abc"])
def test_image_must_be_pinned_by_digest(tmp_path, image):
    err = spec_error(tmp_path, GOOD.replace(f"repro-jax-cpu@{DIGEST}", image))
    assert (err.key_path, err.line) == ("environment.image", 13)
    assert f"{image!r} is not pinned by digest" in str(err)
    assert "NAME@sha256:<64 hex>" in str(err)


def test_image_by_bare_digest_is_a_pin(tmp_path):
    assert load_spec(write(tmp_path, GOOD.replace(f"repro-jax-cpu@{DIGEST}", DIGEST))) \
        .environment.image == DIGEST


@pytest.mark.parametrize("entry", ["zoo/mlp.py", "zoo.mlp", "zoo.mlp:", "1zoo:train", "zoo.mlp:train:x"])
def test_invalid_entrypoint(tmp_path, entry):
    err = spec_error(tmp_path, GOOD.replace("zoo.mlp:train", f"'{entry}'"))
    assert (err.key_path, err.line) == ("code.entrypoint", 7)
    assert f"{entry!r} is not 'package.module:function'" in str(err)


def test_duplicate_key_names_the_first_line(tmp_path):
    err = spec_error(tmp_path, GOOD + "seeds: {params: 5}\n")
    assert (err.key_path, err.line) == ("seeds", 33)
    assert "duplicate key 'seeds' (first at line 20)" in str(err)
    nested = replace_line(GOOD, "  cpus: 1\n", "  cpus: 1\n  cpus: 2\n")
    err = spec_error(tmp_path, nested)
    assert err.key_path == "environment.cpus"
    assert "duplicate key 'cpus' (first at line 16)" in str(err)


def test_non_utf8_file(tmp_path):
    err = spec_error(tmp_path, MINIMAL.encode() + b"description: caf\xe9\n")
    assert "cannot read the spec" in str(err) and "utf-8" in str(err)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(info.value) == f"{path}: no such spec file"


@pytest.mark.parametrize("name", ["a/b", "../x", ".hidden", "with space"])
def test_name_that_cannot_name_a_directory(tmp_path, name):
    err = spec_error(tmp_path, GOOD.replace("name: digits-mlp", f"name: '{name}'"))
    assert (err.key_path, err.line) == ("name", 2)
    assert "use letters, digits, '.', '_' and '-'" in str(err)


def test_missing_commit_says_run_repro_pin(tmp_path):
    text = GOOD.replace(f"  commit: {COMMIT}\n", "")
    err = spec_error(tmp_path, text)
    assert err.key_path == "code.commit" and err.line == 4
    assert "no commit pinned; run `repro pin SPEC`" in str(err)
    # without require_pins the same file loads (that is how `repro pin` reads it)
    assert load_spec(tmp_path / "spec.yaml", require_pins=False).code.commit is None


def test_missing_sha256_says_run_repro_pin(tmp_path):
    err = spec_error(tmp_path, GOOD.replace(f"    sha256: {SHA}\n", ""))
    assert (err.key_path, err.line) == ("data.digits.sha256", 9)
    assert "run `repro pin SPEC`" in str(err)


def test_missing_required_entrypoint(tmp_path):
    err = spec_error(tmp_path, GOOD.replace("  entrypoint: zoo.mlp:train\n", ""))
    assert (err.key_path, err.line) == ("code.entrypoint", 4)  # the line of `code:`
    assert "required key is missing" in str(err)


def test_tolerance_for_an_unrecorded_metric(tmp_path):
    err = spec_error(tmp_path, GOOD.replace("metrics: {loss: {rtol", "metrics: {lossy: {rtol"))
    assert "tolerance.metrics names 'lossy', which record.metrics does not list" in str(err)


def test_several_errors_are_counted(tmp_path):
    text = replace_line(GOOD, "  cpus: 1\n", "  cpus: x\n  bogus: 1\n")
    err = spec_error(tmp_path, text)
    assert err.key_path == "environment.cpus"
    assert "(and 1 more: environment.bogus: unknown key" in str(err)


@pytest.mark.parametrize("tail, key, words", [
    ("config: {b: !!binary /w==}\n", "config.b", "cannot be stored as JSON"),
    ('config: {s: "\\ud800"}\n', "config.s", "cannot be stored as JSON"),
    ("config: &a {x: *a}\n", "config.x", "cannot be recursive"),
    ("config: !!python/object:os.system {}\n", None, "malformed YAML"),
    ("config: {n: " + "9" * 5000 + "}\n", None, "malformed YAML"),
])
def test_values_no_record_could_hold(tmp_path, tail, key, words):
    err = spec_error(tmp_path, MINIMAL + tail)
    assert err.key_path == key and words in str(err), str(err)


@pytest.mark.parametrize("text, key, line", [
    ("[" * 3000 + "]" * 3000, None, 1),   # refused before parsing: the line, no key
    (MINIMAL + "config: " + "{a: " * 400 + "1" + "}" * 400 + "\n", "config", 5),
    (MINIMAL + "config:\n" + "".join(" " * i + "- \n" for i in range(150)) + "\n", "config", 106),
], ids=["brackets", "flow-mappings", "block-lists"])
def test_deep_nesting_is_a_spec_error(tmp_path, text, key, line):
    err = spec_error(tmp_path, text)
    assert "nested too deeply" in str(err)
    assert (err.key_path, err.line) == (key, line)


def test_deep_structure_passed_to_parse_spec():
    data = {"repro": 1, "code": {"commit": COMMIT, "entrypoint": "a:b"}, "config": {}}
    inner = data["config"]
    for _ in range(400):
        inner["a"] = {}
        inner = inner["a"]
    with pytest.raises(SpecError) as info:
        parse_spec(data, file="deep.yaml")
    assert str(info.value).startswith("deep.yaml: config.a.a.a")


def test_aliases_still_work(tmp_path):
    text = MINIMAL + "config: {a: &t {rtol: 1.0}, b: *t, c: *t}\n"
    assert load_spec(write(tmp_path, text)).config == {"a": {"rtol": 1.0}, "b": {"rtol": 1.0},
                                                       "c": {"rtol": 1.0}}


# -- canonical hash and spec_changes -------------------------------------------------------------
def test_hash_ignores_key_order_and_comments(tmp_path):
    a = load_spec(write(tmp_path, GOOD, "s.yaml"))
    data = yaml.safe_load(GOOD)
    shuffled = {k: data[k] for k in reversed(list(data))}
    shuffled["config"] = {k: data["config"][k] for k in reversed(list(data["config"]))}
    text = "# a new comment\n" + yaml.safe_dump(shuffled, sort_keys=False)
    assert text != GOOD
    other = tmp_path / "other"
    other.mkdir()
    b = load_spec(write(other, text, "s.yaml"))
    assert a.hash == b.hash
    assert len(a.hash) == 64 and all(c in "0123456789abcdef" for c in a.hash)
    c = load_spec(write(other, GOOD.replace("# format version", "# another comment"), "s.yaml"))
    assert c.hash == a.hash
    # an explicit default is the same spec as an omitted one
    d = load_spec(write(other, GOOD.replace("  cpus: 1\n", ""), "s.yaml"))
    assert d.hash == a.hash


@pytest.mark.parametrize("old, new", [
    ("seeds: {params: 0, data: 1}", "seeds: {params: 3, data: 1}"),
    ("lr: 1.0e-3", "lr: 1.0e-4"),
    ("  cpus: 1\n", "  cpus: 2\n"),
    ("name: digits-mlp", "name: digits-mlp2"),
    (COMMIT, COMMIT[:-1] + "f"),
])
def test_hash_changes_when_a_value_changes(tmp_path, old, new):
    a = load_spec(write(tmp_path, GOOD, "a.yaml"))
    b = load_spec(write(tmp_path, replace_line(GOOD, old, new), "b.yaml"))
    assert a.hash != b.hash


def test_spec_changes_names_the_key(tmp_path):
    a = load_spec(write(tmp_path, GOOD.replace("params: 0", "params: 3"), "a.yaml"))
    b = load_spec(write(tmp_path, GOOD.replace("params: 0", "params: 5"), "b.yaml"))
    changes = spec_changes(a.canonical, b.canonical)
    assert changes == [("seeds.params", 3, 5)]
    assert Change("spec", *changes[0]).text() == "seeds.params: 3 -> 5"
    assert spec_changes(a.canonical, a.canonical) == []


def test_spec_changes_added_and_removed_keys(tmp_path):
    a = load_spec(write(tmp_path, GOOD, "a.yaml"))
    b = load_spec(write(tmp_path, GOOD.replace("batch_size: 64", "batch_size: 64, wd: 0.1")
                        .replace("  cpus: 1\n", "  cpus: 4\n").replace("data: 1}", "}"), "b.yaml"))
    assert spec_changes(a.canonical, b.canonical) == [
        ("config.wd", None, 0.1), ("environment.cpus", 1, 4), ("seeds.data", 1, None)]


# -- JSON Schema -----------------------------------------------------------------------------------
def test_json_schema_validates_good_and_rejects_unknown_keys():
    schema = spec_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    good = yaml.safe_load(GOOD)
    assert list(validator.iter_errors(good)) == []
    assert list(validator.iter_errors(yaml.safe_load(MINIMAL))) == []
    bad_top = {**good, "bogus": 1}
    errors = list(validator.iter_errors(bad_top))
    assert errors and any("bogus" in e.message for e in errors)
    bad_nested = copy.deepcopy(good)
    bad_nested["environment"]["bogus"] = 2
    errors = list(validator.iter_errors(bad_nested))
    assert [list(e.absolute_path) for e in errors] == [["environment"]]
    missing = copy.deepcopy(good)
    del missing["code"]["entrypoint"]
    assert any("entrypoint" in e.message for e in validator.iter_errors(missing))
    wrong = {**good, "repro": 2}
    assert list(validator.iter_errors(wrong))


def test_committed_schema_is_up_to_date():
    """docs/spec.schema.json is what editors load. When the spec model changes, regenerate it:

        repro schema > docs/spec.schema.json
    """
    committed = json.loads((REPO_ROOT / "docs" / "spec.schema.json").read_text(encoding="utf-8"))
    assert committed == spec_json_schema(), (
        "docs/spec.schema.json is stale; regenerate it with `repro schema > docs/spec.schema.json`")


# -- fuzzing: malformed specs raise SpecError and nothing else ----------------------------------
FUZZ = settings(max_examples=100, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])
GOOD_DATA = yaml.safe_load(GOOD)
CLOSED = [(), ("code",), ("environment",), ("record",), ("record", "grads"), ("tolerance",),
          ("tolerance", "default"), ("tolerance", "grads"), ("data", "digits")]

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
json_like = st.recursive(
    scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                     st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)
keys = st.text(alphabet=string.ascii_letters + "_-.", min_size=1, max_size=10)
new_keys = keys.map(lambda k: "zz" + k)  # never a field of the model, never an existing key


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _paths(tree, prefix=()):
    """Every key path in a nested dict/list."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield prefix + (k,)
            yield from _paths(v, prefix + (k,))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield prefix + (i,)
            yield from _paths(v, prefix + (i,))


ALL_PATHS = list(_paths(GOOD_DATA))


def _parent(tree, path):
    for part in path[:-1]:
        tree = tree[part]
    return tree


@st.composite
def mutated(draw):
    """The good spec with 1-3 mutations: drop, rename or retype a key, or add one."""
    data = copy.deepcopy(GOOD_DATA)
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_paths(data))
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent, last = _parent(data, path), path[-1]
        op = draw(st.sampled_from(["drop", "rename", "retype", "add", "wrap"]))
        if op == "drop":
            del parent[last]
        elif op == "rename" and isinstance(parent, dict):
            parent[draw(keys)] = parent.pop(last)
        elif op == "retype":
            parent[last] = draw(json_like)
        elif op == "add" and isinstance(parent, dict):
            parent[draw(keys)] = draw(json_like)
        elif op == "wrap":
            parent[last] = draw(st.sampled_from([[parent[last]], {"x": parent[last]}, str(parent[last])]))
    return data


def _check_outcome(fn, *args, **kw):
    """Run a loader: it may return a Spec or raise SpecError; anything else fails the test."""
    try:
        spec = fn(*args, **kw)
    except SpecError as err:
        assert str(err), "empty SpecError message"
        if err.key_path:
            assert f": {err.key_path}: " in str(err)
        return err
    assert isinstance(spec, Spec)
    assert len(spec.hash) == 64  # what every record stores must be computable
    return spec


@FUZZ
@given(text=st.text(max_size=300))
def test_fuzz_garbage_text_file(fuzz_dir, text):
    path = fuzz_dir / "garbage.yaml"
    path.write_text(text, encoding="utf-8")
    out = _check_outcome(load_spec, path)
    assert isinstance(out, SpecError)  # no random text is a complete pinned spec
    assert str(out).startswith(str(path))


@FUZZ
@given(text=st.lists(st.sampled_from(list(":-[]{},&*!|>'\"#%@`?\n\t ab1.~") +
                                      ["repro: 1\n", "code:\n  ", "  ", "entrypoint: a:b\n",
                                       "&x ", "*x", "!!binary ", "<<: "]),
                      max_size=60).map("".join))
def test_fuzz_yaml_punctuation(fuzz_dir, text):
    path = fuzz_dir / "punct.yaml"
    path.write_text(text, encoding="utf-8")
    out = _check_outcome(load_spec, path)
    assert isinstance(out, SpecError)


@FUZZ
@given(blob=st.binary(max_size=300))
def test_fuzz_random_bytes_file(fuzz_dir, blob):
    path = fuzz_dir / "bytes.yaml"
    path.write_bytes(blob)
    out = _check_outcome(load_spec, path)
    assert isinstance(out, SpecError)
    assert str(out).startswith(str(path))


@FUZZ
@given(data=mutated())
def test_fuzz_mutated_spec_dict(data):
    _check_outcome(parse_spec, data, file="mutated.yaml")


@FUZZ
@given(data=mutated(), flow=st.booleans())
def test_fuzz_mutated_spec_file(fuzz_dir, data, flow):
    path = fuzz_dir / "mutated.yaml"
    path.write_text(yaml.safe_dump(data, default_flow_style=flow, allow_unicode=True), encoding="utf-8")
    out = _check_outcome(load_spec, path)
    if isinstance(out, SpecError):
        assert str(out).startswith(str(path))


@FUZZ
@given(data=st.one_of(json_like, st.dictionaries(keys, json_like, max_size=6).map(
    lambda d: {"repro": 1, **d})))
def test_fuzz_random_structures(data):
    out = _check_outcome(parse_spec, data, file="random.yaml")
    assert isinstance(out, SpecError)  # no random structure holds a valid `code` block


@FUZZ
@given(where_=st.sampled_from(CLOSED), key=new_keys, value=json_like)
def test_fuzz_unknown_key_is_named_with_its_line(fuzz_dir, where_, key, value):
    data = copy.deepcopy(GOOD_DATA)
    block = data
    for part in where_:
        block = block[part]
    block[key] = value
    path = fuzz_dir / "unknown.yaml"
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    dotted = ".".join(where_ + (key,))
    assert info.value.key_path == dotted, str(info.value)
    assert "unknown key" in str(info.value)
    line = next(i for i, l in enumerate(text.splitlines(), 1)
                if l.lstrip().startswith((f"{key}:", f"'{key}':", f'"{key}":'))
                and len(l) - len(l.lstrip()) == 2 * len(where_))
    assert info.value.line == line
