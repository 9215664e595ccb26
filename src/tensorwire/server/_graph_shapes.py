"""Shape rules for the built-in ops: a graph's shapes are checked before any node runs.

`infer(op, args, kwargs)` takes argument trees whose tensors are `Abstract` (a shape
and a wire dtype name) and returns the Abstract result, or None when the result
cannot be known without running (custom ops, Python lists as operands, dtype
promotions we do not model). A None result makes every later node that uses it
unknown too: those nodes are then checked only when they run. The rules are
conservative: they reject only what every backend would reject.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .ops import OpArgumentError, _args
from .ops._table import SIGNATURES


@dataclass(frozen=True)
class Abstract:
    """A tensor known only by its shape and wire dtype name (None: not inferred)."""

    shape: tuple[int, ...]
    dtype: str | None

    @property
    def ndim(self) -> int:
        return len(self.shape)


Rule = Callable[..., Abstract | None]
RULES: dict[str, Rule] = {}


def infer(op: str, args: list[Any], kwargs: dict[str, Any]) -> Abstract | None:
    """The result of a built-in op on abstract tensors; OpArgumentError if it cannot fit."""
    rule = RULES.get(op)
    if rule is None:
        return None
    bound = SIGNATURES[op].bind(*args, **kwargs)  # the registry has already checked binding
    bound.apply_defaults()
    try:
        return rule(**bound.arguments)
    except ValueError as exc:  # np.broadcast_shapes and friends
        raise OpArgumentError(str(exc)) from None


def _rule(*names: str) -> Callable[[Rule], Rule]:
    def register(fn: Rule) -> Rule:
        for name in names:
            RULES[name] = fn
        return fn

    return register


def _dims(value: Any) -> str:
    return str(list(value.shape))


@_rule("identity", "neg", "tanh", "exp", "log", "relu", "gelu", "silu", "sigmoid")
def _same(x: Any) -> Abstract | None:
    return x if isinstance(x, Abstract) else None


@_rule("add", "sub", "mul", "div")
def _binary(a: Any, b: Any) -> Abstract | None:
    tensors = [v for v in (a, b) if isinstance(v, Abstract)]
    others = [v for v in (a, b) if not isinstance(v, Abstract)]
    if not tensors or any(not isinstance(v, int | float | bool) for v in others):
        return None  # lists, complex scalars: leave it to the kernel
    shape = tuple(np.broadcast_shapes(*(t.shape for t in tensors)))
    dtypes = {t.dtype for t in tensors}
    dtype = dtypes.pop() if len(dtypes) == 1 else None
    if dtype is not None and not dtype.startswith(("float", "bfloat", "complex")):
        dtype = None  # integer promotion (and true division) differ between backends
    return Abstract(shape, dtype)


@_rule("softmax")
def _softmax(x: Any, axis: Any) -> Abstract | None:
    if not isinstance(x, Abstract):
        return None
    _axis(_args.integer("axis", axis), x.ndim)
    return x


@_rule("matmul")
def _matmul(a: Any, b: Any) -> Abstract | None:
    if not (isinstance(a, Abstract) and isinstance(b, Abstract)):
        return None
    if a.ndim == 0 or b.ndim == 0:
        raise OpArgumentError("matmul does not take 0-d operands")
    inner_b = b.shape[-2] if b.ndim >= 2 else b.shape[0]
    if a.shape[-1] != inner_b:
        raise OpArgumentError(
            f"shapes {_dims(a)} and {_dims(b)} do not fit a matrix product "
            f"({a.shape[-1]} != {inner_b})"
        )
    batch = tuple(np.broadcast_shapes(a.shape[:-2], b.shape[:-2]))
    rows = a.shape[-2:-1] if a.ndim >= 2 else ()
    cols = b.shape[-1:] if b.ndim >= 2 else ()
    return Abstract(batch + rows + cols, a.dtype if a.dtype == b.dtype else None)


@_rule("linear")
def _linear(x: Any, weight: Any, bias: Any) -> Abstract | None:
    if not (isinstance(x, Abstract) and isinstance(weight, Abstract)) or weight.ndim != 2:
        return None
    if x.ndim == 0 or x.shape[-1] != weight.shape[1]:
        raise OpArgumentError(
            f"x {_dims(x)} does not fit weight {_dims(weight)} (weight is [out, in])"
        )
    shape = x.shape[:-1] + weight.shape[:1]
    if isinstance(bias, Abstract) and tuple(np.broadcast_shapes(shape, bias.shape)) != shape:
        raise OpArgumentError(f"bias {_dims(bias)} does not broadcast to the result {list(shape)}")
    return Abstract(shape, x.dtype if x.dtype == weight.dtype else None)


@_rule("layer_norm")
def _layer_norm(x: Any, normalized_shape: Any, weight: Any, bias: Any, eps: Any) -> Any:
    if not isinstance(x, Abstract):
        return None
    shape = _args.normalized_shape(x.shape, normalized_shape)
    for name, v in (("weight", weight), ("bias", bias)):
        if isinstance(v, Abstract) and v.shape != shape:
            raise OpArgumentError(f"{name} {_dims(v)} differs from normalized_shape {list(shape)}")
    return x


@_rule("sum", "mean", "max")
def _reduction(x: Any, axis: Any, keepdims: Any) -> Abstract | None:
    if not isinstance(x, Abstract):
        return None
    ax = _args.axis(axis)
    axes = range(x.ndim) if ax is None else [_axis(a, x.ndim) for a in _as_tuple(ax)]
    if len(set(axes)) != len(axes):
        raise OpArgumentError(f"axis {axis!r} repeats an axis")
    keep = bool(keepdims)
    shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape) if keep or i not in axes)
    dtype = x.dtype if x.dtype is not None and x.dtype.startswith(("float", "bfloat")) else None
    return Abstract(shape, dtype)


@_rule("transpose")
def _transpose(x: Any, axes: Any) -> Abstract | None:
    if not isinstance(x, Abstract):
        return None
    dims = _args.opt_ints("axes", axes)
    return _permuted(x, tuple(reversed(range(x.ndim))) if dims is None else dims)


@_rule("permute")
def _permute(x: Any, dims: Any) -> Abstract | None:
    return _permuted(x, _args.ints("dims", dims)) if isinstance(x, Abstract) else None


@_rule("reshape")
def _reshape(x: Any, shape: Any) -> Abstract | None:
    if not isinstance(x, Abstract):
        return None
    dims = _args.ints("shape", shape)
    size, known = math.prod(x.shape), math.prod(d for d in dims if d != -1)
    free = dims.count(-1)
    if free > 1 or any(d < -1 for d in dims):
        raise OpArgumentError(f"cannot reshape to {list(dims)}")
    if free == 1 and known and size % known == 0:
        dims = tuple(size // known if d == -1 else d for d in dims)
    elif free or known != size:
        raise OpArgumentError(f"cannot reshape {_dims(x)} ({size} elements) to {list(dims)}")
    return Abstract(dims, x.dtype)


@_rule("cast")
def _cast(x: Any, dtype: Any) -> Abstract | None:
    name = _args.dtype_name(dtype)
    return Abstract(x.shape, name) if isinstance(x, Abstract) else None


@_rule("concat")
def _concat(tensors: Any, axis: Any) -> Abstract | None:
    parts = _args.tensor_list(tensors)
    if not all(isinstance(t, Abstract) for t in parts):
        return None
    first = parts[0]
    ax = _axis(_args.integer("axis", axis), first.ndim)
    for i, t in enumerate(parts[1:], 1):
        if t.ndim != first.ndim or any(
            d != e for k, (d, e) in enumerate(zip(t.shape, first.shape, strict=True)) if k != ax
        ):
            raise OpArgumentError(
                f"tensor {i} {_dims(t)} does not fit tensor 0 {_dims(first)} along axis {ax}"
            )
    shape = list(first.shape)
    shape[ax] = sum(t.shape[ax] for t in parts)
    dtypes = {t.dtype for t in parts}
    return Abstract(tuple(shape), dtypes.pop() if len(dtypes) == 1 else None)


def _as_tuple(value: int | tuple[int, ...]) -> tuple[int, ...]:
    return value if isinstance(value, tuple) else (value,)


def _axis(axis: int, ndim: int) -> int:
    if not -max(ndim, 1) <= axis < max(ndim, 1):
        raise OpArgumentError(f"axis {axis} is out of range for {ndim} dimensions")
    return axis % max(ndim, 1)


def _permuted(x: Abstract, dims: tuple[int, ...]) -> Abstract:
    if sorted(d % max(x.ndim, 1) for d in dims) != list(range(x.ndim)) or any(
        not -x.ndim <= d < x.ndim for d in dims
    ):
        raise OpArgumentError(f"axes {list(dims)} are not a permutation of {x.ndim} dimensions")
    return Abstract(tuple(x.shape[d] for d in dims), x.dtype)
