"""torch kernels for every row of the op table. Imported only by the torch backend."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from . import _args
from ._table import Kernel

KERNELS: dict[str, Kernel] = {}


def _kernel(name: str) -> Callable[[Kernel], Kernel]:
    def register(fn: Kernel) -> Kernel:
        KERNELS[name] = fn
        return fn

    return register


def _unary(name: str, fn: Callable[[Any], Any]) -> None:
    def op(x: Any) -> Any:
        return fn(x)

    KERNELS[name] = op


_kernel("identity")(lambda x: x)
# Operators rather than torch.add & co.: they accept a Python scalar on either side.
_kernel("add")(lambda a, b: a + b)
_kernel("sub")(lambda a, b: a - b)
_kernel("mul")(lambda a, b: a * b)
_kernel("div")(lambda a, b: a / b)


def _integer_on_cuda(t: Any) -> bool:
    # cuBLAS has no integer matrix products ("addmm_cuda not implemented for 'Long'"): those
    # run on the CPU and come back, exact, rather than failing or rounding through floats.
    return bool(t.is_cuda and not (t.is_floating_point() or t.is_complex()))


@_kernel("matmul")
def _matmul(a: Any, b: Any) -> Any:
    if _integer_on_cuda(a):
        return torch.matmul(a.cpu(), b.cpu()).to(a.device)
    return torch.matmul(a, b)


_UNARY: dict[str, Callable[[Any], Any]] = {
    "neg": torch.neg, "tanh": torch.tanh, "exp": torch.exp, "log": torch.log,
    "relu": torch.relu, "sigmoid": torch.sigmoid, "silu": F.silu,
    "gelu": F.gelu,  # approximate="none": the exact, erf-based GELU
}  # fmt: skip
for _name, _unary_fn in _UNARY.items():
    _unary(_name, _unary_fn)


@_kernel("softmax")
def _softmax(x: Any, axis: Any = -1) -> Any:
    return torch.softmax(x, dim=_args.integer("axis", axis))


@_kernel("linear")
def _linear(x: Any, weight: Any, bias: Any = None) -> Any:
    if _integer_on_cuda(x):
        host = None if bias is None else bias.cpu()
        return F.linear(x.cpu(), weight.cpu(), host).to(x.device)
    return F.linear(x, weight, bias)


@_kernel("layer_norm")
def _layer_norm(
    x: Any, normalized_shape: Any = None, weight: Any = None, bias: Any = None, eps: Any = 1e-05
) -> Any:
    shape = _args.normalized_shape(tuple(x.shape), normalized_shape)
    return F.layer_norm(x, shape, weight, bias, float(eps))


def _reduction(name: str, fn: Callable[..., Any]) -> None:
    def op(x: Any, axis: Any = None, keepdims: Any = False) -> Any:
        ax = _args.axis(axis)
        dims = tuple(range(x.ndim)) if ax is None else ax
        return fn(x, dim=dims, keepdim=bool(keepdims))

    KERNELS[name] = op


_REDUCTIONS: dict[str, Callable[..., Any]] = {
    "sum": torch.sum, "mean": torch.mean, "max": torch.amax,
}  # fmt: skip
for _name, _reduce_fn in _REDUCTIONS.items():
    _reduction(_name, _reduce_fn)


@_kernel("transpose")
def _transpose(x: Any, axes: Any = None) -> Any:
    dims = _args.opt_ints("axes", axes)
    return x.permute(dims if dims is not None else tuple(reversed(range(x.ndim))))


@_kernel("permute")
def _permute(x: Any, dims: Any) -> Any:
    return x.permute(_args.ints("dims", dims))


@_kernel("reshape")
def _reshape(x: Any, shape: Any) -> Any:
    return torch.reshape(x, _args.ints("shape", shape))


@_kernel("cast")
def _cast(x: Any, dtype: Any) -> Any:
    # Wire dtype names are torch's attribute names too ("bfloat16", "uint16", ...).
    return x.to(getattr(torch, _args.dtype_name(dtype)))


@_kernel("concat")
def _concat(tensors: Any, axis: Any = 0) -> Any:
    return torch.cat(_args.tensor_list(tensors), dim=_args.integer("axis", axis))
