"""`--engine` to an Executor: the one place that knows every engine, so that
`executor.py` (the protocol and the local engine) imports no Ray."""
from __future__ import annotations

from collections.abc import Sequence

from repro.engines.executor import Executor, LocalExecutor


def make_executor(engine: str = "local", jobs: int = 1, address: str | None = None,
                  node_kinds: Sequence[str] = ()) -> Executor:
    """The executor a front end asked for (`--engine`, `-j`, `--address`, `--node-kind`):
    `LocalExecutor(jobs)`, or a `RayExecutor` (repro/engines/rayexec.py, which imports ray)."""
    if engine == "ray":
        from repro.engines.rayexec import RayExecutor
        return RayExecutor(address, node_kinds)
    if engine != "local":
        raise ValueError(f"engine must be 'local' or 'ray', not {engine!r}")
    return LocalExecutor(jobs)
