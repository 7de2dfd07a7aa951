"""`ctx.traced(fn)`: program fingerprints and op-level traces of a traced function (child side).

Runs inside the training process (numpy and jax only; docs/localisation.md). Per traced function
(named by `fn.__qualname__`, numbered in the order `ctx.traced` was called) it keeps:

- a *program fingerprint* per distinct input signature, taken on the first call with that
  signature: sha256 of the jaxpr text, the number of equations (nested ones counted), sha256 of
  the lowered (StableHLO) and of the compiled (HLO) text, and one short entry per equation
  (primitive, output shape, a hash of its parameters and literals, source line) to name the first
  difference when a program changes;
- an *op trace* on the traced steps: `fn`'s jaxpr evaluated equation by equation on that call's
  real inputs (one jitted program per signature that returns every equation's output), and
  per equation output its primitive, shape, dtype, a sha256 prefix of its bytes and the user's
  source line; the values of small outputs (a strided sample of large ones) are kept.

Step rule: the n-th call (counting from 0) of a traced function is its step n. The result a
traced function returns is always `fn`'s own result: the trace is extra work on the traced
steps, and on every other call the wrapper only checks the input signature and calls `fn`.
"""
from __future__ import annotations

import functools
import hashlib
import os
import re
from collections.abc import Callable
from typing import Any

import numpy as np

HASH_CHARS = 16            # sha256 prefix kept per op output
VALUE_LIMIT = 1024         # elements kept per op output (a strided sample of a larger one)
# Primitives whose inner jaxpr is followed equation by equation; every other higher-order
# primitive (scan, while, cond, ...) is evaluated as one op.
FOLLOWED = {"pjit": "jaxpr", "jit": "jaxpr", "closed_call": "call_jaxpr", "core_call": "call_jaxpr",
            "custom_jvp_call": "call_jaxpr", "custom_vjp_call": "call_jaxpr",
            "custom_vjp_call_jaxpr": "fun_jaxpr", "remat": "jaxpr", "checkpoint": "jaxpr"}
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
# Compiled HLO text carries each op's source file and line (metadata={...}): the path of the
# exported tree differs per commit, so it is dropped before hashing what the compiler produced.
_METADATA = re.compile(r",? ?metadata=\{[^{}]*\}")
_SOURCE_TABLES = ("FileNames", "FunctionNames", "FileLocations", "StackFrames")


class Tracer:
    """What the traced functions of one run recorded; `report()` goes into run.json, `values`
    into arrays.npz (keys `trace/<function index>/<step>/<op index>`)."""

    def __init__(self, tree: str, traced_step: Callable[[int], bool]):
        self.tree = os.path.realpath(tree)
        self._traced_step = traced_step
        self.functions: list[dict[str, Any]] = []
        self.sources: list[str] = []
        self._source_ids: dict[str, int] = {}
        self.values: dict[str, np.ndarray] = {}
        self._harness = os.path.dirname(os.path.abspath(__file__)) + os.sep
        self._interpreters: dict[Any, tuple[Any, list[Any], list[tuple[str, int]]]] = {}
        self._jaxprs: dict[Any, Any] = {}
        self._first_step = 0

    def start_at(self, step: int) -> None:
        """A run restored at `step` (segment replay): the next call of each traced function not
        yet called is step `step`, so traced steps keep their numbers."""
        self._first_step = step
        for entry in self.functions:
            if entry["calls"] == 0:
                entry["calls"] = step

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        index = len(self.functions)
        entry: dict[str, Any] = {"name": getattr(fn, "__qualname__", None) or repr(fn),
                                 "index": index, "calls": self._first_step, "programs": [], "steps": {}}
        self.functions.append(entry)
        seen: set[Any] = set()

        @functools.wraps(fn)
        def traced(*args: Any, **kwargs: Any) -> Any:
            call = entry["calls"]
            entry["calls"] = call + 1
            signature = _signature(args, kwargs)
            if signature not in seen:
                seen.add(signature)
                entry["programs"].append(self._fingerprint(fn, args, kwargs, signature, call,
                                                           index))
            if self._traced_step(call):
                entry["steps"][str(call)] = self._trace(fn, args, kwargs, index, call)
            return fn(*args, **kwargs)
        return traced

    def report(self) -> dict[str, Any]:
        return {"functions": self.functions, "sources": self.sources}

    # -- program fingerprint --------------------------------------------------------------------
    def _fingerprint(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                     signature: Any, call: int, index: int) -> dict[str, Any]:
        import jax

        closed = jax.make_jaxpr(fn)(*args, **kwargs)
        self._jaxprs[(index, signature)] = closed   # the op trace evaluates this same program
        ops: list[list[Any]] = []
        self._walk(closed.jaxpr, ops)
        jitted = fn if hasattr(fn, "lower") else jax.jit(fn)
        lowered = jitted.lower(*args, **kwargs)
        compiled = lowered.compile()
        out = {"inputs": _signature_text(signature), "first_call": call,
               "jaxpr_sha256": _sha(str(closed)), "eqns": len(ops),
               "hlo_sha256": _sha(lowered.as_text()),
               "compiled_sha256": _sha(_compiled_text(compiled.as_text() or "")),
               "ops": ops}
        shardings = _program_shardings(compiled)
        if shardings is not None:
            out["shardings"] = shardings
        return out

    def _walk(self, jaxpr: Any, ops: list[list[Any]]) -> None:
        """One entry per equation, nested equations included (in order, after their parent)."""
        from jax.extend import core as jcore

        for eqn in jaxpr.eqns:
            out = eqn.outvars[0].aval if eqn.outvars else None
            params = {k: v for k, v in eqn.params.items()
                      if not isinstance(v, (jcore.Jaxpr, jcore.ClosedJaxpr, tuple))
                      or (isinstance(v, tuple) and not any(isinstance(x, (jcore.Jaxpr, jcore.ClosedJaxpr))
                                                           for x in v))}
            literals = [str(v) for v in eqn.invars if isinstance(v, jcore.Literal)]
            detail = _ADDRESS.sub("", f"{sorted(params.items(), key=lambda kv: kv[0])!r} {literals} "
                                      f"{[str(v.aval) for v in eqn.invars]}")
            ops.append([eqn.primitive.name, _aval_text(out), _sha(detail)[:8], self._source(eqn)])
            for params_value in eqn.params.values():
                for sub in (params_value if isinstance(params_value, tuple) else (params_value,)):
                    if isinstance(sub, jcore.ClosedJaxpr):
                        self._walk(sub.jaxpr, ops)
                    elif isinstance(sub, jcore.Jaxpr):
                        self._walk(sub, ops)

    # -- op trace -------------------------------------------------------------------------------
    def _trace(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
               index: int, step: int) -> list[list[Any]]:
        """Every equation output of `fn` on this call's inputs, from one compiled program per
        input signature (compiled once, then cached like any jitted function): the interpreter
        below runs under `jax.jit` and returns each intermediate as an output."""
        import jax

        signature = (index, _signature(args, kwargs))
        if signature not in self._interpreters:
            closed = self._jaxprs.get(signature) or jax.make_jaxpr(fn)(*args, **kwargs)
            meta: list[tuple[str, int]] = []

            def all_outputs(consts: list[Any], flat: list[Any]) -> list[Any]:
                meta.clear()
                values: list[Any] = []
                self._eval(closed.jaxpr, consts, flat, meta, values)
                return values
            self._interpreters[signature] = (jax.jit(all_outputs), list(closed.consts), meta)
        program, consts, meta = self._interpreters[signature]
        values = program(consts, jax.tree_util.tree_leaves((args, kwargs)))
        prefix = f"trace/{index}/{step}"
        return [self._op(name, value, source, f"{prefix}/{i}")
                for i, ((name, source), value) in enumerate(zip(meta, values))]

    def _eval(self, jaxpr: Any, consts: list[Any], args: list[Any], meta: list[tuple[str, int]],
              values: list[Any]) -> list[Any]:
        """Evaluate `jaxpr` equation by equation (under jit: one program), following the
        primitives in FOLLOWED into their inner jaxprs; each output is appended to `values`,
        its primitive and source line to `meta`."""
        from jax.extend import core as jcore

        env: dict[Any, Any] = {}

        def read(v: Any) -> Any:
            return v.val if isinstance(v, jcore.Literal) else env[v]

        env.update(zip(jaxpr.constvars, consts))
        env.update(zip(jaxpr.invars, args))
        for eqn in jaxpr.eqns:
            invals = [read(v) for v in eqn.invars]
            inner = eqn.params.get(FOLLOWED.get(eqn.primitive.name, ""))
            if isinstance(inner, jcore.ClosedJaxpr):
                outs = self._eval(inner.jaxpr, list(inner.consts), invals, meta, values)
            elif isinstance(inner, jcore.Jaxpr):
                outs = self._eval(inner, [], invals, meta, values)
            else:
                params = eqn.primitive.get_bind_params(eqn.params)
                ans = eqn.primitive.bind(*invals, **params)
                outs = list(ans) if eqn.primitive.multiple_results else [ans]
                source = self._source(eqn)
                for out in outs:
                    meta.append((eqn.primitive.name, source))
                    values.append(out)
            env.update(zip(eqn.outvars, outs))
        return [read(v) for v in jaxpr.outvars]

    def _op(self, primitive: str, value: Any, source: int, key: str) -> list[Any]:
        arr = np.asarray(value)
        digest = hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()[:HASH_CHARS]
        kept = 0
        if arr.size and arr.dtype.kind in "biufc":
            flat = arr.reshape(-1)
            stride = -(-flat.size // VALUE_LIMIT)
            self.values[key] = flat[::stride].copy()
            kept = 1 if stride == 1 else stride
        return [primitive, f"{arr.dtype.name}{list(arr.shape)}", digest, source, kept]

    # -- source lines ---------------------------------------------------------------------------
    def _source(self, eqn: Any) -> int:
        """Index into `sources` of the equation's user line ("file:line in function", the file
        relative to the code tree); -1 when no frame outside jax and repro is known."""
        from jax._src import source_info_util

        frames = list(source_info_util.user_frames(eqn.source_info.traceback))
        frame = (next((f for f in frames if _inside(f.file_name, self.tree)), None)
                 or next((f for f in frames if not f.file_name.startswith(self._harness)), None))
        if frame is None:
            return -1
        name = frame.file_name
        if _inside(name, self.tree):
            name = os.path.relpath(os.path.realpath(name), self.tree)
        text = f"{name}:{frame.start_line} in {frame.function_name.rsplit('.', 1)[-1]}"
        if text not in self._source_ids:
            self._source_ids[text] = len(self.sources)
            self.sources.append(text)
        return self._source_ids[text]


def _signature(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    import jax

    leaves, tree = jax.tree_util.tree_flatten((args, kwargs))
    return tree, tuple((tuple(np.shape(x)), str(getattr(x, "dtype", type(x).__name__))) for x in leaves)


def _signature_text(signature: Any) -> str:
    return ", ".join(f"{d}{list(s)}" for s, d in signature[1])


def _aval_text(aval: Any) -> str:
    if aval is None:
        return ""
    dtype, shape = getattr(aval, "dtype", None), getattr(aval, "shape", None)
    return f"{getattr(dtype, 'name', dtype)}{list(shape)}" if shape is not None else str(aval)


def _compiled_text(text: str) -> str:
    """Compiled HLO text without where the ops came from: per-op metadata and the trailing
    FileNames/FunctionNames/FileLocations/StackFrames tables (paths of the exported tree)."""
    blocks = text.split("\n\n")   # the tables are blank-line separated blocks after the header
    kept = [b for b in blocks if b.lstrip("\n").split("\n", 1)[0] not in _SOURCE_TABLES]
    return _METADATA.sub("", "\n\n".join(kept))


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@functools.lru_cache(maxsize=1024)
def _inside(path: str, tree: str) -> bool:
    real = os.path.realpath(path)
    return real == tree or real.startswith(tree.rstrip(os.sep) + os.sep)


def _program_shardings(compiled: Any) -> list[str] | None:
    """The compiled program's input and output shardings, one "in <i>: P(...)" / "out <i>:
    P(...)" per leaf, when any spans more than one device (a resharded program is named even
    where its HLO hash alone would only say "changed"); None for a program on one device."""
    import jax

    from repro.child.sharding import describe

    def entries(tree: Any, tag: str) -> list[tuple[str, Any]]:
        leaves = jax.tree_util.tree_leaves(tree, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
        return [(f"{tag} {i}", s) for i, s in enumerate(leaves) if isinstance(s, jax.sharding.Sharding)]
    try:
        found = entries(compiled.input_shardings, "in") + entries(compiled.output_shardings, "out")
    except Exception:   # a backend that does not say: the HLO hash still holds the layout
        return None
    if not any(len(s.device_set) > 1 for _, s in found):
        return None

    def text(s: Any) -> str:
        if isinstance(s, jax.sharding.NamedSharding):
            spec = [list(e) if isinstance(e, tuple) else e for e in s.spec]
            while spec and spec[-1] is None:
                spec.pop()
            return describe(spec)
        return describe(None) if len(s.device_set) <= 1 else str(s)
    return [f"{where}: {text(s)}" for where, s in found]
