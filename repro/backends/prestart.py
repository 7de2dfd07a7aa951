"""A local run's child started ahead of its job, so its start overlaps the command's own.

`repro verify SPEC` spends ~0.4 s before its child exists (Python's start, repro's imports, the
pins, the record, the fail-fast expectations), then the child spends ~0.7 s importing jax. What
the child does before its import needs the spec's environment alone (`job.EarlyStart`), so
`ahead` starts it as soon as the spec is read: it pins its cores, applies environment.isa's
recipe, imports jax and waits on stdin for its job (repro/child/runner.py, `--early`). The
local backend `claim`s it for a job whose EarlyStart, interpreter and environment equal the
ones it was started with; any other job starts its own child as before. A child never claimed
(an error before the run, a run of another variation) is killed as the command ends (`discard`),
and one whose command died exits at EOF on stdin, or with it (PR_SET_PDEATHSIG).
"""
from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from repro.backends.base import harness_dir
from repro.job import EarlyStart, Job


@dataclass
class Early:
    start: EarlyStart
    python: tuple[str, ...]
    env: dict[str, str]                  # the child's environment, PYTHONPATH left out
    proc: subprocess.Popen[bytes]
    root: Path                           # its start's file and its harness directory
    cached: Path | None                  # the cache entry it was started from, if any

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


_EARLY: list[Early] = []


def ahead(spec_files: Sequence[Path], *, backend: str, engine: str, emulate_cpu: str | None,
          compile_cache: bool) -> None:
    """Start the child of the first run of the one spec named, when that run is a local one
    that can take it: one spec file, the local backend and engine, no emulated CPU, a
    `train(ctx)` entrypoint in one process, a CPU platform. Otherwise (or if the spec does not
    load: the command reports that) nothing happens.

    The start is read from the spec, or, before the spec's models are even imported, from the
    cache of the start a spec file with these exact bytes gave last time (`cache_dir()/early`);
    a stale or wrong entry costs nothing but the early child, which no job then claims, and is
    removed then (`claim`), so the next command reads the spec again."""
    if len(spec_files) != 1 or backend != "local" or engine != "local" or emulate_cpu:
        return
    try:
        text = spec_files[0].read_bytes()
    except OSError:   # a directory, a missing file: the command says so
        return
    cached = _cache_file(text)
    try:
        doc = json.loads(cached.read_text())
        start = EarlyStart(os.getpid(), int(doc["cpus"]), None, str(doc["isa"]),
                           tuple((str(k), str(v)) for k, v in doc["settings"]),
                           tuple(str(f) for f in doc["xla_flags"]))
    except (OSError, ValueError, KeyError, TypeError):
        found = _start_of(spec_files[0])
        if found is None:
            return
        with contextlib.suppress(OSError):
            from repro.ioutil import atomic_write_text
            cached.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(cached, json.dumps({"cpus": found.cpus, "isa": found.isa,
                                                  "settings": found.settings,
                                                  "xla_flags": found.xla_flags}))
        _spawn(found, compile_cache, None)
        return
    _spawn(start, compile_cache, cached)


def _start_of(spec_file: Path) -> EarlyStart | None:
    """The start the spec's first local run needs; None when it cannot be started early."""
    from repro.env.settings import child_isa, determinism_settings
    from repro.spec import load_spec

    try:
        spec = load_spec(spec_file)
    except Exception:   # noqa: BLE001 - said by the command, which loads it again
        return None
    environment = spec.environment
    if environment.processes > 1 or spec.code.command or environment.platform not in ("cpu", "any"):
        return None
    settings = determinism_settings(environment)
    return EarlyStart(os.getpid(), environment.cpus, None, child_isa(environment),
                      tuple(sorted(settings.items())), tuple(environment.xla_flags))


def _cache_file(spec_bytes: bytes) -> Path:
    import repro
    from repro.paths import cache_dir

    key = hashlib.sha256(repro.__version__.encode() + b"\0" + spec_bytes).hexdigest()[:32]
    return cache_dir() / "early" / f"{key}.json"


def _spawn(start: EarlyStart, compile_cache: bool, cached: Path | None) -> None:
    from repro.env.settings import child_environment, compile_cache_env
    from repro.paths import cache_dir

    root = Path(tempfile.mkdtemp(prefix="repro-early-"))
    start.write(root / "early.json")
    env, _ = child_environment(dict(start.settings), [str(harness_dir(root))])
    env.update(compile_cache_env(str(cache_dir() / "jax-compile") if compile_cache else None))
    python = (sys.executable,)
    proc = subprocess.Popen([*python, "-P", "-m", "repro.child.runner", "--early",
                             str(root / "early.json")], cwd=root, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    if not _EARLY:
        atexit.register(discard)
    _EARLY.append(Early(start, python, _without_path(env), proc, root, cached))


def claim(job: Job, python: Sequence[str], env: Mapping[str, str]) -> Early | None:
    """The early child started for exactly this job's start and environment, now the job's
    (handed over with `hand_over`); None when there is none."""
    start, bare = EarlyStart.of(job), _without_path(env)
    for early in _EARLY:
        if early.start == start and early.python == tuple(python) and early.env == bare and \
                early.proc.poll() is None:
            _EARLY.remove(early)
            return early
    for early in _EARLY:   # started from a cached start the run did not have: it is stale
        if early.cached is not None:
            early.cached.unlink(missing_ok=True)
    return None


def hand_over(early: Early, job_file: Path, out_dir: Path) -> None:
    """Give the waiting child its job. A child that died before it (a crash in its start) shows
    that as its exit status and output, as any child does."""
    assert early.proc.stdin is not None
    try:
        early.proc.stdin.write(f"{job_file}\t{out_dir}\n".encode())
        early.proc.stdin.close()
    except (BrokenPipeError, OSError):
        pass


def discard() -> None:
    """Kill every early child not claimed, and remove its directory."""
    while _EARLY:
        early = _EARLY.pop()
        try:
            os.killpg(early.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        early.proc.wait()
        for stream in (early.proc.stdin, early.proc.stdout):
            if stream is not None:
                stream.close()
        early.remove()


def _without_path(env: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k != "PYTHONPATH"}
