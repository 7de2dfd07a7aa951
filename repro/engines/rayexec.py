"""`RayExecutor`: the Executor on a Ray cluster (`--engine ray`, docs/ray.md). The only module
that imports ray, and only when one is made.

Each item is a `SpecJob`; each becomes one Ray task that asks for the spec's resources
(`num_cpus` = environment.cpus, `num_gpus` = 1 for a GPU spec, one unit of each node kind
named). Nodes share no filesystem with this machine: before a task is submitted its spec's
project is packed into the store by hash (repro/engines/parcel.py); the task unpacks it into a private
directory on its node and runs the job there with the same backend, and the result (a Verdict)
comes back as the task's return value. While the parcels pack, a warm-up task (no CPU) starts a
worker on each node that can run a job, so the jobs find an idle one; each job leases a CPU slot
on its machine (cores no other task holds) for its run (docs/ray.md, "Speed"). As a command's
connection closes it leaves idle workers bound to no job on the nodes it used, which the next
command's job takes instead of starting its own (`leave_warm`; docs/ray.md, "Workers left warm").

Two kinds of failure are kept apart, as Kubernetes Indexed Jobs do: a worker process that dies
(killed, out of memory, its node lost) is an infrastructure failure, and Ray runs the task again
(`max_retries`); a failing verdict is a result, returned like a pass and never retried
(`retry_exceptions=False`: the pipeline turns every user error into a verdict). Ctrl-C cancels
every task not finished.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

from repro.backends.base import ChildOutcome
from repro.engines.executor import Batch, SpecJob, Work, run_spec_job
from repro.errors import NeedsDevice, ReproError, RunError

if TYPE_CHECKING:   # repro.engines.parcel (spec, store: pydantic, numpy) loads after the connect
    from repro.engines.parcel import Parcel

R = TypeVar("R")
RETRIES = 3          # tries after the first, for a worker that dies (never for a verdict)
WARM_WAIT_S = 30.0   # the longest a batch waits for its warm-up tasks before it sends its jobs
WARM_EARLY_NODES = 8   # nodes warmed as a new connection is made, before the jobs are known
KEEP_WARM_ENV = "REPRO_RAY_KEEP_WARM_S"   # seconds a worker left for the next audit is kept
KEEP_WARM_S = 600
KEEP_WARM_MOST = 16    # workers left on one node at most
PLACE_WAIT_S = 120.0   # the longest a multi-process spec waits for its placement group
PEER_GRACE_S = 30.0    # after process 0's verdict, the longest the others get to end
PEER_FAILED_S = 3.0    # after process 0's error, the time the others get to report their own


def _moved(value: str, there: str, here: str) -> str:
    return here + value[len(there):] if value.startswith(there) else value


@contextlib.contextmanager
def cpu_slot(n: int) -> Iterator[int | None]:
    """A CPU slot (repro.child.fingerprint.pick_cpus) whose `n` cores no other Ray task on this
    machine holds, kept while the job runs: Ray counts CPUs but does not say which cores, and
    two runs pinned by their pids' parity can share a core while another idles (half the speed;
    it was most of the bench's per-spec overhead). One lock file a core, under the temp dir (all
    workers of a machine see it); None (pinned by pid, as before) when every slot is taken."""
    import fcntl
    import tempfile

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    base = os.path.join(tempfile.gettempdir(), "repro-cpu-slots")
    try:
        os.makedirs(base, exist_ok=True)
    except OSError:   # no shared temp dir to lease from: pinned by pid, as before
        yield None
        return
    for slot in range(max(1, cores // max(1, n))):
        held = []
        try:
            for core in range(slot * n, slot * n + n):
                fd = os.open(os.path.join(base, f"core-{core}"), os.O_RDWR | os.O_CREAT, 0o666)
                held.append(fd)
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            for fd in held:
                os.close(fd)
            continue
        try:
            yield slot
        finally:
            for fd in held:
                os.close(fd)   # closing releases the lock
        return
    yield None


@dataclass(frozen=True)
class PeerResult:
    """What the task of process k > 0 of a multi-process run sends back: how its runner ended
    (None when it could not start: `error` says why) and the node it ran on."""

    process_id: int
    node_id: str
    outcome: ChildOutcome | None = None
    error: str = ""

    @property
    def failed(self) -> bool:
        return self.outcome is None or self.outcome.returncode != 0


def run_peer_parcel(parcel: Parcel, job: SpecJob[Any]) -> Any:
    """The task of process k > 0 of a multi-process run (job.options.placement), on its node:
    the project rebuilt from the store as for process 0, and only its runner run there."""
    return run_parcel(parcel, job, peer=True)


def node_address() -> str:
    """host:port for jax.distributed's coordinator, on the node this runs on (process 0's): its
    IP as Ray knows it and a port free there now."""
    import ray

    from repro.backends.local import free_port

    ip = ray.util.get_node_ip_address()
    return f"{ip}:{free_port(ip)}"


def run_parcel(parcel: Parcel, job: SpecJob[Any], peer: bool = False) -> Any:
    """The task, on a worker: rebuild the project from the store, run the job there, map the
    verdict's paths back to the origin's (so a report names the files the user has). `peer`:
    process k > 0 of a multi-process run: its run only (pipeline.run_peer), as a PeerResult."""
    _warmed()
    from repro.engines.parcel import StaleParcel, remove, unpack, workspace
    from repro.spec import load_spec
    from repro.store.remote import STORE_ENV, BlobMissing

    saved = os.environ.get(STORE_ENV)   # a store named by $REPRO_STORE here is named so there
    if parcel.store.source == f"${STORE_ENV}":
        os.environ[STORE_ENV] = parcel.store.url
    where = workspace()
    try:
        try:
            spec_file = unpack(parcel, where)
        except BlobMissing as exc:   # the driver's index was wrong: it lists and ships again
            return StaleParcel(str(exc))
        spec = load_spec(spec_file)
        records = where / parcel.records_rel if parcel.records_rel is not None else None
        options = replace(job.options, records_root=records, cpu_slot=None, echo=False)
        with cpu_slot(spec.environment.cpus) as slot:
            if peer:
                return _run_peer(spec, replace(options, cpu_slot=slot), str(where), parcel.origin,
                                 job.peer)
            result = job.run(spec, replace(options, cpu_slot=slot))
        return _back(result, str(where), parcel.origin)
    finally:
        remove(where)
        if saved is None:
            os.environ.pop(STORE_ENV, None)
        else:
            os.environ[STORE_ENV] = saved


def _run_peer(spec: Any, options: Any, there: str, here: str, peer: Any = None) -> PeerResult:
    import ray

    from repro.pipeline import run_peer

    node = ray.get_runtime_context().get_node_id()
    k = options.placement.process_id
    try:
        outcome = (peer or run_peer)(spec, options)   # a segment's peer: the same replay
    except ReproError as exc:
        return PeerResult(k, node, error=str(exc).replace(there, here))
    outcome.log_tail = [n.replace(there, here) for n in outcome.log_tail]
    return PeerResult(k, node, outcome)


def _back(result: Any, there: str, here: str) -> Any:
    """A job's result with the paths of the worker's copy (`there`) as the user's (`here`), so
    a report names the files the user has: a Verdict, a RunResult (a segment's run) or a
    ReproError (as a plain ReproError: a subclass's constructor need not survive pickling)."""
    from repro.result import RunResult
    from repro.verdict import Verdict

    if isinstance(result, Verdict):
        result.spec_path = _moved(result.spec_path, there, here)
        result.record_path = _moved(result.record_path, there, here)
        result.error = result.error.replace(there, here)
        result.error_detail = result.error_detail.replace(there, here)
        result.notes = [n.replace(there, here) for n in result.notes]
    elif isinstance(result, RunResult):
        out = result.outcome
        result.notes = [n.replace(there, here) for n in result.notes]
        out.notes = [n.replace(there, here) for n in out.notes]
        out.log_tail = [n.replace(there, here) for n in out.log_tail]
        out.killed_reason = out.killed_reason.replace(there, here)
    elif isinstance(result, ReproError):
        return ReproError(str(result).replace(there, here))
    return result


_warming: threading.Thread | None = None   # this worker's warm-up import, while it runs


def warm_up() -> int:
    """A task that starts a worker process of this driver's job on its node: sent to the nodes
    as the driver connects, so the jobs sent next reuse a ready worker instead of each starting
    one (docs/ray.md, "Speed"). It returns as soon as the worker runs it, leaving a thread to
    import what a job needs (repro's pipeline: ~0.4 s) while the driver sends the jobs."""
    global _warming
    if _warming is None and "repro.pipeline" not in sys.modules:
        _warming = threading.Thread(target=_import_pipeline, name="repro-warm-import", daemon=True)
        _warming.start()
    return os.getpid()


def _import_pipeline() -> None:
    import repro.pipeline  # noqa: F401
    import repro.verdict  # noqa: F401


def _warmed() -> None:
    """Wait for the warm-up's import before a job imports anything: two threads importing the
    same modules at once can see a partly initialised one (CPython accepts that to break a
    cycle); a failed warm-up import is raised again by the job's own import."""
    if _warming is not None:
        _warming.join()


def _cpus(job: SpecJob[Any]) -> int:
    """The CPUs a job's task asks for: the spec's, times the segments it runs side by side."""
    side_by_side = job.options.jobs if job.options.segments else 1   # its segments, on its node
    return job.spec.environment.cpus * side_by_side


def keep_warm_seconds() -> int:
    """$REPRO_RAY_KEEP_WARM_S (default 600; 0: leave none), checked as the executor is made."""
    raw = os.environ.get(KEEP_WARM_ENV, "").strip()
    if not raw:
        return KEEP_WARM_S
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise ReproError(f"${KEEP_WARM_ENV} must be a whole number of seconds (0: leave no worker "
                         f"warm), not {raw!r}")
    return value


# Ray's internal API (not a public one: it may change in any release) that `leave_warm` uses,
# and the Ray versions it was written and tested against (`ray==2.60.0`, pyproject's extra).
RAY_INTERNALS_TESTED = ("2.60",)


class RayInternalsChanged(ReproError):
    """The installed Ray lacks the internal calls repro uses to leave workers warm."""


@contextlib.contextmanager
def ray_internals(ray: Any) -> Iterator[Any]:
    """The one place repro touches Ray's private API: the raylet's `PrestartWorkers` gRPC call
    (`ray._private.grpc_utils`, `ray.core.generated`). Yields a function `prestart(address,
    count, keep_s)` that sends the call to the raylet at `address` and returns the call's
    future. Any ImportError or AttributeError — the installed Ray no longer has them, raised
    here or while the calls are made — becomes a RayInternalsChanged that names what failed,
    the installed Ray version, the versions this was written for and what to do."""
    version = str(getattr(ray, "__version__", "unknown"))

    def changed(exc: BaseException) -> RayInternalsChanged:
        tested = ", ".join(f"{v}.x" for v in RAY_INTERNALS_TESTED)
        if ray_version_tested(ray):
            what = (f"repro was tested with Ray {version}: report it (docs/ray.md), and set "
                    f"{KEEP_WARM_ENV}=0 meanwhile to leave no worker warm")
        else:
            what = (f"it was written for Ray {tested}: install that (pip install 'repro[ray]'), "
                    f"or set {KEEP_WARM_ENV}=0 to leave no worker warm (nothing else needs it)")
        return RayInternalsChanged(
            f"no Ray worker was left warm: Ray {version} lacks the internal PrestartWorkers call "
            f"as repro uses it ({type(exc).__name__}: {exc}); {what}")

    try:
        from ray._private.grpc_utils import init_grpc_channel
        from ray.core.generated import common_pb2, node_manager_pb2, node_manager_pb2_grpc
        python: Any = common_pb2.Language.PYTHON  # type: ignore[attr-defined]
        request_type: Any = node_manager_pb2.PrestartWorkersRequest  # type: ignore[attr-defined]
        stub_type: Any = node_manager_pb2_grpc.NodeManagerServiceStub
    except (ImportError, AttributeError) as exc:
        raise changed(exc) from None

    def prestart(address: str, count: int, keep_s: int) -> tuple[Any, Any]:
        channel = init_grpc_channel(address)
        request = request_type(language=python, keep_alive_duration_secs=keep_s, num_workers=count)
        return channel, stub_type(channel).PrestartWorkers.future(request, timeout=2.0)

    try:
        yield prestart
    except AttributeError as exc:
        raise changed(exc) from None


def ray_version_tested(ray: Any) -> bool:
    """Whether the installed Ray is one `ray_internals` was written for."""
    version = str(getattr(ray, "__version__", ""))
    return any(version == v or version.startswith(v + ".") for v in RAY_INTERNALS_TESTED)


def leave_warm(ray: Any, wanted: dict[str, int], keep_s: int) -> int:
    """Ask each node in `wanted` to start that many Python workers bound to no job, kept idle
    for at least `keep_s` seconds: the next driver's job (the next audit) takes them instead of
    starting its own, as the first job after a node starts takes the workers Ray prestarts then
    (docs/ray.md, "Workers left warm"). The raylet's PrestartWorkers call, over Ray's own channel
    (TLS and token auth as configured; `ray_internals`, the one use of Ray's private API); best
    effort: a node that refuses it is skipped. A Ray whose internals changed raises
    RayInternalsChanged (the caller says so in one line). Returns the number of workers asked
    for."""
    calls = []
    with ray_internals(ray) as prestart:
        for node in ray.nodes():
            count = min(wanted.get(node.get("NodeID", ""), 0), KEEP_WARM_MOST)
            if not node.get("Alive") or count < 1:
                continue
            try:
                channel, call = prestart(f"{node['NodeManagerAddress']}:{node['NodeManagerPort']}",
                                         count, keep_s)
                calls.append((channel, count, call))
            except AttributeError:
                raise
            except Exception as exc:   # noqa: BLE001 - an optimisation: never fail the audit for it
                logging.getLogger(__name__).debug("leaving workers warm on %s: %s", node.get("NodeID"), exc)
    asked = 0
    for channel, count, call in calls:
        try:
            call.result()
            asked += count
        except Exception as exc:   # noqa: BLE001
            logging.getLogger(__name__).debug("leaving workers warm: %s", exc)
        finally:
            channel.close()
    return asked


AUTH_ENV = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")


def _token_in_env() -> dict[str, str | None]:
    """Ray (2.60) turns token authentication on for a local cluster that `ray.init()` starts
    and, when no token is set anywhere, writes one to ~/.ray/auth_token — a file that then
    switches every later `ray start` on this machine to token authentication. Unless the user
    chose ($RAY_AUTH_MODE, $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH, or that file exists), the
    local cluster gets a fresh token in this process's environment only, which its processes
    inherit; no file is written (when ray was imported before, Ray's own default holds). Returns
    the variables as they were (`_restore_env`)."""
    import secrets
    from pathlib import Path

    saved = {k: os.environ.get(k) for k in AUTH_ENV}
    chosen = any(os.environ.get(k) for k in (*AUTH_ENV, "RAY_AUTH_TOKEN_PATH"))
    if not chosen and not (Path.home() / ".ray" / "auth_token").exists():
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    return saved


def _restore_env(saved: dict[str, str | None]) -> None:
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _fits(resources: dict[str, float], job: SpecJob[Any], kinds: Sequence[str]) -> bool:
    env = job.spec.environment
    return (resources.get("CPU", 0) >= env.cpus and all(resources.get(k, 0) >= 1 for k in kinds)
            and (env.platform != "gpu" or resources.get("GPU", 0) >= 1))


def _peer_failure(peer: PeerResult, count: int) -> RunError:
    """The error of a multi-process spec whose process k > 0 failed: who, where, its tail."""
    if peer.outcome is None:
        return RunError(f"process {peer.process_id} of {count} (node {peer.node_id}) could not "
                        f"run: {peer.error}")
    out = peer.outcome
    how = out.killed_reason or (f"ended when its process {peer.process_id} of {count} exited "
                                f"with code {out.returncode}")
    return RunError(f"the run {how}, on node {peer.node_id}; the last lines of its output are "
                    "below", detail="\n".join(out.log_tail[-20:]), killed_by=out.killed_by)


class RayExecutor:
    """Runs SpecJobs as Ray tasks on the cluster at `address` ("auto": the one this machine
    belongs to; "ray://HOST:PORT": a Ray client). `node_kinds`: custom resources a task must
    have one unit of (the kind of node it may run on)."""

    ships_jobs = True

    def __init__(self, address: str | None = "auto", node_kinds: Sequence[str] = (),
                 retries: int = RETRIES):
        self.keep_warm_s = keep_warm_seconds()
        # a local cluster may be started: its token goes in the environment before Ray loads
        # (Ray reads its auth settings as it is imported)
        local = not address and not os.environ.get("RAY_ADDRESS", "").strip()
        self._saved_env = _token_in_env() if local and "ray" not in sys.modules else {}
        try:
            import ray
        except ImportError:
            _restore_env(self._saved_env)
            raise ReproError("--engine ray needs ray: pip install 'repro[ray]'") from None
        self.ray: Any = ray
        self._connected_here = not ray.is_initialized()
        self.started_local = 0   # the CPUs of a cluster started for this executor (0: none)
        if self._connected_here:
            self._connect(address)
        else:
            _restore_env(self._saved_env)
        self.node_kinds = tuple(node_kinds)
        self.retries = retries
        self._wanted: dict[str, int] = {}   # node: workers this executor's batches could use at once
        self.slots = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self._task = ray.remote(run_parcel)
        self._peer = ray.remote(run_peer_parcel)
        self._address = ray.remote(node_address)
        self._warm = ray.remote(warm_up)
        # A new connection is a new Ray job, whose workers no node has started yet: start them
        # now, while the front end imports and loads the specs (their first map sends no more
        # to these nodes). A connection the caller made may have its workers already.
        self._early: dict[str, Any] = self._send_warm_ups(
            [n["NodeID"] for n in self._nodes(None, WARM_EARLY_NODES)]) if self._connected_here else {}

    def _connect(self, address: str | None) -> None:
        """Join the cluster at `address`; with none named (no `address`, no $RAY_ADDRESS) the
        one this machine belongs to, else — Ray's own convention for `ray.init()` — a local
        cluster started for this executor, stopped as it closes (`started_local`: its CPUs)."""
        quiet: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False,
                                 "configure_logging": False}
        named = address or os.environ.get("RAY_ADDRESS", "").strip()
        try:
            self.ray.init(address=address or "auto", **quiet)
            _restore_env(self._saved_env)   # joined: the cluster's own settings hold
            return
        except (ConnectionError, RuntimeError, ValueError) as exc:
            if named:
                raise ReproError(f"cannot connect to the Ray cluster at {named}: {exc}. Start "
                                 "one (`ray start --head`), name another with --address "
                                 "HOST:PORT | ray://HOST:PORT, or leave out --address (and "
                                 "$RAY_ADDRESS) to start a local one for the command") from None
        try:
            self.ray.init(address="local", include_dashboard=False, **quiet)
        except Exception as exc:   # noqa: BLE001 - whatever Ray raised, said plainly
            _restore_env(self._saved_env)
            raise ReproError(f"no Ray cluster runs on this machine and starting a local one "
                             f"failed: {type(exc).__name__}: {exc}. Start one (`ray start "
                             "--head`) or name one with --address HOST:PORT") from None
        self.started_local = max(1, int(self.ray.cluster_resources().get("CPU", 1)))

    def _nodes(self, jobs: Sequence[SpecJob[Any]] | None, most: int) -> list[dict[str, Any]]:
        """Up to `most` live nodes (ray.nodes() entries) that can run one of `jobs` (None: any
        job of one CPU) and have the node kinds asked for."""
        def fits(resources: dict[str, float]) -> bool:
            if jobs is None:
                return resources.get("CPU", 0) >= 1 and all(resources.get(k, 0) >= 1
                                                             for k in self.node_kinds)
            return any(_fits(resources, j, self.node_kinds) for j in jobs)
        return [n for n in self.ray.nodes() if n.get("Alive") and fits(n.get("Resources", {}))][:most]

    def _send_warm_ups(self, nodes: Sequence[str]) -> dict[str, Any]:
        """One warm-up task on each node: it holds no CPU, so it never delays a job; a job
        scheduled elsewhere starts its worker as it would have anyway."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        return {node: self._warm.options(num_cpus=0, max_retries=0, name="repro:warm-up",
                                         scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)
                                         ).remote() for node in nodes}

    def _warm_up(self, jobs: Sequence[SpecJob[Any]]) -> list[Any]:
        """Workers for a batch: one on each node that can run one of `jobs` (at most one node
        a job), less the nodes warmed when this executor connected (their refs are included).
        Notes how many workers to leave warm on each (close): as many as the batch's jobs could
        run there at once, filling these nodes in order, no more than there are jobs in all."""
        early, self._early = self._early, {}
        nodes = self._nodes(jobs, len(jobs))
        least, unplaced = min(_cpus(j) for j in jobs), len(jobs)
        for n in nodes:
            at_once = min(unplaced, int(n.get("Resources", {}).get("CPU", 0) // least))
            self._wanted[n["NodeID"]] = max(self._wanted.get(n["NodeID"], 0), at_once)
            unplaced -= at_once
        fresh = self._send_warm_ups([n["NodeID"] for n in nodes if n["NodeID"] not in early])
        return [*early.values(), *fresh.values()]

    def _options(self, job: SpecJob[Any]) -> dict[str, Any]:
        env = job.spec.environment
        return {"num_cpus": _cpus(job), "num_gpus": 1 if env.platform == "gpu" else 0,
                "resources": {k: 1 for k in self.node_kinds}, "max_retries": self.retries,
                "retry_exceptions": False, "name": f"repro:{job.spec.name}"}

    def map(self, work: Work[Any, R], items: Sequence[Any],
            on_done: Callable[[int, R], None] | None = None,
            on_start: Callable[[int], None] | None = None) -> Batch[R]:
        if work is not run_spec_job or not all(isinstance(j, SpecJob) for j in items):
            raise TypeError("RayExecutor runs SpecJobs with run_spec_job only: a job must say "
                            "which spec's project it needs shipped")
        from repro.engines.parcel import Listings, StaleParcel, pack

        jobs: list[SpecJob[R]] = list(items)
        batch: Batch[R] = Batch()
        refs: dict[Any, int] = {}
        listings = Listings()
        lock = threading.Lock()

        warm: list[Any] = []
        warm_lock = threading.Lock()
        warmed = threading.Event()
        stopping = threading.Event()

        def wait_warm() -> None:   # the first job packed waits for the warm-ups; the rest see it
            with warm_lock:
                deadline = time.monotonic() + WARM_WAIT_S
                while warm and not warmed.is_set() and not stopping.is_set() \
                        and time.monotonic() < deadline:
                    if not self.ray.wait(warm, num_returns=len(warm), timeout=0.5)[1]:
                        break
                warmed.set()

        gpu_nodes = any(n.get("Alive") and n.get("Resources", {}).get("GPU", 0) >= 1
                        for n in self.ray.nodes())
        parcels: dict[tuple[str, str, tuple[str, ...]], Parcel] = {}
        packing: dict[tuple[str, str, tuple[str, ...]], threading.Lock] = {}

        def key_of(job: SpecJob[Any]) -> tuple[str, str, tuple[str, ...]]:
            return str(job.spec.path), str(job.options.records_root), job.commits

        def parcel_of(job: SpecJob[Any]) -> Parcel:
            """Packed once for the jobs of a batch that ship the same project (a spec's
            segments): the same spec file, records and commits make the same parcel."""
            key = key_of(job)
            with lock:
                one = packing.setdefault(key, threading.Lock())
            with one:
                if key not in parcels:
                    parcels[key] = pack(job.spec, job.options.records_root, job.commits, listings)
                return parcels[key]

        def ship(index: int, again: bool = False) -> None:
            job = jobs[index]
            if job.spec.environment.platform == "gpu" and not gpu_nodes:   # it would wait forever
                result = job.failed(NeedsDevice(
                    f"spec {job.spec.name!r} needs a GPU (environment.platform: gpu), but no live "
                    "node of the Ray cluster has one (an autoscaler's GPU group scaled to zero "
                    "counts as none: start a GPU node first)"))
                with lock:
                    batch.results[index] = result
                return
            try:   # packed side by side; a blob two parcels share may be sent twice (same bytes)
                parcel = parcel_of(job)
            except ReproError as exc:
                result = job.failed(f"cannot ship the spec's project to the cluster: {exc}")
                with lock:
                    batch.results[index] = result
                return
            wait_warm()
            if job.spec.environment.processes > 1:   # one task a process, in a placement group
                if on_start and not again:
                    on_start(index)
                with lock:
                    spreading.add(index)
                spread = self._spread(job, parcel, stopping)
                with lock:
                    spreading.discard(index)
                    if spread is not None:
                        batch.results[index] = spread
                return
            with lock:
                if stopping.is_set():
                    return
                refs[self._task.options(**self._options(job)).remote(parcel, job)] = index
            if on_start and not again:
                on_start(index)

        shipped_again: set[int] = set()
        spreading: set[int] = set()   # multi-process specs running (their tasks: _spread's own)

        def ship_again(index: int) -> bool:
            """A worker missed a blob the index said the remote holds: forget the index, list
            the remote, pack and send the job once more (False: it was sent again already)."""
            job = jobs[index]
            if index in shipped_again:
                return False
            shipped_again.add(index)
            with lock:
                stale_parcel = parcels.pop(key_of(job), None)
            if stale_parcel is not None:
                listings.of(stale_parcel.store).forget()
            ship(index, again=True)
            return True

        reported: set[int] = set()
        pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="repro-ship")
        try:
            warm.extend(self._warm_up(jobs) if jobs else [])   # workers start while parcels pack
            for f in [pool.submit(ship, i) for i in range(len(jobs))]:
                f.result()
            pending = list(refs)
            while True:
                for index in sorted(set(batch.results) - reported):
                    reported.add(index)
                    if on_done:
                        on_done(index, batch.results[index])
                if not pending:
                    break
                done, pending = self.ray.wait(pending, num_returns=1, timeout=1.0)
                for ref in done:
                    index = refs[ref]
                    result = self._get(ref, jobs[index])
                    if isinstance(result, StaleParcel):
                        if ship_again(index):
                            pending.extend(r for r, i in refs.items() if i == index and r != ref)
                            continue
                        result = jobs[index].failed(f"cannot ship the spec's project to the "
                                                    f"cluster: {result.message}")
                    batch.results[index] = result
        except KeyboardInterrupt:
            batch.complete = False
            with lock:
                stopping.set()
                running = [r for r, i in refs.items() if i not in batch.results]
                spread = set(spreading)   # their tasks are cancelled by _spread as it sees `stopping`
            for ref in running + warm:
                self.ray.cancel(ref, force=True)
            batch.interrupted_running = {refs[r] for r in running} | spread
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return batch

    def _spread(self, job: SpecJob[R], parcel: Parcel, stopping: threading.Event) -> R | None:
        """A multi-process spec (environment.processes = P): P tasks in a placement group of P
        bundles, STRICT_SPREAD (one process a node) when P live nodes can hold a bundle, else
        PACK. Process 0's node gives the coordinator's address; process 0's task runs the job
        (its verdict is the result), the others `run_peer`. The first process to fail fails the
        spec with its own output tail, and the other tasks are cancelled (their workers killed,
        and so their runners). None when stopped (Ctrl-C)."""
        from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from repro.job import Placement
        from repro.verdict import Status, Verdict

        env, ray = job.spec.environment, self.ray
        count = env.processes
        if job.options.segments:   # a whole spec whose segments would replay on one worker
            return job.failed(f"environment.processes is {count}: `repro audit --segments "
                              "--engine ray` sends a spec as one task, and a multi-process spec's "
                              "segments are replayed by `repro verify --segments … --engine ray` "
                              "(each segment its processes' tasks); audit it whole, or verify "
                              "its segments so")
        bundle = {"CPU": float(env.cpus), **{k: 1.0 for k in self.node_kinds}}
        nodes = [n for n in ray.nodes() if n.get("Alive") and
                 all(n.get("Resources", {}).get(r, 0) >= v for r, v in bundle.items())]
        strategy = "STRICT_SPREAD" if len(nodes) >= count else "PACK"
        group = placement_group([dict(bundle) for _ in range(count)], strategy=strategy,
                                # unique: a spec's segments are placed side by side
                                name=f"repro:{job.spec.name}:{os.urandom(4).hex()}")
        tasks: dict[Any, int] = {}
        try:
            if not ray.wait([group.ready()], timeout=PLACE_WAIT_S)[0]:
                return job.failed(f"environment.processes is {count}: the Ray cluster could not "
                                  f"place {count} bundles of {bundle} ({strategy}) within "
                                  f"{PLACE_WAIT_S:g} s; it has {len(nodes)} live node(s) that "
                                  "hold one. Add nodes, or lower processes or cpus")
            at = [PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=k)
                  for k in range(count)]
            coordinator = ray.get(self._address.options(num_cpus=0, max_retries=0,
                                                        scheduling_strategy=at[0]).remote())
            placed = placement_group_table(group).get("bundles_to_node_id", {})

            def options(k: int) -> dict[str, Any]:
                return {"num_cpus": env.cpus, "resources": {n: 1 for n in self.node_kinds},
                        "max_retries": 0, "retry_exceptions": False, "scheduling_strategy": at[k],
                        "name": f"repro:{job.spec.name}:process-{k}"}

            def of(k: int) -> SpecJob[Any]:   # no confirm reruns: the other processes ran once
                return replace(job, options=replace(job.options, confirm=0,
                                                    placement=Placement(k, coordinator)))

            tasks[self._task.options(**options(0)).remote(parcel, of(0))] = 0
            for k in range(1, count):
                tasks[self._peer.options(**options(k)).remote(parcel, of(k))] = k
            pending, verdict, failure = list(tasks), None, None
            grace: float | None = None
            while pending and failure is None:
                if stopping.is_set():
                    return None
                if grace is not None and time.monotonic() > grace:
                    break
                done, pending = ray.wait(pending, num_returns=1, timeout=1.0)
                for ref in done:
                    if tasks[ref] == 0:
                        verdict = self._get(ref, job)
                        # process 0 failed: the others wait for it in vain, unless one of them
                        # failed first (process 0 then only saw its peer vanish): a moment for that
                        failed = isinstance(verdict, Verdict) and verdict.status == Status.ERROR
                        grace = time.monotonic() + (PEER_FAILED_S if failed else PEER_GRACE_S)
                        continue
                    try:
                        peer: PeerResult = ray.get(ref)
                    except self.ray.exceptions.RayError as exc:
                        failure = RunError(f"process {tasks[ref]} of {count} was lost on the Ray "
                                           f"cluster: {type(exc).__name__}: {exc}")
                        break
                    if peer.failed:
                        failure = _peer_failure(peer, count)
                        break
            if failure is not None:
                return job.failed(failure)
            if verdict is None:
                return job.failed(f"process 0 of {count} did not end within {PEER_GRACE_S:g} s of "
                                  "the others")
            if pending and not (isinstance(verdict, Verdict) and verdict.status == Status.ERROR):
                return job.failed(RunError(f"process {', '.join(str(tasks[r]) for r in pending)} "
                                           f"of {count} did not end within {PEER_GRACE_S:g} s of "
                                           "process 0's result; they were cancelled"))
            notes = getattr(verdict, "notes", None)
            if isinstance(notes, list):
                notes.append(f"{count} processes placed by Ray ({strategy}): " + ", ".join(
                    f"process {k} on node {placed.get(k, '?')}" for k in range(count)))
            return verdict
        finally:
            # Only the tasks whose result is not ready: a task's result can be ready before the
            # driver has taken its worker's reply, and a cancel in that moment crashes the driver
            # (Ray 2.60: "Tried to complete task that was not pending", ray-project/ray#54527).
            refs = list(tasks)
            for ref in ray.wait(refs, num_returns=len(refs), timeout=0)[1] if refs else ():
                self.ray.cancel(ref, force=True)
            remove_placement_group(group)

    def close(self) -> None:
        """Disconnect, if this executor connected (stopping the local cluster it started, if
        any): done here rather than by ray's own exit handler, which first sleeps 0.5 s for log
        lines this driver does not print (`log_to_driver=False`); a connection the caller made
        is the caller's."""
        if self._connected_here and self.ray.is_initialized():
            if self.keep_warm_s and self._wanted and not self.started_local and self._plain_job():
                try:
                    leave_warm(self.ray, self._wanted, self.keep_warm_s)
                except RayInternalsChanged as exc:   # best effort: said, never failing the command
                    print(f"repro: warning: {exc}", file=sys.stderr, flush=True)
            self.ray.shutdown()   # a local cluster started for this executor stops with it
            if self.started_local:
                _restore_env(self._saved_env)
        self._connected_here = False

    def _plain_job(self) -> bool:
        """Workers left warm are bound to no runtime env: only a driver connected directly
        (not through Ray Client, which may not reach the raylets) whose job has none could
        take them."""
        try:
            from ray.util.client import ray as client
            return not client.is_connected() and not self.ray.get_runtime_context().runtime_env
        except Exception:   # noqa: BLE001
            return False

    def _get(self, ref: Any, job: SpecJob[R]) -> R:
        """A task's result; `job.failed` when no try could finish (its worker died every time,
        or repro itself raised there)."""
        exceptions = self.ray.exceptions
        try:
            return self.ray.get(ref)
        except exceptions.WorkerCrashedError:
            return job.failed(f"the Ray worker running this spec died on each of "
                              f"{self.retries + 1} tries (infrastructure failure, retried)")
        except exceptions.RayTaskError as exc:
            return job.failed(f"the Ray task failed on its worker: {exc}")
        except exceptions.RayError as exc:
            return job.failed(f"the Ray task was lost: {type(exc).__name__}: {exc}")
