"""`repro bisect SPEC --env`: the package change between two locks that flips a verdict.

The search (`ddmin`) and the lock handling are checked on their own; the end-to-end test is real
throughout: three tiny packages are written as real wheels (real sha256 hashes), locked twice
(1.0 and 1.1), installed by `repro env build` on top of the envs/cpu image (FROM
repro-jax-cpu:latest, so a build takes seconds, not the minute a jax install does), the tiny
training multiplies its lr by `reprotest_scale.SCALE`, the spec is recorded in the good image,
and the CLI names the one change that flips the verdict, with the builds it took.
"""
from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
import subprocess
import sys
import time
import uuid
import zipfile
from pathlib import Path

import pytest

from conftest import lr_times
from repro.commands.envbisect import apply, ddmin, lock_changes, parse_lock, split

pytestmark = pytest.mark.slow   # a real Docker engine and image builds: `-m "not slow"` leaves them out


# -- ddmin, pure --------------------------------------------------------------------------------
def _oracle(culprits: set[int], unresolved: set[frozenset[int]] = frozenset()):  # type: ignore[assignment]
    calls: list[frozenset[int]] = []

    def probe(subset):
        key = frozenset(subset)
        calls.append(key)
        if key in unresolved:
            return "unresolved"
        return "fail" if culprits <= key else "pass"
    return probe, calls


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 16])
def test_ddmin_finds_one_culprit_among_n_in_about_2_log2_n_tests(n):
    for culprit in range(n):
        test, calls = _oracle({culprit})
        assert ddmin(list(range(n)), test) == [culprit]
        distinct = len(set(calls))
        assert distinct <= 2 * max(1, (n - 1).bit_length()), (n, culprit, distinct)


def test_ddmin_finds_a_pair_that_only_fails_together():
    for a, b in itertools.combinations(range(6), 2):
        test, _ = _oracle({a, b})
        assert sorted(ddmin(list(range(6)), test)) == [a, b]


def test_ddmin_treats_unresolved_as_not_failing():
    # [0] alone does not build: the culprit 1 is still found through the other half
    test, _ = _oracle({1}, {frozenset({0})})
    assert ddmin([0, 1, 2], test) == [1]
    # the half holding the culprit is unresolved: ddmin goes finer and still finds it
    test, _ = _oracle({3}, {frozenset({2, 3})})
    assert ddmin([0, 1, 2, 3], test) == [3]


def test_split_keeps_order_and_sizes():
    assert split([1, 2, 3], 2) == [[1], [2, 3]]
    assert split(list(range(7)), 3) == [[0, 1], [2, 3], [4, 5, 6]]


# -- locks ----------------------------------------------------------------------------------------
LOCK_A = """\
# header comment
absl-py==2.5.1 \\
    --hash=sha256:aa
    # via optax
Numpy==2.4.6 \\
    --hash=sha256:bb \\
    --hash=sha256:cc
old_pkg==1.0 --hash=sha256:dd
"""
LOCK_B = """\
absl-py==2.5.1 \\
    --hash=sha256:aa
numpy==2.3.0 \\
    --hash=sha256:ee
new-pkg==3.0 \\
    --hash=sha256:ff
"""


def test_lock_changes_and_apply(tmp_path):
    (tmp_path / "a").write_text(LOCK_A)
    (tmp_path / "b").write_text(LOCK_B)
    a, b = parse_lock(tmp_path / "a"), parse_lock(tmp_path / "b")
    assert a.header == "# header comment\n"
    assert list(a.entries) == ["absl-py", "numpy", "old-pkg"]
    changes = lock_changes(a, b)
    assert [c.text() for c in changes] == ["new-pkg added (3.0)", "numpy 2.4.6 -> 2.3.0",
                                           "old-pkg removed (was 1.0)"]
    assert apply(a, []) == LOCK_A
    numpy_only = apply(a, [changes[1]])
    assert "numpy==2.3.0" in numpy_only and "Numpy==2.4.6" not in numpy_only
    assert "old_pkg==1.0" in numpy_only and "new-pkg" not in numpy_only
    everything = apply(a, changes)
    assert "old_pkg" not in everything and everything.endswith("new-pkg==3.0 \\\n    --hash=sha256:ff\n")


# -- end to end: real wheels, real builds, real trainings in Docker ----------------------------------
def _wheel(out: Path, dist: str, version: str, module: str, body: str) -> Path:
    """A real (pure-Python) wheel of one module, written as the wheel format says."""
    tag = "py3-none-any"
    dist_info = f"{dist.replace('-', '_')}-{version}.dist-info"
    files = {
        f"{module}.py": body,
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n",
        f"{dist_info}/WHEEL": f"Wheel-Version: 1.0\nGenerator: repro-test\nRoot-Is-Purelib: true\nTag: {tag}\n",
    }
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{name},sha256={digest.decode()},{len(text.encode())}")
    files[f"{dist_info}/RECORD"] = "\n".join(record + [f"{dist_info}/RECORD,,"]) + "\n"
    path = out / f"{dist.replace('-', '_')}-{version}-{tag}.whl"
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(zipfile.ZipInfo(name, (2020, 1, 1, 0, 0, 0)), text)
    return path


PACKAGES = [  # (distribution, module, body at 1.0, body at 1.1)
    ("reprotest-helper-a", "reprotest_helper_a", "NAME = 'a'\n", "NAME = 'a, again'\n"),
    ("reprotest-helper-b", "reprotest_helper_b", "VALUE = 1\n", "VALUE = 2\n"),
    ("reprotest-scale", "reprotest_scale", "SCALE = 1.0\n", "SCALE = 1.5\n"),
]


def _lock(wheels: dict[tuple[str, str], Path], version: str) -> str:
    lines = ["# three tiny packages on top of the envs/cpu image\n"]
    for dist, *_ in PACKAGES:
        digest = hashlib.sha256(wheels[dist, version].read_bytes()).hexdigest()
        lines.append(f"{dist}=={version} \\\n    --hash=sha256:{digest}\n    # via test\n")
    return "".join(lines)


@pytest.fixture
def envs(dproject, tmp_path):
    """Wheels at 1.0 and 1.1, recipe envs/a (lock at 1.0) and lock envs/b.lock (1.1); every
    image named after the recipe's unique name is removed afterwards."""
    from dockerutil import engine_client

    client = engine_client()
    house = tmp_path / "wheelhouse"
    house.mkdir()
    wheels = {(dist, v): _wheel(house, dist, v, module, body)
              for dist, module, *bodies in PACKAGES for v, body in zip(("1.0", "1.1"), bodies)}
    name = f"repro-test-envbisect-{uuid.uuid4().hex[:8]}"
    a = dproject.root / "envs" / "a"
    a.mkdir(parents=True)
    (a / "Dockerfile").write_text(
        "FROM repro-jax-cpu:latest\n"
        "COPY requirements.lock /build/requirements.lock\n"
        "COPY wheels /build/wheels\n"
        "RUN /opt/venv/bin/pip install --quiet --no-cache-dir --no-index --find-links "
        "/build/wheels --require-hashes --only-binary=:all: --no-deps -r "
        "/build/requirements.lock && rm -rf /build\n")
    (a / "recipe.yaml").write_text(f"image: {name}\nfind_links: [{house}]\n")
    (a / "requirements.lock").write_text(_lock(wheels, "1.0"))
    (dproject.root / "envs" / "b.lock").write_text(_lock(wheels, "1.1"))
    yield a, dproject.root / "envs" / "b.lock", name
    for image in client.images.list(filters={"reference": f"{name}*"}):
        client.images.remove(image.id, force=True)


def test_env_bisect_names_the_package_that_flips_the_verdict(dproject, envs, tmp_path):
    recipe, bad_lock, name = envs
    t0 = time.perf_counter()
    built = subprocess.run([sys.executable, "-m", "repro.cli", "env", "build", str(recipe)],
                           capture_output=True, text=True, cwd=dproject.root)
    assert built.returncode == 0, built.stderr
    ref = built.stdout.strip().splitlines()[-1]
    assert ref.startswith(f"{name}@sha256:")
    text = dproject.spec.read_text()
    old = next(line for line in text.splitlines() if line.strip().startswith("image:"))
    dproject.spec.write_text(text.replace(old, f"  image: {ref}"))
    lr_times(dproject, "reprotest_scale.SCALE",
             setup="    import reprotest_helper_a, reprotest_scale  # noqa: F401")
    dproject.repro("record", str(dproject.spec), "--backend", "docker", check_rc=0)
    dproject.commit("record in the good environment")

    out_json = tmp_path / "envbisect.json"
    proc = dproject.repro("bisect", str(dproject.spec), "--env", "--good", str(recipe),
                          "--bad", str(bad_lock), "--json", str(out_json))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "reprotest-scale 1.0 -> 1.1 flips the verdict" in proc.stdout, proc.stdout
    doc = json.loads(out_json.read_text())
    assert [c["package"] for c in doc["changes"]] == [d for d, *_ in PACKAGES]
    assert doc["minimal"] == [{"package": "reprotest-scale", "good": "1.0", "bad": "1.1",
                               "text": "reprotest-scale 1.0 -> 1.1"}]
    probes = doc["probes"]
    assert [p["role"] for p in probes[:2]] == ["good", "bad"]
    assert [p["outcome"] for p in probes[:2]] == ["pass", "fail"]
    assert doc["builds"] == len(probes) <= 6
    assert all(p["image"] and p["image"].startswith(f"{name}-bisect-") for p in probes)
    # every probe with the scale change fails, every one without it passes
    for p in probes:
        assert p["outcome"] == ("fail" if "reprotest-scale" in p["applied"] or p["role"] == "bad"
                                else "pass"), p
    # one shared wheelhouse: each of the six wheels is kept once, by its sha256, for all builds
    pool = Path(os.environ["REPRO_CACHE_DIR"]) / "wheels" / "by-sha256"
    assert len([d for d in pool.iterdir() if d.is_dir()]) == 6
    # the good lock rebuilt is the image the record was made in (same layers, same digest)
    assert probes[0]["image"].split("@")[1] == ref.split("@")[1]
    assert f"searched 3 package changes by ddmin: {len(probes)} builds" in proc.stdout
    for i in range(1, len(probes) + 1):
        assert f"build {i} [" in proc.stdout
    print(f"\nenv bisect: {len(probes)} builds, {doc['duration_s']:.1f} s "
          f"(whole test {time.perf_counter() - t0:.1f} s)\n" + proc.stdout)


def test_env_bisect_refuses_two_locks_with_the_same_pins(dproject, envs):
    recipe, _, _ = envs
    proc = dproject.repro("bisect", str(dproject.spec), "--env", "--good", str(recipe),
                          "--bad", str(recipe / "requirements.lock"))
    assert proc.returncode == 2
    assert "pin the same packages: nothing to bisect" in proc.stderr
