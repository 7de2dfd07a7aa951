"""Check jax autodiff against float64 central finite differences, element by element.

`check_gradients(fn, *args)` differentiates a scalar `fn` with respect to every floating-point
array leaf of `args` with jax (reverse mode ``"rev"``, forward mode ``"fwd"``, or both) and
compares each element with a central finite difference of `fn` evaluated in float64, whatever the
dtype of the inputs. On a mismatch it raises `GradientMismatch` (an `AssertionError`, so pytest
shows it as a test failure) naming the leaf as ``args[0]['layer']['w']``, the worst element's
index, both values and the relative error.

Which leaves are checked
    Numpy / jax arrays (0-d included) of a real floating dtype. Integer and boolean arrays (labels,
    masks, indices) and non-array leaves (Python numbers, strings) are held constant and listed in
    `GradCheckResult.skipped` with the reason. Complex leaves raise `TypeError`.

How the numbers are made
    * `fn` is traced with ``jax.jit``: the checked leaves and the other array leaves become
      arguments, non-array leaves are baked in as constants. So, as under ``jax.grad``, `fn`
      cannot branch in Python on array values. The jitted programs are cached per (fn, tree
      structure, leaf roles, non-array leaf values) and jit compiles once per shape and dtype:
      checking the same `fn` again on arrays of the same shapes compiles nothing.
    * analytic: ``jax.grad`` (rev) or ``jax.jacfwd`` (fwd) of `fn` at the dtype of the inputs.
      Float64 leaves are differentiated under a local ``jax.enable_x64(True)`` so jax does not
      silently cast them to float32; the global ``jax_enable_x64`` flag is never changed.
    * numeric: under a local ``jax.enable_x64(True)``, each differentiable leaf is cast to float64
      and every element x_i is moved by ``h_i = eps * max(1, |x_i|)`` both ways:
      ``(f(x + h e_i) - f(x - h e_i)) / ((x_i + h_i) - (x_i - h_i))`` (the denominator is the step
      actually representable in float64). `fn` is evaluated 2 N times for N elements: one
      element at a time for leaves of up to 512 elements, in vmapped chunks for larger ones.
    * order 2 checks order 1 first, then Hessian-vector products H v along 2 fixed pseudo-random
      unit directions v (seeded, so a failure reproduces): analytic H v is reverse-over-reverse
      (rev) or forward-over-forward (fwd); numeric H v is the central difference of the mode's
      float64 first derivative (checked by order 1), ``(g(x + h v) - g(x - h v)) / 2h`` with
      ``h = eps * max(1, max |x|)``. A wrong second derivative anywhere changes H v for almost
      every direction, so two directions find it at the cost of 4 gradient evaluations
      instead of a full Hessian.

Defaults and why
    ``eps = 1e-5`` for every input dtype, because the differences are always taken in float64:
    the central difference has truncation error ~ h^2 |f'''| / 6 and rounding error
    ~ 1e-16 |f| / h; h ~ 1e-5 balances them near the cube root of float64 machine epsilon
    (6e-6), giving ~1e-10 relative accuracy, far below every tolerance below.

    Pass/fail per element: ``|analytic - numeric| <= atol + rtol * |numeric|``, with rtol and
    atol from the dtype of the leaf (the analytic gradient is only as precise as the dtype it is
    computed in). The default atol is multiplied by the gradient's scale ``max(1, G)``, G the
    largest |numeric| element over all leaves (for order 2, of H v): the float error of an
    analytic gradient element is a few ulps of the terms summed into it, which scale with the
    gradient, not with 1; an atol you pass is used as given.

    ========  =====  =====  =============================================================
    dtype     rtol   atol   reason
    ========  =====  =====  =============================================================
    float64   1e-6   1e-8   ~1e4 x the finite-difference error; a 1e-4 relative bug fails
    float32   1e-3   1e-5   ~1e4 ulps of float32 accumulation; a 1 % bug still fails
    float16   2e-2   2e-2   ~20 ulps; only gross (sign, factor) bugs are detectable
    bfloat16  1e-1   1e-1   ~13 ulps; likewise
    ========  =====  =====  =============================================================

    Finite differences straddle kinks (relu at 0, abs, max): keep inputs a few eps away from
    them, or expect a mismatch there that is the difference's fault, not jax's.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import DTypeLike

__all__ = ["check_gradients", "GradientMismatch", "LeafMismatch", "GradCheckResult",
           "DEFAULT_EPS", "default_tolerances"]

MODES = ("rev", "fwd")
DEFAULT_EPS = 1e-5
_TOLERANCES = {"float64": (1e-6, 1e-8), "float32": (1e-3, 1e-5), "float16": (2e-2, 2e-2),
               "bfloat16": (1e-1, 1e-1)}
_HVP_DIRECTIONS = 2
_LOOP_MAX = 512              # leaves up to this many elements: a Python loop over fn
_CHUNK_ELEMENTS = 1 << 22    # larger leaves: vmapped chunks of at most this many floats


def default_tolerances(dtype: DTypeLike) -> tuple[float, float]:
    """(rtol, atol) used for a leaf of `dtype` when none are given (see the module docstring)."""
    return _TOLERANCES.get(np.dtype(dtype).name, _TOLERANCES["float32"])


@dataclasses.dataclass(frozen=True)
class LeafMismatch:
    """The worst element of one leaf that failed: where, both values and the errors."""
    path: str
    index: tuple[int, ...]
    analytic: float
    numeric: float
    abs_err: float
    rel_err: float
    rtol: float
    atol: float
    order: int
    mode: str
    direction: int | None = None   # order 2: which Hessian-vector direction

    def describe(self) -> str:
        where = f"{self.path}, element {self.index}"
        what = f"order {self.order}, mode {self.mode!r}"
        if self.order == 2:
            what += f", Hessian-vector product along direction {self.direction}"
        return (f"{where} ({what}): analytic {self.analytic:.10g} vs numeric {self.numeric:.10g}, "
                f"|diff| {self.abs_err:.3g}, relative error {self.rel_err:.3g} "
                f"(allowed |diff| <= {self.atol:.3g} + {self.rtol:.3g} * |numeric|)")


class GradientMismatch(AssertionError):
    """jax's gradient of `fn` disagrees with float64 finite differences.

    The attributes describe the worst failure (largest |diff| / allowed): `path`, `index`,
    `analytic`, `numeric`, `abs_err`, `rel_err`, `order`, `mode`; `failures` lists the worst
    element of every failing leaf, worst first.
    """

    path: str
    index: tuple[int, ...]
    analytic: float
    numeric: float
    abs_err: float
    rel_err: float
    order: int
    mode: str

    def __init__(self, failures: list[LeafMismatch]) -> None:
        self.failures = failures
        worst = failures[0]
        for name in ("path", "index", "analytic", "numeric", "abs_err", "rel_err", "order",
                     "mode"):
            setattr(self, name, getattr(worst, name))
        lines = [f"jax gradient disagrees with float64 central finite differences at "
                 f"{worst.describe()}"]
        lines += [f"also failing: {f.describe()}" for f in failures[1:]]
        lines.append("If fn has a kink (relu, abs, max) within eps of this point the finite "
                     "difference is at fault; otherwise look for a wrong custom_vjp/custom_jvp "
                     "rule, a misplaced stop_gradient or a dtype cast in fn.")
        super().__init__("\n".join(lines))


@dataclasses.dataclass(frozen=True)
class GradCheckResult:
    """What a passing check covered: per checked leaf path, the worst relative error seen
    (over orders and modes); per skipped leaf path, why it was held constant."""
    max_rel_err: dict[str, float]
    skipped: dict[str, str]


def check_gradients(fn: Callable[..., Any], *args: Any, order: int = 1,
                    modes: str | Sequence[str] = ("rev",), eps: float | None = None,
                    rtol: float | None = None, atol: float | None = None) -> GradCheckResult:
    """Assert that jax's derivatives of scalar `fn(*args)` match float64 finite differences.

    Args:
      fn: a function of `args` returning a real scalar (shape ``()``). It must be traceable by
        jax (it is differentiated); jit it for speed, it is called 2 * N times for N elements.
      *args: pytrees (dicts, lists, tuples, ...) whose floating-point array leaves are checked;
        other leaves are held constant (see the module docstring).
      order: 1 checks first derivatives; 2 checks them and then Hessian-vector products.
      modes: ``"rev"`` (jax.grad / vjp), ``"fwd"`` (jax.jacfwd / jvp), or both.
      eps: relative finite-difference step; default `DEFAULT_EPS` (1e-5).
      rtol, atol: pass/fail per element is ``|analytic - numeric| <= atol + rtol * |numeric|``;
        defaults depend on each leaf's dtype (`default_tolerances`).

    Returns:
      a `GradCheckResult` (which leaves were checked, their worst relative error, and which
      were skipped and why).

    Raises:
      GradientMismatch: an element disagrees; the message names leaf path, index and values.
      ValueError: fn's output is not a scalar or not finite, no leaf is differentiable, or an
        option is out of range.
      TypeError: fn's output is not a real float, a leaf is complex, or fn returns a lower
        precision than float64 for float64 inputs (the differences would not be float64).
    """
    if order not in (1, 2):
        raise ValueError(f"order must be 1 or 2, got {order!r}")
    modes = (modes,) if isinstance(modes, str) else tuple(modes)
    if not modes or any(m not in MODES for m in modes):
        raise ValueError(f"modes must be a non-empty subset of {MODES}, got {modes!r}")
    eps = DEFAULT_EPS if eps is None else float(eps)
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps!r}")
    if not args:
        raise TypeError("check_gradients(fn, *args) needs the arguments to differentiate")

    flat, treedef = jax.tree_util.tree_flatten_with_path(args)
    paths = ["args" + jax.tree_util.keystr(p) for p, _ in flat]
    leaves = [leaf for _, leaf in flat]
    diff, skipped = _differentiable(paths, leaves)
    if not diff:
        raise ValueError("check_gradients found no floating-point array leaf in args to "
                         f"differentiate (skipped: {skipped})")
    consts = tuple(i for i, leaf in enumerate(leaves) if i not in diff and _is_array(leaf))
    statics = tuple((i, type(leaf), leaf) for i, leaf in enumerate(leaves)
                    if i not in diff and not _is_array(leaf))
    prog = _programs(fn, treedef, tuple(diff), consts, statics)
    dtypes = [np.dtype(leaves[i].dtype) for i in diff]
    need_x64 = any(d == np.float64 for d in dtypes)
    at_input_dtype = (lambda: jax.enable_x64(True)) if need_x64 else contextlib.nullcontext
    x_in = tuple(leaves[i] for i in diff)
    c_in = tuple(leaves[i] for i in consts)

    with at_input_dtype():
        out = jax.eval_shape(prog.value, x_in, c_in)
    if getattr(out, "shape", None) != ():
        raise ValueError("check_gradients needs fn to return a scalar; it returned shape "
                         f"{getattr(out, 'shape', type(out).__name__)}. Reduce it first, e.g. "
                         "with jnp.sum or jnp.mean.")
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise TypeError(f"check_gradients needs fn to return a real float; it returned {out.dtype}")

    with jax.enable_x64(True):
        x64 = [np.asarray(x, np.float64) for x in x_in]
        xs64 = tuple(jnp.asarray(x) for x in x64)
        cs64 = tuple(jnp.asarray(c) for c in c_in)
        f0 = prog.value(xs64, cs64)
        if np.dtype(f0.dtype) != np.float64:
            raise TypeError(f"fn returned {f0.dtype} for float64 inputs, so its finite "
                            "differences cannot be taken in float64: remove fixed float32 casts "
                            "(astype / dtype=jnp.float32) from fn")
        f0 = float(f0)
        if not np.isfinite(f0):
            raise ValueError(f"fn(*args) is {f0}: gradients are not defined there")
        numeric = [_fd_leaf(prog, k, xs64, cs64, x64[k], eps) for k in range(len(diff))]

    failures, worst_rel = [], {paths[i]: 0.0 for i in diff}

    def compare(analytic, reference, o, mode, direction=None):
        scale = max([1.0] + [float(np.max(np.abs(r[np.isfinite(r)]), initial=0.0))
                             for r in map(np.asarray, reference)])
        for k, i in enumerate(diff):
            r, a = default_tolerances(dtypes[k])
            r = r if rtol is None else float(rtol)
            a = a * scale if atol is None else float(atol)
            bad, rel = _compare(paths[i], analytic[k], reference[k], r, a, o, mode, direction)
            worst_rel[paths[i]] = max(worst_rel[paths[i]], rel)
            if bad is not None:
                failures.append(bad)

    for mode in modes:
        with at_input_dtype():
            compare(prog.first(mode)(x_in, c_in), numeric, 1, mode)
    if order == 2 and not failures:
        rng = np.random.default_rng(0)
        h = eps * max(1.0, max(float(np.max(np.abs(x))) for x in x64))
        for direction in range(_HVP_DIRECTIONS):
            v = [rng.standard_normal(x.shape) for x in x64]
            norm = np.sqrt(sum(float(np.sum(t * t)) for t in v))
            v = [t / norm for t in v]
            for mode in modes:
                with jax.enable_x64(True):
                    gp = prog.first(mode)(tuple(x + h * t for x, t in zip(x64, v)), cs64)
                    gm = prog.first(mode)(tuple(x - h * t for x, t in zip(x64, v)), cs64)
                    ref = [(np.asarray(p) - np.asarray(m)) / (2 * h) for p, m in zip(gp, gm)]
                with at_input_dtype():
                    v_in = tuple(jnp.asarray(t, d) for t, d in zip(v, dtypes))
                    compare(prog.hvp(mode)(x_in, c_in, v_in), ref, 2, mode, direction)
    if failures:
        failures.sort(key=lambda f: -_excess(f))
        raise GradientMismatch(failures)
    return GradCheckResult(max_rel_err=worst_rel, skipped=skipped)


def _is_array(leaf) -> bool:
    return isinstance(leaf, (np.ndarray, np.generic, jax.Array))


class _Programs:
    """The jitted pieces of a check, as functions of (checked leaves, other array leaves);
    non-array leaves are baked in. Built once per (fn, tree structure, leaf roles) and cached,
    so jit compiles one executable per shape and dtype, not one per call."""

    def __init__(self, fn, treedef, diff, consts, statics):
        n = treedef.num_leaves

        def value(xs, cs):
            leaves = [None] * n
            for i, x in zip(diff, xs):
                leaves[i] = x
            for i, c in zip(consts, cs):
                leaves[i] = c
            for i, _, s in statics:
                leaves[i] = s
            return fn(*jax.tree_util.tree_unflatten(treedef, leaves))

        def hvp_rev(xs, cs, vs):      # reverse-over-reverse: grad of <grad f, v>
            def directional(xs):
                return sum(jnp.vdot(g, v) for g, v in zip(jax.grad(value)(xs, cs), vs))
            return jax.grad(directional)(xs)

        def hvp_fwd(xs, cs, vs):      # forward-over-forward: jvp of jacfwd along v
            return jax.jvp(lambda xs: jax.jacfwd(value)(xs, cs), (xs,), (vs,))[1]

        self.value = jax.jit(value)
        self._first = {"rev": jax.jit(jax.grad(value)), "fwd": jax.jit(jax.jacfwd(value))}
        self._hvp = {"rev": jax.jit(hvp_rev), "fwd": jax.jit(hvp_fwd)}
        self._value_along = {}

        def along(k):                 # f as a function of a batch of values of leaf k
            def f(xk, xs, cs):
                return value(xs[:k] + (xk,) + xs[k + 1:], cs)
            return jax.jit(jax.vmap(f, in_axes=(0, None, None)))
        self._along = along

    def first(self, mode):
        """(xs, cs) -> tuple of first derivatives w.r.t. each checked leaf."""
        return self._first[mode]

    def hvp(self, mode):
        """(xs, cs, vs) -> Hessian-vector product, rev-over-rev or fwd-over-fwd."""
        return self._hvp[mode]

    def value_along(self, k):
        if k not in self._value_along:
            self._value_along[k] = self._along(k)
        return self._value_along[k]


@functools.lru_cache(maxsize=64)
def _cached_programs(fn, treedef, diff, consts, statics):
    return _Programs(fn, treedef, diff, consts, statics)


def _programs(fn, treedef, diff, consts, statics):
    try:
        return _cached_programs(fn, treedef, diff, consts, statics)
    except TypeError:                 # an unhashable fn or non-array leaf: build afresh
        return _Programs(fn, treedef, diff, consts, statics)


def _differentiable(paths, leaves):
    diff, skipped = [], {}
    for i, (path, leaf) in enumerate(zip(paths, leaves)):
        if not isinstance(leaf, (np.ndarray, np.generic, jax.Array)):
            skipped[path] = (f"not an array ({type(leaf).__name__}): held constant; pass "
                             "np.asarray(...) to check it")
        elif jnp.issubdtype(leaf.dtype, jnp.complexfloating):
            raise TypeError(f"{path} is complex ({leaf.dtype}); check_gradients compares real "
                            "gradients: pass the real and imaginary parts as separate leaves")
        elif not jnp.issubdtype(leaf.dtype, jnp.floating):
            skipped[path] = f"{np.dtype(leaf.dtype).name} array: not differentiable, held constant"
        elif np.size(leaf) == 0:
            skipped[path] = "empty array: nothing to check"
        else:
            diff.append(i)
    return diff, skipped


def _fd_leaf(prog, k, xs, cs, x, eps):
    """Central differences of fn with respect to every element of checked leaf k (float64)."""
    flat = x.reshape(-1)
    h = eps * np.maximum(1.0, np.abs(flat))
    up, down = flat + h, flat - h
    n = flat.size
    if n <= _LOOP_MAX:
        outs = []
        for j in range(n):
            for moved in (up, down):
                y = flat.copy()
                y[j] = moved[j]
                outs.append(prog.value(xs[:k] + (y.reshape(x.shape),) + xs[k + 1:], cs))
        vals = np.asarray(jax.device_get(outs), np.float64).reshape(n, 2)
        fp, fm = vals[:, 0], vals[:, 1]
    else:
        batched = prog.value_along(k)
        chunk = max(1, min(n, _CHUNK_ELEMENTS // (2 * n)))
        fp, fm = np.empty(n), np.empty(n)
        for start in range(0, n, chunk):
            idx = np.arange(start, min(n, start + chunk))
            ys = np.repeat(flat[None], 2 * len(idx), axis=0)
            ys[np.arange(len(idx)), idx] = up[idx]
            ys[len(idx) + np.arange(len(idx)), idx] = down[idx]
            vals = np.asarray(batched(ys.reshape((-1,) + x.shape), xs, cs), np.float64)
            fp[idx], fm[idx] = vals[:len(idx)], vals[len(idx):]
    return ((fp - fm) / (up - down)).reshape(x.shape)


def _compare(path, analytic, numeric, rtol, atol, order, mode, direction):
    """(LeafMismatch or None, worst relative error) for one leaf."""
    a = np.asarray(analytic, np.float64)
    n = np.asarray(numeric, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        err = np.abs(a - n)
        rel = np.where(err == 0, 0.0, err / np.abs(n))
        excess = np.where(np.isnan(err), np.inf, err / (atol + rtol * np.abs(n)))
    worst_rel = float(np.nanmax(np.where(np.isnan(rel), np.inf, rel)))
    j = int(np.argmax(excess))
    if not excess.reshape(-1)[j] > 1.0:
        return None, worst_rel
    index = tuple(int(i) for i in np.unravel_index(j, a.shape))
    return LeafMismatch(path, index, float(a.reshape(-1)[j]), float(n.reshape(-1)[j]),
                        float(err.reshape(-1)[j]), float(rel.reshape(-1)[j]), rtol, atol,
                        order, mode, direction), worst_rel


def _excess(f: LeafMismatch) -> float:
    allowed = f.atol + f.rtol * abs(f.numeric)
    return float("inf") if np.isnan(f.abs_err) else f.abs_err / allowed
