"""Where a kernel's result is allocated: normally the heap, for a reply the client's arena;
and the wire format a reply's float32 results will be narrowed to.

A result computed on the heap must then be copied into the shared-memory arena
(10 MB: ~0.5-1 ms here). While the server runs the op whose result goes straight
back to a same-host client, it installs an allocator here and kernels that build
their result with `new_output` write it into the arena directly.

Likewise, while a request from a client with a wire policy runs, the server installs that
policy here (`narrowing_replies`): a device backend narrows a result where it lies, before
it crosses to the host (`reply_narrowing`), instead of the server's CPU doing it after.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

import numpy as np

Allocator = Callable[[tuple[int, ...], np.dtype], "np.ndarray | None"]
_ALLOCATOR: ContextVar[Allocator | None] = ContextVar("tensorwire_output", default=None)
Narrowing = Callable[[int], "str | None"]  # float32 bytes -> "bfloat16" | "float16" | None
_NARROWING: ContextVar[Narrowing | None] = ContextVar("tensorwire_narrowing", default=None)


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


class _Installed:
    """Sets a context variable for the `with` block, and back after it.

    A class, not @contextmanager: it runs once per request, and a generator-based
    context manager costs a few microseconds more.
    """

    __slots__ = ("_token", "_value", "_var")

    def __init__(self, var: ContextVar[Any], value: Any) -> None:
        self._var, self._value = var, value

    def __enter__(self) -> None:
        self._token = self._var.set(self._value)

    def __exit__(self, *exc: object) -> None:
        self._var.reset(self._token)


class outputs_into(_Installed):  # noqa: N801 - used like the function it replaced
    """`with outputs_into(allocate):` kernels' results go to `allocate` (or the heap)."""

    __slots__ = ()

    def __init__(self, allocate: Allocator | None) -> None:
        super().__init__(_ALLOCATOR, allocate)


def reply_narrowing(nbytes: int) -> str | None:
    """The wire format ("bfloat16", "float16") the reply will narrow a float32 result of
    `nbytes` bytes to, under the client's policy; None: it goes as float32."""
    choose = _NARROWING.get()
    return None if choose is None else choose(nbytes)


class narrowing_replies(_Installed):  # noqa: N801 - a context manager, like outputs_into
    """`with narrowing_replies(choose):` while the request runs, `reply_narrowing` answers
    with `choose` (None: nothing is narrowed)."""

    __slots__ = ()

    def __init__(self, choose: Narrowing | None) -> None:
        super().__init__(_NARROWING, choose)
