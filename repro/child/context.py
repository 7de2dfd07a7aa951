"""`Context`: everything a training function sees of repro (docs/context.md).

The runner builds one per run, inside the child process, after the determinism settings are in
place. The training function reads its seeds, data paths and config from it and reports metrics
and gradients through it; the runner then writes what was collected to the run directory.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from time import perf_counter
from typing import TYPE_CHECKING, Any

import numpy as np

from repro.child.treepath import numeric_leaves

if TYPE_CHECKING:
    import jax

    from repro.child.checkpoint import Checkpoints
    from repro.child.expect import ArrayExpectation, Expectation
    from repro.child.sharding import SpecJSON
    from repro.child.traced import Tracer


class Context:
    """What `train(ctx)` receives.

    Attributes:
      data: name -> absolute path of each pinned data entry, verified against its sha256 before
        the call.
      config: the spec's free-form `config` mapping.
      seeds: the spec's named integer seeds.
    """

    def __init__(self, *, seeds: Mapping[str, int], data: Mapping[str, str],
                 config: Mapping[str, Any], grad_steps: GradSchedule,
                 trace_steps: GradSchedule | None = None, tree: str = ".",
                 expect: Expectation | None = None, checkpoints: Checkpoints | None = None,
                 expect_arrays: ArrayExpectation | None = None, devices: int = 1,
                 mesh_axes: tuple[tuple[str, int], ...] = ()):
        self.seeds = dict(seeds)
        self.data = dict(data)
        self.config = dict(config)
        self._grad_steps = grad_steps
        self.metrics: dict[str, dict[str, Any]] = {}   # name -> {steps, values, dtype}
        self.grads: dict[int, dict[str, np.ndarray]] = {}
        # record key (grads/<step>/<path>) -> PartitionSpec of each sharded leaf kept
        self.shardings: dict[str, SpecJSON] = {}
        self._devices, self._mesh_axes = devices, tuple(mesh_axes)
        self._mesh: jax.sharding.Mesh | None = None
        self.nonfinite: list[tuple[str, int, float]] = []
        self._trace_steps = trace_steps if trace_steps is not None else grad_steps
        self._tree = tree
        self.tracer: Tracer | None = None   # made by the first ctx.traced call
        self._expect = expect               # fail-fast: the record's trajectories (repro/child/expect.py)
        self._expect_arrays = expect_arrays  # ... and its kept gradients and states
        self._checkpoints = checkpoints     # record.checkpoints and segment replay (checkpoint.py)
        if checkpoints is not None:
            checkpoints.on_restore = self._restored

    # -- randomness -----------------------------------------------------------------------------
    def seed(self, name: str) -> int:
        """The integer seed `seeds.<name>` (for numpy or Python generators)."""
        try:
            return int(self.seeds[name])
        except KeyError:
            raise KeyError(f"seed {name!r} is not in the spec's seeds "
                           f"(it has: {', '.join(sorted(self.seeds)) or 'none'}); add "
                           f"`seeds: {{{name}: 0}}` to the spec") from None

    def key(self, name: str) -> jax.Array:
        """A jax PRNG key (`jax.random.PRNGKey`, threefry2x32) made from `seeds.<name>`."""
        import jax

        return jax.random.PRNGKey(self.seed(name))

    # -- devices --------------------------------------------------------------------------------
    @property
    def mesh(self) -> jax.sharding.Mesh:
        """The `jax.sharding.Mesh` of `environment.mesh`: its axes in the spec's order over the
        first `environment.devices` devices sorted by id (the same layout in every run)."""
        if not self._mesh_axes:
            raise RuntimeError("ctx.mesh: the spec has no environment.mesh; add one, e.g. "
                               "`environment: {devices: 4, mesh: {data: 2, model: 2}}` "
                               "(docs/sharding.md)")
        if self._mesh is None:
            from repro.child.sharding import build_mesh

            self._mesh = build_mesh(self._devices, self._mesh_axes)
        return self._mesh

    @property
    def mesh_or_none(self) -> jax.sharding.Mesh | None:
        """ctx.mesh, or None for a spec without environment.mesh (restoring a state)."""
        return self.mesh if self._mesh_axes else None

    # -- reporting ------------------------------------------------------------------------------
    def log(self, step: int, **scalars: object) -> None:
        """Record scalar metrics at `step`. Values may be jax or numpy scalars or Python numbers.

        Each name keeps its own trajectory; steps must increase per name.
        """
        step = int(step)
        if self._checkpoints is not None and self._checkpoints.replaying:
            self._checkpoints.require_restore(f"ctx.log({step}, ...)")
        stop = None
        for name, value in scalars.items():
            arr = np.asarray(value)
            if arr.size != 1:
                raise ValueError(f"ctx.log({name}=...) at step {step}: expected a scalar, got an "
                                 f"array of shape {arr.shape}; log a reduction such as .mean()")
            arr = arr.reshape(())
            if not np.issubdtype(arr.dtype, np.number) and arr.dtype != np.bool_:
                raise TypeError(f"ctx.log({name}=...) at step {step}: {arr.dtype} is not numeric")
            series = self.metrics.setdefault(name, {"steps": [], "values": [],
                                                    "dtype": str(arr.dtype)})
            if series["steps"] and step <= series["steps"][-1]:
                raise ValueError(f"ctx.log({name}=...): step {step} does not follow step "
                                 f"{series['steps'][-1]}; steps must increase")
            fvalue = float(arr)
            if not math.isfinite(fvalue):
                self.nonfinite.append((name, step, fvalue))
            series["steps"].append(step)
            series["values"].append(fvalue)
            if self._expect is not None and stop is None:   # fail-fast (repro/child/expect.py)
                t0 = perf_counter()
                stop = self._expect.check(name, step, fvalue)
                self._expect.seconds += perf_counter() - t0
        if stop is not None:   # raised once the whole call is logged
            from repro.child.expect import Stopped
            raise Stopped(stop)

    def log_grads(self, step: int, grads: object) -> None:
        """Record a gradient pytree at `step`; kept only on the steps `record.grads` asks for."""
        step = int(step)
        if not self._grad_steps.keeps(step):
            return
        if step in self.grads:
            raise ValueError(f"ctx.log_grads: gradients for step {step} were already logged")
        self.grads[step] = dict(numeric_leaves(grads, f"ctx.log_grads at step {step}"))
        from repro.child.treepath import tree_specs
        self.shardings.update(tree_specs(grads, f"grads/{step}"))
        if self._expect_arrays is not None:   # fail-fast: kept, then checked against the record
            stop = self._expect_arrays.check("grad", step, self.grads[step])
            if stop is not None:
                from repro.child.expect import Stopped
                raise Stopped(stop)


    # -- checkpoints ----------------------------------------------------------------------------
    def restore(self, state: object) -> tuple[int, Any]:
        """`(0, state)` on a fresh run; `(k, the state after k steps)` when repro replays a
        segment from its checkpoint at k. `state` is the initial state: its structure (dicts,
        namedtuples, custom nodes) is what comes back, with the checkpoint's leaves."""
        if self._checkpoints is None:
            return 0, state
        return self._checkpoints.restore(state)

    def _restored(self, step: int) -> None:
        if self.tracer is not None:   # ctx.traced's n-th call is step n: it counts from `step`
            self.tracer.start_at(step)

    def checkpoint(self, step: int, state: object) -> None:
        """Offer the state after `step` steps (any pytree: params, optax state, a numpy
        Generator's `bit_generator.state`, counters). Kept on the steps `record.checkpoints`
        asks for; at the end of a replayed segment it is kept and the run ends there."""
        if self._checkpoints is not None:
            self._checkpoints.checkpoint(int(step), state)

    # -- programs -------------------------------------------------------------------------------
    def traced(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """`fn`, fingerprinted and traced op by op (docs/localisation.md). The returned function
        gives `fn`'s own results; its n-th call (from 0) is step n: on the steps `record.trace`
        names (default: the kept-gradient steps) `fn` is also evaluated equation by equation."""
        if not callable(fn):
            raise TypeError(f"ctx.traced expects a function, got {type(fn).__name__}")
        if self.tracer is None:
            from repro.child.traced import Tracer

            self.tracer = Tracer(self._tree, self._trace_steps.keeps)
            if self._checkpoints is not None and self._checkpoints.restored_at:
                self.tracer.start_at(self._checkpoints.restored_at)
        return self.tracer.wrap(fn)


class GradSchedule:
    """Which steps' gradients are kept: every N steps and/or an explicit list."""

    def __init__(self, every: int | None = None, steps: list[int] | None = None):
        self.every, self.steps = every, set(steps or ())

    def keeps(self, step: int) -> bool:
        return (self.every is not None and step % self.every == 0) or step in self.steps
