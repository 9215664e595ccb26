"""numpy kernels for every row of the op table.

Arithmetic runs under np.errstate(all="ignore") so results follow IEEE rules like
torch's (inf, nan) instead of warning. float16/bfloat16 inputs are computed in
float32 and rounded back once: numpy's half types would otherwise accumulate sums
and products in half precision, and bfloat16 arithmetic through ml_dtypes is slow.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import ml_dtypes
import numpy as np

from ...codec import WIRE_DTYPES
from . import _args
from ._erf import erfc
from ._output import new_output
from ._table import Kernel

KERNELS: dict[str, Kernel] = {}

_HALF = (np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16))
_FLOAT_KINDS = "fV"  # ml_dtypes.bfloat16 reports kind "V"
_SQRT1_2 = math.sqrt(0.5)


def _narrow(values: tuple[Any, ...]) -> np.dtype | None:
    """The half dtype to round results back to: set when every float input shares it."""
    floats: set[np.dtype] = {
        v.dtype for v in values if isinstance(v, np.ndarray) and v.dtype.kind in _FLOAT_KINDS
    }
    return floats.pop() if len(floats) == 1 and floats <= set(_HALF) else None


def _is_half(value: Any) -> bool:
    return isinstance(value, np.ndarray) and value.dtype in _HALF


def _widen(value: Any) -> Any:
    if isinstance(value, np.ndarray) and value.dtype in _HALF:
        return value.astype(np.float32)
    return value


def _kernel(name: str, *, wide: bool = True) -> Callable[[Kernel], Kernel]:
    """Register `fn` as the numpy kernel for table row `name`."""

    def register(fn: Kernel) -> Kernel:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            values = args + tuple(kwargs.values()) if wide else ()
            narrow = _narrow(values) if wide else None
            if narrow is not None or any(_is_half(v) for v in values):
                args = tuple(_widen(a) for a in args)
                kwargs = {k: _widen(v) for k, v in kwargs.items()}
            with np.errstate(all="ignore"):
                out = fn(*args, **kwargs)
            return out if narrow is None else np.asarray(out).astype(narrow)

        KERNELS[name] = run
        return fn

    return register


def _unary(name: str, ufunc: Any) -> None:
    def op(x: Any) -> Any:
        if isinstance(x, np.ndarray) and x.dtype.kind in "fc":  # result dtype == x.dtype
            return ufunc(x, out=new_output(x.shape, x.dtype))
        return ufunc(x)

    _kernel(name)(op)


def _binary(name: str, ufunc: Any) -> None:
    def op(a: Any, b: Any) -> Any:
        if isinstance(a, np.ndarray) and a.dtype.kind in "fc" and name != "matmul":
            dtype = np.result_type(a, b)
            if dtype == a.dtype:  # the common case; mixed promotions keep numpy's own path
                shape = np.broadcast_shapes(a.shape, np.shape(b))
                return ufunc(a, b, out=new_output(shape, dtype))
        return ufunc(a, b)

    _kernel(name)(op)


_kernel("identity", wide=False)(lambda x: x)
_BINARY: dict[str, Callable[[Any, Any], Any]] = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.true_divide,
    "matmul": np.matmul,
}  # fmt: skip
_UNARY: dict[str, Callable[[Any], Any]] = {
    "neg": np.negative, "tanh": np.tanh, "exp": np.exp, "log": np.log,
}  # fmt: skip
for _name, _binary_fn in _BINARY.items():
    _binary(_name, _binary_fn)
for _name, _unary_fn in _UNARY.items():
    _unary(_name, _unary_fn)


@_kernel("relu")
def _relu(x: Any) -> Any:
    return np.maximum(x, 0)


@_kernel("sigmoid")
def _sigmoid(x: Any) -> Any:
    e = np.exp(-np.abs(x))  # never overflows; both branches stay accurate
    return np.where(np.asarray(x) >= 0, 1 / (1 + e), e / (1 + e))


@_kernel("silu")
def _silu(x: Any) -> Any:
    return x * _sigmoid(x)


@_kernel("gelu")
def _gelu(x: Any) -> Any:
    # x * Phi(x) with Phi written via erfc: no cancellation in the left tail.
    x64 = np.asarray(x, dtype=np.float64)
    out = new_output(np.shape(x), np.asarray(x).dtype)
    np.copyto(out, 0.5 * x64 * erfc(-x64 * _SQRT1_2), casting="unsafe")
    return out


@_kernel("softmax")
def _softmax(x: Any, axis: Any = -1) -> Any:
    ax = _args.integer("axis", axis)
    e = np.exp(x - np.max(x, axis=ax, keepdims=True))
    return e / np.sum(e, axis=ax, keepdims=True)


@_kernel("linear")
def _linear(x: Any, weight: Any, bias: Any = None) -> Any:
    y = np.matmul(x, np.asarray(weight).T)
    return y if bias is None else y + bias


@_kernel("layer_norm")
def _layer_norm(
    x: Any, normalized_shape: Any = None, weight: Any = None, bias: Any = None, eps: Any = 1e-05
) -> Any:
    shape = _args.normalized_shape(np.shape(x), normalized_shape)
    for name, param in (("weight", weight), ("bias", bias)):
        if param is not None and np.shape(param) != shape:
            raise ValueError(f"{name} shape {list(np.shape(param))} != {list(shape)}")
    axes = tuple(range(-len(shape), 0))
    centred = x - np.mean(x, axis=axes, keepdims=True)
    var = np.mean(centred * centred, axis=axes, keepdims=True)
    y = centred / np.sqrt(var + eps)
    y = y if weight is None else y * weight
    return y if bias is None else y + bias


def _reduction(name: str, fn: Callable[..., Any]) -> None:
    def op(x: Any, axis: Any = None, keepdims: Any = False) -> Any:
        return fn(x, axis=_args.axis(axis), keepdims=bool(keepdims))

    _kernel(name)(op)


_REDUCTIONS: dict[str, Callable[..., Any]] = {"sum": np.sum, "mean": np.mean, "max": np.max}
for _name, _reduce_fn in _REDUCTIONS.items():
    _reduction(_name, _reduce_fn)


@_kernel("transpose", wide=False)
def _transpose(x: Any, axes: Any = None) -> Any:
    return np.transpose(x, _args.opt_ints("axes", axes))


@_kernel("permute", wide=False)
def _permute(x: Any, dims: Any) -> Any:
    return np.transpose(x, _args.ints("dims", dims))


@_kernel("reshape", wide=False)
def _reshape(x: Any, shape: Any) -> Any:
    return np.reshape(x, _args.ints("shape", shape))


@_kernel("cast", wide=False)
def _cast(x: Any, dtype: Any) -> Any:
    return np.asarray(x).astype(WIRE_DTYPES[_args.dtype_name(dtype)], copy=False)


@_kernel("concat", wide=False)
def _concat(tensors: Any, axis: Any = 0) -> Any:
    return np.concatenate(_args.tensor_list(tensors), axis=_args.integer("axis", axis))
