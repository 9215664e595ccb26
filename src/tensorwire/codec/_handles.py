"""References to tensors that live on the server (resident tensors).

On the wire a reference is ExtType(EXT_HANDLE, [id, shape, dtype, device]); in a
request only the id matters, in a reply the server fills in the rest. The client
layer subclasses HandleRef as RemoteTensor; the codec only knows this base.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from ..errors import ProtocolError
from ._dtypes import dtype_name

EXT_HANDLE = 3
MAX_HANDLE_ID = (1 << 63) - 1


class HandleRef:
    """A tensor kept on the server, named by an id that only its session knows."""

    __slots__ = ("__weakref__", "device", "dtype", "hid", "shape")

    def __init__(self, hid: int, shape: tuple[int, ...] | None = None,
                 dtype: str | None = None, device: str | None = None) -> None:
        self.hid, self.shape, self.dtype, self.device = hid, shape, dtype, device

    def wire(self) -> list[Any]:
        shape = list(self.shape) if self.shape is not None else None
        return [self.hid, shape, self.dtype, self.device]

    def __repr__(self) -> str:
        return f"<tensor handle {self.hid} {self.dtype}{list(self.shape or ())} on {self.device}>"


def handle_from_wire(parts: Any) -> HandleRef:
    if not (isinstance(parts, list) and len(parts) == 4):
        raise ProtocolError("malformed tensor handle")
    hid, shape, dtype, device = parts
    if type(hid) is not int or not 0 <= hid <= MAX_HANDLE_ID:
        raise ProtocolError("tensor handle id must be a non-negative 63-bit integer")
    if shape is not None and not (
        isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)
    ):
        raise ProtocolError("tensor handle has a malformed shape")
    if not (dtype is None or isinstance(dtype, str)) or not (
        device is None or isinstance(device, str)
    ):
        raise ProtocolError("tensor handle has a malformed dtype or device")
    return HandleRef(hid, tuple(shape) if shape is not None else None, dtype, device)


def content_digest(arr: np.ndarray) -> str:
    """The dedup key of an array: its dtype, shape and bytes (blake2b, 128 bits)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{dtype_name(arr.dtype)}|{list(arr.shape)}|".encode())
    h.update(np.ascontiguousarray(arr).reshape(-1).view(np.uint8).data)
    return h.hexdigest()
