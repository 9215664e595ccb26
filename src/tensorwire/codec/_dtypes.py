"""The dtypes that may cross the wire, by name. Anything else is refused."""

from __future__ import annotations

import functools
from typing import Any

import ml_dtypes
import numpy as np

from ..errors import ProtocolError

# Wire name -> numpy dtype. Names are numpy's own, so they read naturally in errors.
WIRE_DTYPES: dict[str, np.dtype] = {
    name: np.dtype(name)
    for name in (
        "bool", "int8", "int16", "int32", "int64",
        "uint8", "uint16", "uint32", "uint64",
        "float16", "float32", "float64", "complex64", "complex128",
    )
}  # fmt: skip
WIRE_DTYPES["bfloat16"] = np.dtype(ml_dtypes.bfloat16)

_NAME_OF = {dt: name for name, dt in WIRE_DTYPES.items()}


def dtype_name(dtype: np.dtype) -> str:
    """The wire name of a numpy dtype; ProtocolError for object, structured, etc."""
    native = dtype.newbyteorder("=") if dtype.byteorder == ">" else dtype
    try:
        return _NAME_OF[native]
    except KeyError:
        raise ProtocolError(
            f"unsupported dtype {dtype.str!r} ({dtype}); supported: {', '.join(WIRE_DTYPES)}"
        ) from None


@functools.cache
def native_name(dtype: Any) -> str:
    """A numpy or torch dtype's name as the wire spells it: numpy prints "float32", torch
    "torch.float32". Not checked against WIRE_DTYPES. Cached: str() of a dtype costs
    microseconds, a noticeable share of a small call."""
    return str(dtype).removeprefix("torch.")


def wire_dtype(name: object) -> np.dtype:
    """The numpy dtype for a wire name; ProtocolError for anything unknown."""
    if not isinstance(name, str) or name not in WIRE_DTYPES:
        raise ProtocolError(f"unknown dtype {name!r}; supported: {', '.join(WIRE_DTYPES)}")
    return WIRE_DTYPES[name]
