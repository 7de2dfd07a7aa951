"""Shared test fixtures: real git repositories in tmp dirs holding a tiny real JAX workload.

`project` builds one: a package `tinyproj` with a linear-regression training function (a few
jitted steps, ~0.3 s after the jax import), a data file, a commit and a pinned spec. Tests
change code, data and spec through it exactly as a user would: edit, commit, `repro pin`.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

TRAIN_PY = '''
import jax
import jax.numpy as jnp
import numpy as np

LR_SCALE = 1.0


def train(ctx):
    d = np.load(ctx.data["xy"])
    x, y = jnp.asarray(d["x"]), jnp.asarray(d["y"])
    k1, k2 = jax.random.split(ctx.key("params"))
    params = {"hidden": {"w": jax.random.normal(k1, (x.shape[1], 8)) * 0.3, "b": jnp.zeros((8,))},
              "out": {"w": jax.random.normal(k2, (8, 1)) * 0.3, "b": jnp.zeros((1,))}}

    def loss_fn(p):
        h = jnp.tanh(x @ p["hidden"]["w"] + p["hidden"]["b"])
        return jnp.mean((h @ p["out"]["w"] + p["out"]["b"] - y) ** 2)

    step_fn = jax.jit(jax.value_and_grad(loss_fn))
    lr = ctx.config["lr"] * LR_SCALE
    for step in range(ctx.config["steps"]):
        loss, g = step_fn(params)
        params = jax.tree_util.tree_map(lambda a, b: a - lr * b, params, g)
        ctx.log(step, loss=loss)
        ctx.log_grads(step, g)
    return params
'''

SPEC = '''\
repro: 1
name: tiny
description: a tiny tanh regression for repro's own tests
code:
  commit: {commit}   # pinned by the test
  entrypoint: tinyproj.train:train
data:
  xy:
    path: data/xy.npz
    sha256: {sha}
seeds: {{params: 0}}
config: {{lr: 0.05, steps: 12}}
record:
  metrics: [loss]
  grads: {{every: 4}}
  runs: 1   # one training per record here: the noise floor's own tests ask for more
'''


def git(cwd, *args) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, text=True,
                          capture_output=True).stdout.strip()


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class Project:
    """A real git repository with a tiny JAX workload and its spec."""

    def __init__(self, root: Path):
        self.root = root
        self.spec = root / "specs" / "tiny.yaml"
        self.data = root / "data" / "xy.npz"

    def commit(self, message: str = "change") -> str:
        git(self.root, "add", "-A")
        git(self.root, "commit", "-q", "-m", message)
        return git(self.root, "rev-parse", "HEAD")

    def write(self, rel: str, text: str) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def edit_spec(self, old: str, new: str) -> None:
        text = self.spec.read_text()
        assert old in text, f"{old!r} not in spec"
        self.spec.write_text(text.replace(old, new))

    def repro(self, *args: str, check_rc: int | None = None) -> subprocess.CompletedProcess:
        """The `repro` command line, run for real in a subprocess."""
        proc = subprocess.run([sys.executable, "-m", "repro.cli", *args], cwd=self.root,
                              text=True, capture_output=True, env=os.environ.copy())
        if check_rc is not None:
            assert proc.returncode == check_rc, proc.stdout + proc.stderr
        return proc

    @property
    def record_dir(self) -> Path:
        return self.root / "fixtures" / "records" / "tiny" / "cpu"


def write_data(path: Path, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    y = (np.sin(x @ np.array([[1.0], [-2.0], [0.5], [1.5]])) ).astype(np.float32)
    with open(path, "wb") as f:
        np.savez(f, x=x, y=y)


@pytest.fixture(scope="session", autouse=True)
def _repro_cache(tmp_path_factory):
    """Keep repro's machine caches (exported trees, hash cache) inside the test session. Under
    xdist the workers share one JAX compilation cache (the run's base directory, beside their
    own): a program one worker compiled loads in the others, as between `-j` runs of repro. It
    changes how long a run takes, never its numbers (test_audit checks every bit)."""
    old = os.environ.get("REPRO_CACHE_DIR")
    cache = tmp_path_factory.mktemp("repro-cache")
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = tmp_path_factory.getbasetemp().parent / "jax-compile"   # pytest-N/, not popen-gwK/
        shared.mkdir(exist_ok=True)
        (cache / "jax-compile").symlink_to(shared, target_is_directory=True)
    os.environ["REPRO_CACHE_DIR"] = str(cache)
    yield
    if old is None:
        os.environ.pop("REPRO_CACHE_DIR", None)
    else:
        os.environ["REPRO_CACHE_DIR"] = old


def build_workload(root: Path) -> tuple[Project, str]:
    """A new repository with tinyproj and its data committed (no spec); and that commit."""
    root.mkdir(parents=True)
    git(root, "init", "-q", "-b", "main")
    p = Project(root)
    p.write("tinyproj/__init__.py", "")
    p.write("tinyproj/train.py", textwrap.dedent(TRAIN_PY))
    p.data.parent.mkdir()
    write_data(p.data)
    return p, p.commit("tiny workload")


def build_project(root: Path) -> Project:
    """tinyproj committed, data written, spec pinned to that commit (not recorded)."""
    p, commit = build_workload(root)
    p.write("specs/tiny.yaml", SPEC.format(commit=commit, sha=sha256(p.data)))
    p.commit("spec")
    return p


@pytest.fixture
def project(tmp_path) -> Project:
    """A fresh repo: tinyproj committed, data written, spec pinned to that commit (not recorded)."""
    return build_project(tmp_path / "proj")


@pytest.fixture(scope="session")
def recorded_template(tmp_path_factory) -> Project:
    """A project recorded once per test session (per xdist worker) and committed: copy it, do
    not change it."""
    p = build_project(tmp_path_factory.mktemp("template") / "proj")
    p.repro("record", "specs/tiny.yaml", check_rc=0)
    assert (p.record_dir / "record.json").exists()
    p.commit("record tiny")  # as users do: the record is committed with the spec
    return p


def runner_children(parent: int) -> list[int]:
    """Live `repro.child.runner` processes whose parent is `parent` (read from /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes()
                status = (entry / "status").read_text()
            except OSError:
                continue
            if b"repro.child.runner" in cmd and f"PPid:\t{parent}\n" in status \
                    and "State:\tZ" not in status:
                pids.append(int(entry.name))
    return pids


def alive(pids: list[int]) -> list[int]:
    """Those of `pids` still running (not gone, not zombies)."""
    out = []
    for pid in pids:
        try:
            if "State:\tZ" not in Path(f"/proc/{pid}/status").read_text():
                out.append(pid)
        except OSError:
            pass
    return out


@pytest.fixture(scope="module")
def cpu_image():
    """The envs/cpu image's Id (skips outside CI, fails in CI, when there is none)."""
    from dockerutil import cpu_image_id, engine_client

    return cpu_image_id(engine_client())


@pytest.fixture
def dproject(project, cpu_image):
    """The tiny project, its spec pinned to the envs/cpu image, under a unique spec name (the
    `repro.spec` label finds its containers); fails if a container outlives the test."""
    import uuid

    from dockerutil import pin_image, repro_containers

    name = f"dk-{uuid.uuid4().hex[:8]}"  # not "tiny-": test_audit counts repro-tiny-* runs
    project.edit_spec("name: tiny", f"name: {name}")
    pin_image(project, f"repro-jax-cpu@{cpu_image}")
    project.name = name
    yield project
    left = repro_containers(name)
    assert not left, f"containers left behind for {name}: {left}"


def train_does(project, code: str) -> None:
    """Insert `code` at the start of the tiny train(), commit and re-pin."""
    train = project.root / "tinyproj" / "train.py"
    text = train.read_text()
    anchor = "    d = np.load(ctx.data[\"xy\"])"
    assert anchor in text
    train.write_text(text.replace(anchor, code.rstrip("\n") + "\n" + anchor))
    project.commit("change training")
    project.repro("pin", str(project.spec), check_rc=0)


def edit_train(project, old: str, new: str, message: str) -> None:
    """Replace `old` by `new` in the tiny train.py (it must be there), commit, re-pin, commit."""
    train = project.root / "tinyproj" / "train.py"
    text = train.read_text()
    assert old in text, old
    train.write_text(text.replace(old, new))
    project.commit(message)
    project.repro("pin", str(project.spec), check_rc=0)
    project.commit("pin")


def lr_times(project, factor: str, setup: str = "", message: str = "change the lr") -> None:
    """Multiply the tiny training's lr by the expression `factor` (after `setup` lines at the
    start of train()), commit and re-pin: how tests make training depend on something."""
    train = project.root / "tinyproj" / "train.py"
    text = train.read_text()
    anchor = "    d = np.load(ctx.data[\"xy\"])"
    lr_line = "    lr = ctx.config[\"lr\"] * LR_SCALE"
    assert anchor in text and lr_line in text
    text = text.replace(anchor, setup.rstrip("\n") + "\n" + anchor) if setup else text
    train.write_text(text.replace(lr_line, f"{lr_line} * ({factor})"))
    project.commit(message)
    project.repro("pin", str(project.spec), check_rc=0)


# --- the store's remote: a real S3 server (rclone's) on 127.0.0.1 (test_store, test_datastore,
# test_ray) ---

BUCKET = "repro-test"


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    """`rclone serve s3` in its own process on 127.0.0.1, on a free port, serving a directory of
    its own (tests/s3server.py); the standard AWS variables point botocore (and so s3fs, and the
    `repro` subprocesses) at it. Yields its endpoint URL."""
    from s3server import ACCESS_KEY, SECRET_KEY, serve

    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                                            "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    try:
        with serve("rclone", tmp_path_factory.mktemp("s3")) as server:
            os.environ.update(AWS_ENDPOINT_URL=server.endpoint, AWS_ACCESS_KEY_ID=ACCESS_KEY,
                              AWS_SECRET_ACCESS_KEY=SECRET_KEY, AWS_DEFAULT_REGION="us-east-1")
            s3().mkdir(BUCKET)
            yield server.endpoint
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def s3():
    """A fresh s3fs client (no cached listings: the test sees what the server holds)."""
    import s3fs  # the `store` extra, in `dev`

    return s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)


def set_store(p: Project, url: str, options: str = "") -> None:
    text = f'[tool.repro]\nstore = "{url}"\n' + (f"store_options = {options}\n" if options else "")
    p.write("pyproject.toml", text)
    p.commit("store remote")


def fresh_cache(monkeypatch, tmp_path: Path, name: str = "fresh-cache") -> Path:
    cache = tmp_path / name
    monkeypatch.setenv("REPRO_CACHE_DIR", str(cache))
    return cache


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` (sqlite backend, local artifact root) on 127.0.0.1, one per test
    module: tests/mlflowserver.py."""
    from tests.mlflowserver import serve

    with serve(tmp_path_factory.mktemp("mlflow")) as server:
        yield server
