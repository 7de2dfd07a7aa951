"""`--engine ray` on a real two-node Ray cluster on this machine (tests/raycluster.py;
docs/ray.md). Node B cannot see pytest's temporary directory, where every test project lives:
whatever a task there runs, it rebuilt from the store (a real S3 server, rclone's, on 127.0.0.1: tests/s3server.py).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
# one cluster for the module, even under `pytest -n N --dist loadgroup`: all its tests on one worker
pytestmark = [pytest.mark.xdist_group("ray"), pytest.mark.slow]   # a two-node cluster: `-m "not slow"` leaves it out

from raycluster import Cluster  # noqa: E402

from conftest import BUCKET, Project, sha256  # noqa: E402   (s3_server: conftest's real S3 server)


def _can_hide() -> None:
    """Node B needs a mount namespace (unshare -m, root): outside CI its absence skips."""
    from dockerutil import IN_CI

    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs tmpfs /mnt"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        why = (f"node B of the test cluster runs in its own mount namespace (unshare -m, as root), "
               f"which this machine refuses: {probe.stderr.strip()}")
        pytest.fail(why, pytrace=False) if IN_CI else pytest.skip(why)


@pytest.fixture(scope="module")
def booting(s3_server, tmp_path_factory):
    """The nodes, starting (the project records meanwhile)."""
    _can_hide()
    c = Cluster(tmp_path_factory.getbasetemp())
    try:
        yield c.start()
    finally:
        c.stop()


@pytest.fixture(scope="module")
def cluster(booting, audited) -> Cluster:
    return booting.ready()


def _add_spec(p: Project, name: str, seed: int) -> None:
    text = p.spec.read_text().replace("name: tiny", f"name: {name}").replace(
        "seeds: {params: 0}", f"seeds: {{params: {seed}}}")
    p.write(f"specs/{name}.yaml", text)


@pytest.fixture(scope="module")
def audited(s3_server, booting, tmp_path_factory) -> Project:
    """Three recorded specs whose project names an S3 store; tiny-b then fails (seed moved),
    and tiny-d (not recorded) is an error: its data pin does not hold."""
    from conftest import build_project
    p = build_project(tmp_path_factory.mktemp("ray") / "proj")
    p.write("pyproject.toml", f'[tool.repro]\nstore = "s3://{BUCKET}/ray"\n')
    _add_spec(p, "tiny-b", 1)
    _add_spec(p, "tiny-c", 2)
    p.commit("specs and store")
    p.repro("record", "specs", "--runs", "1", check_rc=0)
    spec_b = p.root / "specs" / "tiny-b.yaml"
    spec_b.write_text(spec_b.read_text().replace("seeds: {params: 1}", "seeds: {params: 7}"))
    _add_spec(p, "tiny-d", 3)   # an error that names a file: its data pin does not hold
    spec_d = p.root / "specs" / "tiny-d.yaml"
    text = spec_d.read_text()
    spec_d.write_text(text.replace(sha256(p.data), "ab" * 32))
    p.commit("records; tiny-b's seed moved; tiny-d pins other data")
    return p


VOLATILE = {"duration_s", "timings", "fingerprint", "started", "finished", "notes"}


def _results(path: Path) -> dict[str, dict]:
    doc = json.loads(path.read_text())
    return {r["name"]: {k: v for k, v in r.items() if k not in VOLATILE} for r in doc["results"]}


def test_a_ray_audit_on_the_node_that_cannot_see_the_tree_gives_the_local_verdicts(cluster, audited,
                                                                                  tmp_path):
    local = audited.repro("audit", "specs", "-j", "2", "--json", str(tmp_path / "local.json"))
    assert local.returncode == 2, local.stdout + local.stderr
    remote = audited.repro("audit", "specs", "--engine", "ray", "--address", cluster.address,
                           "--node-kind", "node_b", "--json", str(tmp_path / "ray.json"))
    assert remote.returncode == 2, remote.stdout + remote.stderr
    a, b = _results(tmp_path / "local.json"), _results(tmp_path / "ray.json")
    assert {k: v["status"] for k, v in b.items()} == {"tiny": "pass", "tiny-b": "fail", "tiny-c": "pass",
                                                      "tiny-d": "error"}
    assert a == b
    assert f"repository {audited.root})" in b["tiny-d"]["error"]   # the user's, not the worker's copy
    # node B rebuilt the project from the store: its own cache holds the blobs and the export
    commit = json.loads((audited.record_dir / "record.json").read_text())["code"]["commit"]
    assert (cluster.cache("b") / "trees" / commit).is_dir()
    assert any((cluster.cache("b") / "store").rglob("*"))
    assert not (cluster.cache("a") / "trees").exists()   # every task asked for node_b


def _spec_of(cmd: str) -> str | None:
    """The spec a runner runs, from its run directory (`repro-<pid>-<spec>-<8 random>`)."""
    m = re.search(r"/repro-\d+-([^/]+?)-[a-z0-9_]{8}/job\.json", cmd)
    return m.group(1) if m else None


def _sweep(base: Path, seen: dict[int, tuple[int, str]], kill_first: str | None = None,
           killed: list[int] | None = None) -> None:
    """Runner processes whose parent is a Ray worker of the cluster at `base` (pid -> parent,
    command); SIGKILL the worker running the first one of spec `kill_first`."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().decode(errors="replace")
            if "repro.child.runner" not in cmd:
                continue
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            parent = (Path("/proc") / str(ppid) / "cmdline").read_bytes().decode(errors="replace")
            env = (Path("/proc") / str(ppid) / "environ").read_bytes().decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
        if not parent.startswith("ray::") or f"REPRO_CACHE_DIR={base}/" not in env:  # another cluster's
            continue
        seen.setdefault(int(entry.name), (ppid, cmd))
        if killed is not None and not killed and _spec_of(cmd) == kill_first:
            os.kill(ppid, signal.SIGKILL)
            killed.append(ppid)


def _runners(base: Path, seen: dict[int, tuple[int, str]], stop: threading.Event, kill_first: str,
             killed: list[int]) -> None:
    while not stop.is_set():
        _sweep(base, seen, kill_first, killed)
        time.sleep(0.05)


def test_a_killed_worker_is_retried_and_a_failing_spec_is_not(cluster, audited):
    from repro import pipeline
    from repro.commands.audit import run_audit
    from repro.engines.rayexec import RayExecutor

    seen: dict[int, tuple[int, str]] = {}
    stop, killed = threading.Event(), []
    watch = threading.Thread(target=_runners, args=(cluster.base, seen, stop, "tiny-c", killed), daemon=True)
    watch.start()
    try:
        audit = run_audit(audited.root / "specs", pipeline.Options(confirm=0),
                          executor=RayExecutor(cluster.address, ["node_b"]))
    finally:
        stop.set()
        watch.join()
    status = {v.name: str(v.status) for v in audit.verdicts}
    assert audit.complete and status == {"tiny": "pass", "tiny-b": "fail", "tiny-c": "pass",
                                         "tiny-d": "error"}
    assert len(killed) == 1, "\n".join(f"{k} {v[0]} {_spec_of(v[1])}" for k, v in seen.items())
    runs = {name: [(pid, ppid) for pid, (ppid, cmd) in seen.items() if _spec_of(cmd) == name]
            for name in status}
    assert len(runs["tiny-c"]) == 2, runs          # killed with its worker, then run again
    assert killed[0] in {ppid for _, ppid in runs["tiny-c"]}
    assert len({ppid for _, ppid in runs["tiny-c"]}) == 2   # on a fresh worker
    assert len(runs["tiny-b"]) == 1, runs          # a failing verdict is a result: never retried
    assert len(runs["tiny"]) == 1, runs
    assert runs["tiny-d"] == [], runs              # its pin is checked before anything trains
    # the killed try's private directory was removed by the next job on its node
    assert (cluster.cache("b") / "cluster-work").is_dir()
    assert list((cluster.cache("b") / "cluster-work").glob(f"job-{killed[0]}-*")) == []


def test_warm_up_starts_one_worker_on_each_node_that_can_run_a_job(cluster, audited):
    """The workers a batch's jobs reuse are started while its parcels pack: on the nodes of the
    kinds asked for only, and on no more nodes than there are jobs."""
    from functools import partial

    from repro import pipeline
    from repro.commands.audit import lost_verdict
    from repro.commands.check import check
    from repro.discovery import discover
    from repro.engines.executor import SpecJob
    from repro.engines.rayexec import RayExecutor

    jobs = [SpecJob(f.spec, pipeline.Options(), check, partial(lost_verdict, f.path, f.spec, "local"))
            for f in discover([audited.root / "specs"]) if f.spec is not None]

    left: list[int] = []

    def caches(kinds: list[str], n: int) -> list[str]:
        executor = RayExecutor(cluster.address, kinds)
        pids = ray.get(executor._warm_up(jobs[:n]), timeout=60)
        left.append(sum(executor._wanted.values()))   # workers it would leave warm (one CPU a node)
        env = [(Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0") for pid in pids]
        return sorted(next(v.decode().rsplit("-", 1)[1] for v in e if v.startswith(b"REPRO_CACHE_DIR="))
                      for e in env)
    assert caches(["node_b"], 4) == ["b"]
    assert caches([], 4) == ["a", "b"]
    assert len(caches([], 1)) == 1
    assert caches(["no_such_kind"], 4) == []
    assert left == [1, 2, 1, 0]   # one a node that can take a job, never more than the jobs


def _ray_runners(base: Path) -> list[int]:
    out: dict[int, tuple[int, str]] = {}
    _sweep(base, out)
    return sorted(out)


def test_ctrl_c_cancels_the_tasks_and_reports_the_rest_interrupted(cluster, audited):
    from repro import pipeline
    from repro.commands.audit import run_audit
    from repro.engines.rayexec import RayExecutor

    def interrupt_when_training() -> None:
        deadline = time.monotonic() + 60
        while not _ray_runners(cluster.base) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_when_training, daemon=True).start()
    audit = run_audit(audited.root / "specs", pipeline.Options(confirm=0),
                      executor=RayExecutor(cluster.address, ["node_b"]))
    assert not audit.complete
    assert any("interrupted" in v.error for v in audit.verdicts), [v.error for v in audit.verdicts]
    deadline = time.monotonic() + 20   # cancelled while this driver is still connected
    while _ray_runners(cluster.base):
        assert time.monotonic() < deadline, "a cancelled task's training is still running"
        time.sleep(0.2)


def test_verify_with_engine_ray(cluster, audited):
    proc = audited.repro("verify", "specs/tiny.yaml", "--engine", "ray", "--address", cluster.address,
                         "--node-kind", "node_b")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASS" in proc.stdout and str(audited.root / "specs" / "tiny.yaml") in proc.stdout


def _segment_lines(out: str) -> list[str]:
    """The verdict's per-segment lines (`-v`), durations left out."""
    return [re.sub(r"\s*\(([\d.]+ s|continued from the segment before, in its run)\)", "", line).strip()
            for line in out.splitlines()
            if re.match(r"\s*(diverges in )?\[\d+, (\d+\)|end\])", line)]


def test_verify_segments_on_ray_sends_each_segment_as_its_own_task(cluster, tmp_path):
    """Three segments on a cluster of two one-CPU nodes: two tasks ([0, 100), then [100, 200)
    going on into [200, 300), docs/segments.md), one on each node (each exports the pinned
    code into its own cache), and the verdicts are the local ones."""
    from test_checkpoints import make_ck

    from conftest import edit_train

    p = make_ck(tmp_path / "ck")
    p.edit_spec("steps: 400", "steps: 300")
    p.write("pyproject.toml", f'[tool.repro]\nstore = "s3://{BUCKET}/ray-segments"\n')
    p.commit("300 steps: three segments; the store")
    p.repro("record", "specs/tiny.yaml", "--runs", "1", check_rc=0)
    p.commit("record")
    commit = json.loads((p.record_dir / "record.json").read_text())["code"]["commit"]
    on_ray = ("--engine", "ray", "--address", cluster.address)
    out = p.repro("verify", "specs/tiny.yaml", "--no-stream", "--segments", "all", "-v", *on_ray,
                  check_rc=0).stdout
    assert "PASS tiny [cpu] bitwise identical" in out and "3 of 3 segments" in out, out
    assert _segment_lines(out) == ["[0, 100) pass", "[100, 200) pass", "[200, 300) pass"], out
    assert "[200, 300) pass (continued from the segment before, in its run)" in out   # its task ran on
    assert (cluster.cache("a") / "trees" / commit).is_dir() and (cluster.cache("b") / "trees" / commit).is_dir()

    edit_train(p, "params, opt_state, loss, g = update(params, opt_state, x[idx], y[idx], 1.0)",
               "params, opt_state, loss, g = update(params, opt_state, x[idx], y[idx], "
               "1.0 + 1e-3 * (step > 200))", "lr up by 0.1% after step 200")
    remote = p.repro("verify", "specs/tiny.yaml", "--no-stream", "--segments", "all", "-v", *on_ray,
                     check_rc=1).stdout
    local = p.repro("verify", "specs/tiny.yaml", "--no-stream", "--segments", "all", "-v", "-j", "2",
                    check_rc=1).stdout
    assert "first: metric loss in [200, 300) at step 202" in remote, remote
    assert "code.commit" in remote
    assert _segment_lines(remote) == _segment_lines(local), remote + local
    assert [line.split(":")[0] for line in _segment_lines(remote) if line.startswith("[")] == [
        "[0, 100) pass", "[100, 200) pass", "[200, 300) fail"], remote


def test_bisect_with_engine_ray_names_the_commit_that_changed_the_lr(cluster, audited, tmp_path):
    """Last in the module: it adds commits to the project (specs and records stay as they are)."""
    good = json.loads((audited.record_dir / "record.json").read_text())["code"]["commit"]
    train = audited.root / "tinyproj" / "train.py"
    audited.write("NOTES.md", "a note\n")
    audited.commit("notes")
    train.write_text(train.read_text().replace("LR_SCALE = 1.0", "LR_SCALE = 2.0"))
    changed = audited.commit("lr doubled")
    audited.write("NOTES.md", "two notes\n")
    bad = audited.commit("more notes")
    proc = audited.repro("bisect", "specs/tiny.yaml", "--good", good, "--bad", bad, "-j", "2",
                         "--engine", "ray", "--address", cluster.address, "--node-kind", "node_b",
                         "--json", str(tmp_path / "b.json"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads((tmp_path / "b.json").read_text())
    assert doc["found"] == changed
    assert doc["verdict"]["status"] == "fail"
    assert any(c.get("key") == "code.commit" for c in doc["verdict"]["changes"])


def test_without_a_store_the_engine_says_how_to_name_one(project, monkeypatch):
    """No cluster needed: a project must name its store before anything is shipped."""
    from repro.engines.parcel import pack
    from repro.errors import StoreError
    from repro.spec import load_spec

    monkeypatch.delenv("REPRO_STORE", raising=False)
    with pytest.raises(StoreError, match=r"--engine ray ships every input through the project's "
                       r"store.*\[tool.repro\] store = .*REPRO_STORE"):
        pack(load_spec(project.spec))


def test_tasks_on_one_machine_lease_disjoint_cpu_slots(tmp_path, monkeypatch):
    """No cluster needed: real flock()s on real files, as tasks of two nodes of one machine take
    them; a slot is free again when its holder ends; none left: None (pinned by pid)."""
    import contextlib
    import tempfile

    from repro.child.fingerprint import pick_cpus
    from repro.engines.rayexec import cpu_slot

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    cores = len(os.sched_getaffinity(0))
    with contextlib.ExitStack() as stack:
        slots = [stack.enter_context(cpu_slot(1)) for _ in range(cores)]
        assert slots == list(range(cores))
        assert sorted(c for s in slots for c in pick_cpus(1, s)) == sorted(os.sched_getaffinity(0))
        with cpu_slot(1) as none_left:
            assert none_left is None
    with cpu_slot(1) as again:
        assert again == 0
    assert sorted(p.name for p in (tmp_path / "repro-cpu-slots").iterdir()) == sorted(
        f"core-{c}" for c in range(cores))


def test_a_segments_run_or_error_comes_back_naming_the_users_files(tmp_path):
    """No cluster needed: what a segment's task returns (a RunResult or a ReproError) names the
    user's files, not the worker's copy; a SpecError comes back with its message intact (its
    own constructor would add `<spec>: ` again when unpickled)."""
    import pickle

    from repro.backends.base import ChildOutcome
    from repro.engines.rayexec import _back
    from repro.errors import SpecError
    from repro.result import RunResult

    there, here = str(tmp_path / "cluster-work" / "job-1-x"), "/home/user/proj"
    err = _back(SpecError("no such key", file=f"{there}/specs/a.yaml", key_path="code.commit"), there, here)
    assert str(pickle.loads(pickle.dumps(err))) == f"{here}/specs/a.yaml: code.commit: no such key"
    run = RunResult("cpu", {}, {}, {}, {}, [], ChildOutcome(0, log_tail=[f"File {there}/tinyproj/train.py"],
                    notes=[f"read {there}/data/xy.npz"]), notes=[f"kept in {there}/out"])
    back = pickle.loads(pickle.dumps(_back(run, there, here)))
    assert back.notes == [f"kept in {here}/out"]
    assert back.outcome.log_tail == [f"File {here}/tinyproj/train.py"]
    assert back.outcome.notes == [f"read {here}/data/xy.npz"]


def test_a_gpu_spec_on_a_cluster_without_a_gpu_node_is_skipped_not_left_waiting(cluster, tmp_path):
    """The cluster's nodes have no GPU (`--num-gpus=0`): Ray would hold a task asking for one
    forever; repro says SKIP at once, as it does on a host without a GPU."""
    from conftest import build_project
    p = build_project(tmp_path / "proj")
    p.write("specs/tiny-gpu.yaml", p.spec.read_text().replace("name: tiny\n", "name: tiny-gpu\n")
            + "environment: {platform: gpu}\n")
    p.commit("a GPU spec")
    out = p.repro("verify", "specs/tiny-gpu.yaml", "--engine", "ray", "--address", cluster.address,
                  check_rc=0).stdout
    assert "SKIP tiny-gpu — spec 'tiny-gpu' needs a GPU (environment.platform: gpu), but no live " \
           "node of the Ray cluster has one" in out, out


def test_a_parcel_whose_blobs_the_index_knows_is_packed_without_opening_the_remote(audited):
    """Once this machine's index (repro/store/remoteindex.py) knows every blob of a parcel, packing it
    opens no connection: here the remote's endpoint is a port nothing listens on. Without the
    index the same pack has to reach the remote, and says it cannot."""
    from repro.engines.parcel import pack
    from repro.spec import load_spec
    from repro.store.remote import remote_config
    from repro.store.remoteindex import RemoteIndex

    pack(load_spec(audited.spec))   # the index learns the remote's listing and what was sent
    script = ("import sys; from repro.engines.parcel import pack; from repro.spec import load_spec; "
              "p = pack(load_spec(sys.argv[1])); print(len(p.files), p.git_pack)")
    dead = {**os.environ, "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_MAX_ATTEMPTS": "1"}
    known = subprocess.run([sys.executable, "-c", script, str(audited.spec)], env=dead,
                           capture_output=True, text=True, timeout=120)
    assert known.returncode == 0, known.stderr
    assert int(known.stdout.split()[0]) >= 3             # spec, pyproject.toml, data, records
    RemoteIndex(remote_config(audited.root)).forget()
    unknown = subprocess.run([sys.executable, "-c", script, str(audited.spec)], env=dead,
                             capture_output=True, text=True, timeout=300)
    assert unknown.returncode != 0 and "127.0.0.1:9" in unknown.stderr, unknown.stderr


def test_a_blob_the_index_wrongly_says_the_remote_holds_is_listed_and_shipped_again(cluster, audited):
    """A remote can lose a blob behind this machine's index (a lifecycle rule, a manual delete):
    the worker that misses it says so, and the driver forgets the index, lists the remote and
    ships the job again; the verdict is the one a correct index gives."""
    from repro.store.remote import remote_config
    from repro.store.remoteindex import RemoteIndex, index_path

    copy = audited.root / "extra" / "tiny.yaml"   # bytes no node and no remote has seen
    copy.parent.mkdir(exist_ok=True)
    copy.write_text("# a copy of specs/tiny.yaml\n" + audited.spec.read_text())
    sha = sha256(copy)
    key = f"{BUCKET}/ray/{sha[:2]}/{sha[2:]}"
    from conftest import s3
    assert not s3().exists(key)
    RemoteIndex(remote_config(audited.root)).learn({sha: copy.stat().st_size})   # wrongly
    try:
        proc = audited.repro("verify", str(copy), "--engine", "ray", "--address", cluster.address)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "PASS" in proc.stdout and str(copy) in proc.stdout
        assert s3().exists(key)                                   # shipped the second time
        listed = index_path(remote_config(audited.root)).read_text().split()
        assert sha in listed and len(listed) > 2                  # the index is the listing now
    finally:
        copy.unlink()


def test_a_spec_pinned_to_an_image_runs_in_docker_on_its_node(cluster, cpu_image, tmp_path):
    """`--backend docker` on a cluster: the worker runs the same backend there, a container on
    its node's engine, from the parcel it unpacked. On node A: node B of this test cluster hides
    its files from the one engine of this machine (a real node has its own engine)."""
    from dockerutil import pin_image, repro_containers

    from conftest import build_project

    p = build_project(tmp_path / "proj")
    p.write("pyproject.toml", f'[tool.repro]\nstore = "s3://{BUCKET}/ray-docker"\n')
    pin_image(p, f"repro-jax-cpu@{cpu_image}")
    p.commit("a spec pinned to the envs/cpu image; a store")
    p.repro("record", "specs", "--runs", "1", check_rc=0)   # recorded here, on the local backend
    p.commit("record")
    out = tmp_path / "audit.json"
    proc = p.repro("audit", "specs", "--engine", "ray", "--address", cluster.address,
                   "--node-kind", "node_a", "--backend", "docker", "--json", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (result,) = json.loads(out.read_text())["results"]
    assert result["status"] == "pass" and result["backend"] == "docker", result
    assert result["fingerprint"]["in_container"] is True, result["fingerprint"]
    assert any(f"ran in container image {cpu_image}" in n for n in result["notes"]), result["notes"]
    assert repro_containers() == []                        # removed when the run ended


def _workers(cluster: Cluster, node: str, idle: bool = False) -> set[int]:
    """Ray worker processes of `node` (by their cache dir), starting or started; `idle`: only
    idle ones started for no job (titled ray::IDLE, RAY_JOB_ID nil)."""
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit():
                continue
            cmd = (entry / "cmdline").read_bytes()
            if not (cmd.startswith(b"ray::IDLE") if idle else
                    cmd.startswith(b"ray::") or b"default_worker.py" in cmd):
                continue
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"REPRO_CACHE_DIR={cluster.cache(node)}".encode() in env and (
                not idle or b"RAY_JOB_ID=ffffffff" in env):
            found.add(int(entry.name))
    return found


def _wait_for(predicate, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while not (value := predicate()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return value


def test_a_ray_command_leaves_a_worker_warm_that_the_next_job_takes(cluster, audited, monkeypatch):
    """Each command's driver is a new Ray job, whose workers no node has: as it ends it asks each
    node it used for idle workers bound to no job (docs/ray.md, "Workers left warm"), and the
    next driver's task runs on one of them instead of starting its own."""
    monkeypatch.delenv("REPRO_RAY_KEEP_WARM_S", raising=False)
    # every worker process there now, even one still starting (an earlier test's, left warm)
    before_a, before_b = _workers(cluster, "a"), _workers(cluster, "b")
    proc = audited.repro("verify", "specs/tiny.yaml", "--engine", "ray", "--address", cluster.address,
                         "--node-kind", "node_b")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    left = _wait_for(lambda: _workers(cluster, "b", idle=True) - before_b)
    assert len(left) == 1, left   # node B has one CPU: one job at a time
    assert not _workers(cluster, "a", idle=True) - before_a   # the job could not run on node A
    idle_b = _workers(cluster, "b", idle=True)
    next_job = ("import os, sys, ray\nray.init(address=sys.argv[1], log_to_driver=False)\n"
                "@ray.remote(num_cpus=0, resources={'node_b': 1})\ndef pid():\n    return os.getpid()\n"
                "print(ray.get(pid.remote()))")
    out = subprocess.run([sys.executable, "-c", next_job, cluster.address], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.split()[-1]) in idle_b


def test_keep_warm_zero_leaves_no_worker_and_a_bad_value_is_refused(cluster, audited, monkeypatch):
    monkeypatch.setenv("REPRO_RAY_KEEP_WARM_S", "0")
    before = _workers(cluster, "b")
    proc = audited.repro("verify", "specs/tiny.yaml", "--engine", "ray", "--address", cluster.address,
                         "--node-kind", "node_b")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    time.sleep(3)   # a worker asked for is titled ray::IDLE within ~1 s
    assert not _workers(cluster, "b", idle=True) - before
    monkeypatch.setenv("REPRO_RAY_KEEP_WARM_S", "ten minutes")
    proc = audited.repro("audit", "specs", "--engine", "ray", "--address", cluster.address)
    assert proc.returncode == 2
    assert "REPRO_RAY_KEEP_WARM_S must be a whole number of seconds" in proc.stderr
    assert "'ten minutes'" in proc.stderr


SCRIPT = r"""
set -u
P=$(echo "$RAY_TMPDIR" | sed 's|/rl-|/[r]l-|')   # a pattern that does not match its own grep
ours() { grep -ls "$P" /proc/[0-9]*/cmdline || true; }
python3 -m repro.cli verify specs/tiny.yaml --engine ray --no-stream >"$OUT/1.out" 2>"$OUT/1.err"
echo $? >"$OUT/1.rc"
for i in $(seq 60); do [ -z "$(ours)" ] && break; sleep 0.5; done
ours >"$OUT/1.left"
ray start --head --num-cpus=1 --disable-usage-stats --include-dashboard=false \
    --node-ip-address=127.0.0.1 >"$OUT/head.log" 2>&1 || exit 3
ours >"$OUT/2.before"
python3 -m repro.cli verify specs/tiny.yaml --engine ray --no-stream >"$OUT/2.out" 2>"$OUT/2.err"
echo $? >"$OUT/2.rc"
ours >"$OUT/2.after"
"""


def test_engine_ray_without_an_address_starts_a_local_cluster_and_stops_it(tmp_path):
    """Ray's own convention (`ray.init()` with no address): with no --address, no $RAY_ADDRESS
    and no cluster running, `--engine ray` starts a local cluster for the command, says so in
    one line and stops it as the command ends; a cluster already running is joined and left
    running. Run in a PID namespace of its own (as root): Ray finds a running cluster by its
    processes too, and this machine may run others (this module's two nodes, other suites)."""
    import tempfile

    from conftest import build_project, set_store

    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        from dockerutil import IN_CI
        why = f"needs a PID namespace (unshare --pid, as root): {probe.stderr.strip()}"
        pytest.fail(why, pytrace=False) if IN_CI else pytest.skip(why)
    p = build_project(tmp_path / "proj")
    set_store(p, f"file://{tmp_path / 'remote'}")
    p.repro("record", "specs/tiny.yaml", "--runs", "1", check_rc=0)
    p.commit("record")
    ray_tmp = Path(tempfile.mkdtemp(prefix="rl-", dir="/tmp"))   # short: unix socket paths
    out = tmp_path / "out"
    out.mkdir()
    # its own TMPDIR too: run directories are named by pid, and this namespace's pids are not
    # the machine's (a sweep outside would take them for a dead process's)
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "RAY_USAGE_STATS_ENABLED": "0", "OUT": str(out),
           "TMPDIR": tempfile.mkdtemp(prefix="rt-", dir="/tmp")}
    for key in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        env.pop(key, None)
    token_file = Path.home() / ".ray" / "auth_token"   # Ray's default token: left as it was
    had_token = token_file.exists()
    # the namespace ends with the script: whatever is left of either cluster goes with it
    try:
        run = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "sh", "-c", SCRIPT],
                             cwd=p.root, env=env, text=True, capture_output=True, timeout=500)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
        shutil.rmtree(env["TMPDIR"], ignore_errors=True)
    assert run.returncode == 0, run.stdout + run.stderr + (out / "head.log").read_text()

    def read(name: str) -> str:
        return (out / name).read_text()
    assert read("1.rc").strip() == "0", read("1.out") + read("1.err")
    assert "PASS tiny" in read("1.out"), read("1.out")
    started = [line for line in read("1.err").splitlines() if "local Ray cluster" in line]
    assert len(started) == 1 and re.search(r"started a local Ray cluster \(\d+ CPUs\) for this "
                                           r"command", started[0]), read("1.err")
    assert read("1.left") == "", read("1.left")   # stopped at exit: none of its processes left
    assert token_file.exists() == had_token   # its token lived in its processes' environment
    # a cluster already running, found the same way (no address), is joined and left running
    assert read("2.rc").strip() == "0" and "PASS tiny" in read("2.out"), read("2.out") + read("2.err")
    assert "local Ray cluster" not in read("2.err"), read("2.err")
    before = set(read("2.before").split())
    assert before and before <= set(read("2.after").split()), (before, read("2.after"))


def test_rays_private_api_sits_behind_one_guard_that_names_the_version():
    """No cluster needed: the installed Ray is one the guard was written for and has the
    internal calls; a Ray that lost one (an AttributeError while they are used) becomes a
    ReproError naming what failed, the Ray version and what to do, not a traceback."""
    from repro.engines.rayexec import RayInternalsChanged, ray_internals, ray_version_tested
    from repro.errors import ReproError

    assert ray_version_tested(ray), ray.__version__
    with ray_internals(ray) as prestart:
        assert callable(prestart)
    with pytest.raises(RayInternalsChanged) as caught, ray_internals(ray):
        raise AttributeError("module 'ray.core.generated.common_pb2' has no attribute 'Language'")
    message = str(caught.value)
    assert isinstance(caught.value, ReproError)
    assert f"Ray {ray.__version__} lacks the internal PrestartWorkers call" in message
    assert "REPRO_RAY_KEEP_WARM_S=0" in message and "has no attribute 'Language'" in message
    # only rayexec touches Ray's private modules, and only inside ray_internals
    import ast
    import inspect

    import repro.engines.rayexec as rayexec
    users = {n.name for n in ast.walk(ast.parse(inspect.getsource(rayexec)))
             if isinstance(n, ast.FunctionDef)
             and any(isinstance(i, ast.ImportFrom) and i.module and ("_private" in i.module or
                     i.module.startswith("ray.core")) for i in ast.walk(n))}
    assert users == {"ray_internals"}, users
    assert not [p for p in Path(rayexec.__file__).parents[1].rglob("*.py")
                if p.name != "rayexec.py" and "ray._private" in p.read_text()]


def test_a_two_process_spec_verifies_bitwise_with_one_process_on_each_node(cluster, tmp_path):
    """environment.processes: 2 on the two one-CPU nodes: a placement group spreads them one a
    node (STRICT_SPREAD), process 0's node hosts the coordinator, and the verify is bitwise
    identical to the local record. `--segments all`: each segment is its two processes' tasks,
    every process restoring the recorded state from its node's copy of the record."""
    from test_multiprocess import make_mp

    p = make_mp(tmp_path / "mp", record_extra="\n  checkpoints: {every: 3}")
    p.write("pyproject.toml", f'[tool.repro]\nstore = "s3://{BUCKET}/ray-mp"\n')
    p.commit("the store")
    p.repro("record", "specs/mp.yaml", check_rc=0)
    p.commit("record")
    out = p.repro("verify", "specs/mp.yaml", "--no-stream", "-v", "--engine", "ray",
                  "--address", cluster.address, check_rc=0).stdout
    assert "PASS mp [cpu] bitwise identical" in out, out
    placed = re.search(r"2 processes placed by Ray \(STRICT_SPREAD\): process 0 on node (\w+), "
                       r"process 1 on node (\w+)", out)
    assert placed and placed.group(1) != placed.group(2), out
    out = p.repro("verify", "specs/mp.yaml", "--no-stream", "--segments", "all", "--engine", "ray",
                  "--address", cluster.address, check_rc=0).stdout
    assert "PASS mp [cpu] bitwise identical" in out and "2 of 2 segments" in out, out


def test_a_process_killed_on_its_node_fails_the_spec_naming_it_and_the_other_is_cancelled(cluster, tmp_path):
    """SIGKILL process 1 (on the other node) mid-run: the verify is an error naming it (exit 2)
    and neither runner outlives the command."""
    import tempfile

    from test_multiprocess import make_mp

    pids_dir = Path(tempfile.mkdtemp(prefix="repro-mp-pids-"))   # seen by both nodes
    try:
        pids_dir.rmdir()   # absent while recording: the workload then neither waits nor writes
        p = make_mp(tmp_path / "mp", steps=40, extra=f", pids_dir: {pids_dir}")
        p.write("pyproject.toml", f'[tool.repro]\nstore = "s3://{BUCKET}/ray-mp-kill"\n')
        p.commit("the store")
        p.repro("record", "specs/mp.yaml", check_rc=0)
        p.commit("record")
        pids_dir.mkdir()
        cli = subprocess.Popen([sys.executable, "-m", "repro.cli", "verify", "specs/mp.yaml",
                                "--no-stream", "--engine", "ray", "--address", cluster.address],
                               cwd=p.root, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while not all((pids_dir / f"{k}.pid").exists() for k in (0, 1)):
                assert time.monotonic() < deadline and cli.poll() is None, cli.communicate()[0]
                time.sleep(0.1)
            runners = [int((pids_dir / f"{k}.pid").read_text()) for k in (0, 1)]
            os.kill(runners[1], signal.SIGKILL)
            out, _ = cli.communicate(timeout=120)
        finally:
            if cli.poll() is None:
                cli.kill()
                cli.wait()
        assert cli.returncode == 2, out
        assert f"process 1 of 2 (pid {runners[1]}) was killed by SIGKILL" in out, out
        deadline = time.monotonic() + 10   # a cancelled task's worker goes, and its runner with it
        while any(os.path.exists(f"/proc/{pid}") for pid in runners) and time.monotonic() < deadline:
            time.sleep(0.1)
        from repro.proctree import alive
        assert not any(alive(pid) for pid in runners), runners
    finally:
        shutil.rmtree(pids_dir, ignore_errors=True)
