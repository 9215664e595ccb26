"""RemoteTensor: a handle to a tensor kept on the server (on its GPU when it has one).

Pass it to any op instead of an array and no bytes travel. `fetch()` (or
`np.asarray(h)`) brings it back; `free()` drops it now, and dropping the last
reference drops it too (told to the server with the next request). It belongs to
the client's session: another client using it gets the unknown-handle error.
"""

from __future__ import annotations

import weakref
from collections import deque
from typing import TYPE_CHECKING, Any

import numpy as np

from ..codec import HandleRef

if TYPE_CHECKING:
    from ._client import Client


class RemoteTensor(HandleRef):
    __slots__ = ("_client", "_finalizer")
    __array_ufunc__ = None  # `array @ handle` must not fetch silently: use gpu ops or fetch()

    def __init__(self, client: Client, ref: HandleRef, dropped: deque[int]) -> None:
        super().__init__(ref.hid, ref.shape, ref.dtype, ref.device)
        self._client = client
        # The finalizer holds the deque, not the client: a handle never keeps a client alive.
        self._finalizer = weakref.finalize(self, dropped.append, ref.hid)

    @property
    def ndim(self) -> int:
        return len(self.shape or ())

    @property
    def size(self) -> int:
        return int(np.prod(self.shape or (), dtype=np.int64))

    def fetch(self) -> Any:
        """The tensor's value, as a numpy array."""
        return self._client.fetch(self)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        arr = np.asarray(self.fetch())
        return arr if dtype is None else arr.astype(dtype, copy=False)

    def free(self) -> None:
        """Drop the server's copy now. Using the handle afterwards is an error."""
        if self._finalizer.detach() is not None:
            self._client.free(self)

    def __repr__(self) -> str:
        return f"RemoteTensor(shape={self.shape}, dtype={self.dtype}, device={self.device!r})"
