"""`repro pin` and `repro hash` on real git repositories (the `project` fixture).

Pinning edits the spec value by value: everything but the pinned values must stay byte-for-byte
as the user wrote it, so most tests compare the whole text with the expected text.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest

from conftest import git, sha256, write_data
from repro.commands.repin import pin_spec
from repro.errors import SpecError
from repro.spec import load_spec

SPEC = "specs/tiny.yaml"


def head(p) -> str:
    return git(p.root, "rev-parse", "HEAD")


def pin_to_head(p) -> str:
    """The fixture's spec pins the workload commit, and the spec commit came after it: pin the
    current HEAD first (in process) so a test sees only the changes it makes."""
    pin_spec(p.spec)
    assert pinned(p)[0] == head(p)
    return head(p)


def pinned(p) -> tuple[str, str]:
    spec = load_spec(p.spec)
    return spec.code.commit, spec.data["xy"].sha256


def block_entry(sha: str) -> str:
    return f"  xy:\n    path: data/xy.npz\n    sha256: {sha}\n"


# -- rewriting existing pins ----------------------------------------------------------------------
def test_new_commit_rewrites_only_the_commit(project):
    p = project
    old_commit, sha = pinned(p)
    before = p.spec.read_text()
    p.write("tinyproj/train.py", (p.root / "tinyproj/train.py").read_text() + "\n# v2\n")
    new_commit = p.commit("v2")
    assert new_commit != old_commit
    proc = p.repro("pin", SPEC, check_rc=0)
    assert proc.stdout.splitlines() == [f"{SPEC}: code.commit: {old_commit} -> {new_commit}"]
    assert "warning" not in proc.stderr
    after = p.spec.read_text()
    assert after == before.replace(old_commit, new_commit)
    assert "# pinned by the test" in after  # the user's comment survives
    assert pinned(p) == (new_commit, sha)


def test_data_change_rewrites_the_sha256(project):
    p = project
    old_commit, old_sha = pinned(p)
    before = p.spec.read_text()
    write_data(p.data, seed=1)
    new_sha = hashlib.sha256(p.data.read_bytes()).hexdigest()
    assert new_sha != old_sha
    new_commit = p.commit("new data")
    proc = p.repro("pin", SPEC, check_rc=0)
    assert proc.stdout.splitlines() == [f"{SPEC}: code.commit: {old_commit} -> {new_commit}",
                                        f"{SPEC}: data.xy.sha256: {old_sha} -> {new_sha}"]
    assert p.spec.read_text() == before.replace(old_commit, new_commit).replace(old_sha, new_sha)
    assert pinned(p) == (new_commit, new_sha)


def test_uncommitted_data_change_warns_and_pins_the_hash(project):
    p = project
    pin_to_head(p)
    commit, old_sha = pinned(p)
    before = p.spec.read_text()
    write_data(p.data, seed=2)
    proc = p.repro("pin", SPEC, check_rc=0)
    new_sha = sha256(p.data)
    assert proc.stdout.splitlines() == [f"{SPEC}: data.xy.sha256: {old_sha} -> {new_sha}"]
    assert proc.stderr.startswith("warning: 1 uncommitted change(s) in ")
    assert "(data/xy.npz)" in proc.stderr and f"commit {commit[:12]}" in proc.stderr
    assert p.spec.read_text() == before.replace(old_sha, new_sha)


def test_dirty_code_gives_a_warning_naming_the_files(project):
    p = project
    pin_to_head(p)
    (p.root / "tinyproj/train.py").write_text("# edited, not committed\n")
    p.write("tinyproj/extra.py", "X = 1\n")
    before = p.spec.read_text()
    proc = p.repro("pin", SPEC, check_rc=0)
    assert proc.stdout.strip() == f"{SPEC}: already pinned to the current commit and data"
    warning = proc.stderr.strip()
    assert warning.startswith("warning: 2 uncommitted change(s)")
    assert "tinyproj/train.py" in warning and "tinyproj/extra.py" in warning
    assert "commit them and pin again" in warning
    assert p.spec.read_text() == before


def test_an_edit_to_the_spec_itself_is_not_a_dirty_tree(project):
    p = project
    pin_to_head(p)
    p.edit_spec("steps: 12", "steps: 13")
    proc = p.repro("pin", SPEC, check_rc=0)
    assert proc.stderr == ""
    assert "already pinned" in proc.stdout


def test_second_pin_is_a_no_op(project):
    p = project
    write_data(p.data, seed=3)
    p.write("tinyproj/train.py", "# v3\n")
    p.commit("v3")
    first = p.repro("pin", SPEC, check_rc=0)
    assert len(first.stdout.splitlines()) == 2
    text, st = p.spec.read_bytes(), os.stat(p.spec)
    second = p.repro("pin", SPEC, check_rc=0)
    assert second.stdout.strip() == f"{SPEC}: already pinned to the current commit and data"
    assert p.spec.read_bytes() == text
    after = os.stat(p.spec)
    assert (after.st_ino, after.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)  # not rewritten
    assert pin_spec(p.spec) == ([], [])


# -- inserting missing pins ---------------------------------------------------------------------
def test_inserts_a_missing_sha256_block_style(project):
    p = project
    pin_to_head(p)
    commit, sha = pinned(p)
    original = p.spec.read_text()
    p.edit_spec(f"    sha256: {sha}\n", "")
    with pytest.raises(SpecError, match="run `repro pin SPEC`"):
        load_spec(p.spec)
    changes, warnings = pin_spec(p.spec)
    assert changes == [("data.xy.sha256", None, sha)] and warnings == []
    assert p.spec.read_text() == original  # same place, same indent as it was written
    assert pinned(p) == (commit, sha)


def test_inserts_a_missing_sha256_under_a_commented_last_key(project):
    p = project
    pin_to_head(p)
    _, sha = pinned(p)
    p.edit_spec(block_entry(sha), "  xy:\n    path: data/xy.npz   # the table\n")
    before = p.spec.read_text()
    p.repro("pin", SPEC, check_rc=0)
    assert p.spec.read_text() == before.replace(
        "    path: data/xy.npz   # the table\n",
        f"    path: data/xy.npz   # the table\n    sha256: {sha}\n")


@pytest.mark.parametrize("flow, expected", [
    ("{path: data/xy.npz}", "{path: data/xy.npz, sha256: SHA}"),
    ("{ path: data/xy.npz }", "{ path: data/xy.npz, sha256: SHA }"),
    ("{path: data/xy.npz, }", "{path: data/xy.npz, sha256: SHA, }"),
    ("{path: 'data/xy.npz'}", "{path: 'data/xy.npz', sha256: SHA}"),
], ids=["plain", "spaced", "trailing-comma", "quoted"])
def test_inserts_a_missing_sha256_flow_style(project, flow, expected):
    p = project
    pin_to_head(p)
    commit, sha = pinned(p)
    p.edit_spec(block_entry(sha), f"  xy: {flow}   # flow style\n")
    before = p.spec.read_text()
    proc = p.repro("pin", SPEC, check_rc=0)
    assert proc.stdout.strip() == f"{SPEC}: data.xy.sha256: (unset) -> {sha}"
    assert p.spec.read_text() == before.replace(flow, expected.replace("SHA", sha))
    assert pinned(p) == (commit, sha)


def test_inserts_a_missing_commit(project):
    p = project
    commit, sha = pinned(p)
    p.edit_spec(f"  commit: {commit}   # pinned by the test\n", "")
    before = p.spec.read_text()
    proc = p.repro("pin", SPEC, check_rc=0)
    now = head(p)
    assert proc.stdout.strip() == f"{SPEC}: code.commit: (unset) -> {now}"
    assert p.spec.read_text() == before.replace(
        "  entrypoint: tinyproj.train:train\n",
        f"  entrypoint: tinyproj.train:train\n  commit: {now}\n")
    assert pinned(p) == (now, sha)


def test_fills_empty_values(project):
    p = project
    pin_to_head(p)
    commit, sha = pinned(p)
    p.edit_spec(f"  commit: {commit}   # pinned by the test\n", "  commit:\n")
    p.edit_spec(f"    sha256: {sha}\n", "    sha256:   # fill me\n")
    before = p.spec.read_text()
    p.repro("pin", SPEC, check_rc=0)
    now = head(p)
    assert p.spec.read_text() == before.replace("  commit:\n", f"  commit: {now}\n").replace(
        "    sha256:   # fill me\n", f"    sha256: {sha}   # fill me\n")
    assert pinned(p) == (now, sha)


def test_replaces_a_null_value(project):
    p = project
    pin_to_head(p)
    commit, sha = pinned(p)
    p.edit_spec(f"sha256: {sha}", "sha256: ~")
    p.repro("pin", SPEC, check_rc=0)
    assert f"    sha256: {sha}\n" in p.spec.read_text()


@pytest.mark.parametrize("quote", ['"', "'"])
def test_keeps_the_users_quotes(project, quote):
    p = project
    old, _ = pinned(p)
    p.edit_spec(f"commit: {old}", f"commit: {quote}{old}{quote}")
    p.write("tinyproj/train.py", "# v4\n")
    new = p.commit("v4")
    before = p.spec.read_text()
    p.repro("pin", SPEC, check_rc=0)
    assert p.spec.read_text() == before.replace(f"{quote}{old}{quote}", f"{quote}{new}{quote}")
    assert pinned(p)[0] == new


def test_short_commit_is_replaced_by_the_full_head(project):
    p = project
    old, _ = pinned(p)
    p.edit_spec(f"commit: {old}", f"commit: {old[:7]}")
    with pytest.raises(SpecError) as info:
        load_spec(p.spec)
    assert f"`git rev-parse {old[:7]}`" in str(info.value) and "run `repro pin`" in str(info.value)
    before = p.spec.read_text()
    p.repro("pin", SPEC, check_rc=0)
    assert p.spec.read_text() == before.replace(f"commit: {old[:7]}", f"commit: {head(p)}")


@pytest.mark.parametrize("short", ["1234567", "12e4567"])
def test_a_short_commit_that_reads_as_a_yaml_number_gets_the_commit_hint(project, short):
    """YAML reads `1234567` as an int and `12e4567` as a float; a commit id is text, so the
    error is the short-commit one and `repro pin` replaces it (was ~5% flaky with random ids)."""
    p = project
    old, _ = pinned(p)
    p.edit_spec(f"commit: {old}", f"commit: {short}")
    with pytest.raises(SpecError) as info:
        load_spec(p.spec)
    assert f"`git rev-parse {short}`" in str(info.value) and info.value.key_path == "code.commit"
    before = p.spec.read_text()
    p.repro("pin", SPEC, check_rc=0)
    assert p.spec.read_text() == before.replace(f"commit: {short}", f"commit: {head(p)}")


def test_explicit_commit_that_yaml_would_read_as_a_number_is_quoted(project):
    """No real commit is all digits, so the YAML edit is checked on its own; `repro pin
    --commit` refuses such a commit because it does not exist (issue 14.11)."""
    from repro.yamlio import set_value
    p = project
    digits = "1" * 40
    before = p.spec.read_text()
    old, _ = pinned(p)
    edited = set_value(before, ("code", "commit"), digits, str(p.spec))
    assert edited == before.replace(old, f'"{digits}"')
    p.spec.write_text(edited)
    assert load_spec(p.spec).code.commit == digits
    p.spec.write_text(before)
    proc = p.repro("pin", "--commit", digits, SPEC, check_rc=2)
    assert f"pinned commit {digits} does not exist" in proc.stderr
    assert p.spec.read_text() == before


def test_invalid_explicit_commit_leaves_the_file_alone(project):
    p = project
    before = p.spec.read_bytes()
    proc = p.repro("pin", "--commit", "abc123", SPEC, check_rc=2)
    assert proc.stderr.startswith("repro: error: ")
    assert "code.commit" in proc.stderr and "40-hex" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert p.spec.read_bytes() == before


def test_missing_data_is_an_error_and_the_spec_is_unchanged(project):
    p = project
    before = p.spec.read_bytes()
    p.data.unlink()
    proc = p.repro("pin", SPEC, check_rc=2)
    assert "data/xy.npz" in proc.stderr and "does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert p.spec.read_bytes() == before


def test_a_bad_spec_is_reported_not_pinned(project):
    p = project
    p.edit_spec("steps: 12}", "steps: 12}\nbogus: 1")
    before = p.spec.read_bytes()
    proc = p.repro("pin", SPEC, check_rc=2)
    assert f"{SPEC}:" in proc.stderr and "bogus: unknown key" in proc.stderr
    assert p.spec.read_bytes() == before


def test_spec_outside_a_git_repository(tmp_path):
    spec = tmp_path / "lonely.yaml"
    spec.write_text("repro: 1\ncode:\n  entrypoint: a.b:c\n")
    proc = subprocess.run([sys.executable, "-m", "repro.cli", "pin", str(spec)], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert "is not inside a git repository" in proc.stderr


def test_pins_every_spec_in_a_directory(project):
    p = project
    second = p.root / "specs" / "tiny2.yaml"
    second.write_text(p.spec.read_text().replace("name: tiny", "name: tiny2"))
    p.write("tinyproj/train.py", "# v5\n")
    new = p.commit("v5")
    proc = p.repro("pin", "specs", check_rc=0)
    assert sorted(line.split(":")[0] for line in proc.stdout.splitlines()) == \
        ["specs/tiny.yaml", "specs/tiny2.yaml"]
    assert load_spec(p.spec).code.commit == new == load_spec(second).code.commit


# -- repro hash ---------------------------------------------------------------------------------
def test_hash_prints_sha256_and_path(project):
    p = project
    proc = p.repro("hash", "data/xy.npz", check_rc=0)
    assert proc.stdout == f"{hashlib.sha256(p.data.read_bytes()).hexdigest()}  data/xy.npz\n"
    assert proc.stdout.split()[0] == pinned(p)[1]  # what the spec pins


def test_hash_of_several_paths_and_a_directory(project):
    p = project
    d = p.root / "data" / "set"
    (d / "sub").mkdir(parents=True)
    (d / "b.txt").write_bytes(b"bee\n")
    (d / "sub" / "a.bin").write_bytes(bytes(range(256)))
    proc = p.repro("hash", "data/set", "data/xy.npz", str(d / "b.txt"), check_rc=0)
    files = sorted([(b"b.txt", d / "b.txt"), (b"sub/a.bin", d / "sub" / "a.bin")])
    listing = b"".join(hashlib.sha256(f.read_bytes()).hexdigest().encode() + b"  " + rel + b"\n"
                       for rel, f in files)
    assert proc.stdout.splitlines() == [
        f"{hashlib.sha256(listing).hexdigest()}  data/set",
        f"{sha256(p.data)}  data/xy.npz",
        f"{hashlib.sha256(b'bee' + bytes([10])).hexdigest()}  {d / 'b.txt'}",
    ]


def test_hash_of_a_missing_path_exits_2(project):
    proc = project.repro("hash", "data/nope.npz", check_rc=2)
    assert proc.stdout == ""
    assert "data/nope.npz does not exist" in proc.stderr and "Traceback" not in proc.stderr


def test_a_pinned_value_stays_bare_unless_yaml_would_misread_it():
    """`repro pin` rewrites an image digest, a commit, an URL in place: an `@` or `:` inside a
    value is ordinary YAML and stays as the user wrote it; quotes come only where a bare value
    would be read as something else (in a flow collection too)."""
    import yaml

    from repro.yamlio import scalar_text, set_value
    image = "repro-jax-cpu@sha256:" + "e" * 64
    text = "environment:\n  image: repro-jax-cpu@sha256:" + "0" * 64 + "  # the digest\n"
    assert set_value(text, ("environment", "image"), image, "s.yaml") == \
        f"environment:\n  image: {image}  # the digest\n"
    for bare in (image, "s3://bucket/key", "it's", "k:v", "a@b!c"):
        assert scalar_text(bare) == bare
    for tricky in ("a, b", "@x", "x #y", "a: b", "- a", "'q", "x]", " pad", "123", "true", "null"):
        assert scalar_text(tricky) != tricky
        assert yaml.safe_load(f"v: {scalar_text(tricky)}")["v"] == tricky
        listed = set_value("v: [a]\n", ("v",), [tricky, "b"], "s.yaml")
        assert yaml.safe_load(listed)["v"] == [tricky, "b"]
