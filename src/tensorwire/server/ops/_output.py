"""Where a kernel's result is allocated: normally the heap, for a reply the client's arena.

A result computed on the heap must then be copied into the shared-memory arena
(10 MB: ~0.5-1 ms here). While the server runs the op whose result goes straight
back to a same-host client, it installs an allocator here and kernels that build
their result with `new_output` write it into the arena directly.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

import numpy as np

Allocator = Callable[[tuple[int, ...], np.dtype], "np.ndarray | None"]
_ALLOCATOR: ContextVar[Allocator | None] = ContextVar("tensorwire_output", default=None)


def reply_output(shape: Any, dtype: Any) -> np.ndarray | None:
    """A block of the reply's arena for a result, or None: no arena installed (the result is
    not going straight back), too small to go by the arena, or the arena is full."""
    allocate = _ALLOCATOR.get()
    if allocate is None:
        return None
    return allocate(tuple(int(d) for d in shape), np.dtype(dtype))


def new_output(shape: Any, dtype: Any) -> np.ndarray:
    """An uninitialised result array: in the reply's arena when one is installed and fits."""
    arr = reply_output(shape, dtype)
    return arr if arr is not None else np.empty(shape, dtype)


class outputs_into:  # noqa: N801 - used like the function it replaced
    """`with outputs_into(allocate):` kernels' results go to `allocate` (or the heap).

    A class, not @contextmanager: it runs once per request, and a generator-based
    context manager costs a few microseconds more.
    """

    __slots__ = ("_allocate", "_token")

    def __init__(self, allocate: Allocator | None) -> None:
        self._allocate = allocate

    def __enter__(self) -> None:
        self._token = _ALLOCATOR.set(self._allocate)

    def __exit__(self, *exc: object) -> None:
        _ALLOCATOR.reset(self._token)
