"""Recorded versions on disk: atomic writes under SIGKILL, damage detection, and `repro diff`.

Everything is real: records written by real processes that are killed with SIGKILL at random
moments, files damaged byte by byte, the `repro` command line run in subprocesses.
"""
from __future__ import annotations

import inspect
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from repro.errors import RecordError
from repro.record import read_record, write_record
from tests.conftest import Project, runner_children


def meta_for(tag):
    """A minimal record.json whose `created` carries a tag naming the version."""
    from repro.record import CodeInfo, RecordMeta, SpecInfo

    return RecordMeta(repro_version="test", created=f"tag-{tag}",
                      spec=SpecInfo(name="t", hash="0" * 64, canonical={}, file="t.yaml"),
                      code=CodeInfo(mode="pinned", commit=None), data={}, backend="local",
                      platform="cpu", fingerprint={}, metrics={}, grad_steps=[])

N_BIG = 6_000_000  # two float32 arrays of 24 MB: a write takes a visible while


def arrays_for(tag: int) -> dict[str, np.ndarray]:
    return {"params/big/w": np.full(N_BIG, tag, np.float32),
            "params/big/v": np.full(N_BIG, -tag, np.float32),
            "params/small/b": np.full((3, 5), tag, np.float64)}


def check_complete(directory: Path, allowed: set[int]) -> int:
    """The record is one complete version whose tag is in `allowed`; return its tag."""
    rec = read_record(directory)  # never raises: every state is a complete record
    tag = int(rec.meta.created.removeprefix("tag-"))
    assert tag in allowed, (tag, allowed)
    assert set(rec.arrays) == set(arrays_for(0))
    assert rec.arrays["params/big/w"].shape == (N_BIG,)
    assert np.all(rec.arrays["params/big/w"] == tag)
    assert np.all(rec.arrays["params/big/v"] == -tag)
    assert np.all(rec.arrays["params/small/b"] == tag)
    big, small = rec.meta.arrays.index["params/big/w"], rec.meta.arrays.index["params/small/b"]
    # over 1 MiB: a pointer to a blob in the machine's store; the small one is in arrays.npz
    assert (big.shape, big.dtype, big.size) == ([N_BIG], "float32", 4 * N_BIG + 128)
    assert big.sha256 is not None and small.model_dump() == {"shape": [3, 5], "dtype": "float64"}
    return tag


WRITER = inspect.getsource(meta_for) + textwrap.dedent('''
    import sys
    import numpy as np
    from repro.record import write_record
    directory, tag, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    arrays = {"params/big/w": np.full(n, tag, np.float32),
              "params/big/v": np.full(n, -tag, np.float32),
              "params/small/b": np.full((3, 5), tag, np.float64)}
    print("ready", flush=True)
    write_record(directory, meta_for(tag), arrays)
    print("done", flush=True)
''')


def _start_writer(directory: Path, tag: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(directory), str(tag), str(N_BIG)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


@pytest.mark.slow
def test_write_record_killed_at_random_moments_leaves_old_or_new(tmp_path):
    directory = tmp_path / "records" / "big" / "cpu"
    write_record(directory, meta_for(0), arrays_for(0))
    assert check_complete(directory, {0}) == 0
    # how long one write by a writer process takes here, as seen from this process
    proc = _start_writer(directory, 1)
    t0 = time.perf_counter()
    assert proc.stdout.readline().strip() == "done"
    window = time.perf_counter() - t0
    proc.wait()
    proc.stdout.close()
    current = check_complete(directory, {1})

    rng = random.Random(1234)
    finished, killed, leftovers = 0, 0, 0
    for tag in range(2, 22):
        proc = _start_writer(directory, tag)
        time.sleep(rng.uniform(0, window))
        proc.send_signal(signal.SIGKILL)
        done = "done" in proc.stdout.read()
        proc.wait()
        proc.stdout.close()
        finished, killed = finished + done, killed + (not done)
        leftovers += len(list(directory.parent.glob(".cpu.*")))
        current = check_complete(directory, {current, tag})  # the old or the new, complete
        if done:
            assert current == tag
    assert killed >= 3, (killed, finished, window)  # the kills did land inside writes

    # staging directories of killed writers do not break the next write, which removes them
    write_record(directory, meta_for(99), arrays_for(99))
    assert check_complete(directory, {99}) == 99
    assert [p.name for p in directory.parent.iterdir()] == ["cpu"]


def test_reader_recovers_the_old_record_between_two_renames(tmp_path):
    """The fallback path (no renameat2): a writer killed between `rename(dir, .old)` and
    `rename(staging, dir)` leaves no record dir; readers take the .old one."""
    directory = tmp_path / "r" / "cpu"
    write_record(directory, meta_for(1), arrays_for(1))
    old = directory.parent / ".cpu.old-4242"
    os.rename(directory, old)
    (directory.parent / ".cpu.new-abc").mkdir()  # a half-written staging dir
    (directory.parent / ".cpu.new-abc" / "arrays.npz").write_bytes(b"PK\x03\x04 half")
    assert check_complete(directory, {1}) == 1
    write_record(directory, meta_for(2), arrays_for(2))
    assert check_complete(directory, {2}) == 2
    write_record(directory, meta_for(3), arrays_for(3))
    assert check_complete(directory, {3}) == 3
    assert [p.name for p in directory.parent.iterdir()] == ["cpu"]


# --- the command line, on a real project ---------------------------------------------------

@pytest.fixture
def recorded(recorded_template, tmp_path) -> Project:
    """A private copy of the recorded project (same commits, same record)."""
    dst = tmp_path / "proj"
    shutil.copytree(recorded_template.root, dst, symlinks=True)
    return Project(dst)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
def test_repro_record_killed_mid_run_keeps_the_previous_record(recorded, tmp_path):
    before = {f: (recorded.record_dir / f).read_bytes() for f in ("record.json", "arrays.npz")}
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "repro.cli", "record", "specs/tiny.yaml"],
                            cwd=recorded.root, env={**os.environ, "TMPDIR": str(tmp)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    runner = []
    try:
        deadline = time.monotonic() + 60
        while not runner and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
            runner = runner_children(proc.pid)  # the training child (not a git it ran)
        assert runner and proc.poll() is None, "repro record did not start its training child"
        time.sleep(0.6)  # into the child's run (jax import, compile, training)
        assert proc.poll() is None and _alive(runner[0]), "the run ended before the kill"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        for pid in [proc.pid, *runner]:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # the record was never replaced: byte for byte the previous one
    after = {f: (recorded.record_dir / f).read_bytes() for f in ("record.json", "arrays.npz")}
    assert after == before
    read_record(recorded.record_dir)
    proc = recorded.repro("verify", "specs/tiny.yaml", check_rc=0)
    assert "PASS tiny [cpu] bitwise identical" in proc.stdout


def _truncate(p: Path):
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


def _flip(p: Path):
    data = bytearray(p.read_bytes())
    data[len(data) // 3] ^= 0x40
    p.write_bytes(bytes(data))


def _garbage(p: Path):
    p.write_bytes(os.urandom(4096))


def _delete(p: Path):
    p.unlink()


def _bad_json(p: Path):
    p.write_text(p.read_text()[:-40])


def _wrong_format(p: Path):
    meta = json.loads(p.read_text())
    meta["format"] = 99
    p.write_text(json.dumps(meta))


DAMAGE = {  # name: (file, how, what the message says, platform known before training)
    "truncated-npz": ("arrays.npz", _truncate, "is corrupted or truncated", True),
    "flipped-byte-npz": ("arrays.npz", _flip, "is corrupted or truncated", False),
    "garbage-npz": ("arrays.npz", _garbage, "is corrupted or truncated", True),
    "deleted-npz": ("arrays.npz", _delete, "is missing", True),
    "bad-json": ("record.json", _bad_json, "is corrupted", True),
    "wrong-format": ("record.json", _wrong_format, "is not a repro record of format 1 or 2 "
                     "(found format 99)", True),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_record_is_an_error_naming_the_file(recorded, case):
    name, damage, message, early = DAMAGE[case]
    path = recorded.record_dir / name
    damage(path)
    with pytest.raises(RecordError, match=str(path).replace(".", r"\.")):
        read_record(recorded.record_dir)
    if not early:  # `platform: any`: the record is found (and checked) only after training
        recorded.spec.write_text(recorded.spec.read_text() + "environment: {platform: any}\n")
    proc = recorded.repro("verify", "specs/tiny.yaml", check_rc=2)
    out = proc.stdout + proc.stderr
    assert f"{path} {message}" in out, out
    assert "ERROR tiny" in out
    assert "PASS" not in out and "Traceback" not in out


@pytest.mark.slow
def test_repro_diff_of_two_records(recorded):
    a = recorded.record_dir
    recorded.edit_spec("seeds: {params: 0}", "seeds: {params: 3}")
    recorded.repro("record", "specs/tiny.yaml", "--records", "alt", check_rc=0)
    b = recorded.root / "alt" / "tiny" / "cpu"
    read_record(b)

    proc = recorded.repro("diff", str(a), str(b), check_rc=1)
    for text in ("FAIL tiny [cpu]", "quantity", "first step", "max abs err", "metric loss",
                 "weights hidden/w", "seeds.params: 0 -> 3"):
        assert text in proc.stdout, text
    assert "Traceback" not in proc.stdout + proc.stderr

    proc = recorded.repro("diff", str(a), str(a / "record.json"), check_rc=0)
    assert "PASS tiny [cpu] bitwise identical" in proc.stdout

    proc = recorded.repro("diff", str(a), str(recorded.root / "nowhere" / "cpu"), check_rc=2)
    assert "no recorded version at" in proc.stdout + proc.stderr
