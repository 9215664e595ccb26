"""Argument normalisers shared by the kernels of every backend.

Arguments arrive from MessagePack, so tuples come as lists and anything may be the
wrong type; these turn them into what numpy and torch expect, or raise
OpArgumentError with the argument's name.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...codec import WIRE_DTYPES
from ._errors import OpArgumentError


def integer(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise OpArgumentError(f"{name} must be an int, got {type(value).__name__}")
    return int(value)


def ints(name: str, value: Any) -> tuple[int, ...]:
    """An int or a list of ints -> a tuple of ints."""
    if isinstance(value, list | tuple):
        return tuple(integer(name, v) for v in value)
    return (integer(name, value),)


def axis(value: Any) -> int | tuple[int, ...] | None:
    """None, an int, or a list of ints (a reduction over several axes)."""
    if value is None:
        return None
    if isinstance(value, list | tuple):
        return ints("axis", value)
    return integer("axis", value)


def opt_ints(name: str, value: Any) -> tuple[int, ...] | None:
    return None if value is None else ints(name, value)


def normalized_shape(x_shape: tuple[int, ...], value: Any) -> tuple[int, ...]:
    """layer_norm's trailing shape: by default the last axis."""
    shape = tuple(x_shape[-1:]) if value is None else ints("normalized_shape", value)
    if not shape or tuple(x_shape[-len(shape) :]) != shape:
        raise OpArgumentError(
            f"normalized_shape {list(shape)} does not match the trailing axes of x {list(x_shape)}"
        )
    return shape


def dtype_name(value: Any) -> str:
    """A wire dtype name such as "bfloat16"."""
    if not isinstance(value, str) or value not in WIRE_DTYPES:
        raise OpArgumentError(f"unknown dtype {value!r}; known: {', '.join(WIRE_DTYPES)}")
    return value


def tensor_list(value: Any) -> list[Any]:
    if not isinstance(value, list | tuple) or not value:
        raise OpArgumentError(f"tensors must be a non-empty list, got {type(value).__name__}")
    return list(value)
