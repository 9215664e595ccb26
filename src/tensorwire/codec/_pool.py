"""Recycled buffers for the wire casts.

A fresh 100 MB buffer costs more than the cast that fills it: the kernel zeroes every page on
first touch (about 10 ms per 100 MB on the 2-vCPU VM, against about 4 ms for the cast itself,
BENCHMARKS.md). The pool hands out arrays backed by blocks it keeps, and takes a block back
when the last array or view on it is garbage-collected, so a repeated call of the same size
writes into pages that are already mapped.

Ownership: every array `empty` returns (and every view of it) refers to one lease object; the
block returns to the pool when that lease dies, never earlier. A result handed to a user is
theirs for as long as they hold it. Idle blocks are capped (`max_idle_bytes`); the oldest
idle block goes first. Small buffers are not pooled: malloc already recycles those.
"""

from __future__ import annotations

import math
import threading
import weakref
from typing import Any, Literal

import numpy as np

MIN_POOLED_BYTES = 1 << 20
DEFAULT_IDLE_BYTES = 256 << 20  # per pool: one client, or one server


class _Lease:
    """The owner that every array on a block refers to (numpy keeps it as their `base`)."""

    __slots__ = ("__array_interface__", "__weakref__", "_block")

    def __init__(self, block: np.ndarray) -> None:
        self._block = block
        self.__array_interface__ = {
            "version": 3,
            "shape": (block.nbytes,),
            "typestr": "|u1",
            "data": (block.ctypes.data, False),
        }


class BufferPool:
    """Arrays backed by recycled blocks, matched by exact size."""

    def __init__(
        self, max_idle_bytes: int = DEFAULT_IDLE_BYTES, min_bytes: int = MIN_POOLED_BYTES
    ) -> None:
        self.max_idle_bytes = max_idle_bytes
        self.min_bytes = min_bytes
        self._idle: list[np.ndarray] = []  # oldest first
        self._idle_bytes = 0
        self._lock = threading.Lock()
        self._closed = False
        self.reused = 0  # blocks handed out again (tests and benchmarks read these)
        self.allocated = 0

    def empty(
        self, shape: tuple[int, ...], dtype: Any, order: Literal["C", "F"] = "C"
    ) -> np.ndarray:
        """An uninitialised array, like np.empty, on a recycled block where one fits."""
        dtype = np.dtype(dtype)
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes < self.min_bytes or self.max_idle_bytes <= 0:
            return np.empty(shape, dtype=dtype, order=order)
        block = self._take(nbytes)
        lease = _Lease(block)
        weakref.finalize(lease, self._give_back, block)
        return np.ndarray(shape, dtype=dtype, buffer=np.asarray(lease), order=order)

    @property
    def idle_bytes(self) -> int:
        return self._idle_bytes

    def clear(self) -> None:
        """Drop the idle blocks; blocks still in use are dropped when their arrays die."""
        with self._lock:
            self._closed = True
            self._idle.clear()
            self._idle_bytes = 0

    def _take(self, nbytes: int) -> np.ndarray:
        with self._lock:
            for i, block in enumerate(self._idle):
                if block.nbytes == nbytes:
                    del self._idle[i]
                    self._idle_bytes -= nbytes
                    self.reused += 1
                    return block
            self.allocated += 1
        return np.empty(nbytes, dtype=np.uint8)

    def _give_back(self, block: np.ndarray) -> None:
        with self._lock:
            if self._closed or block.nbytes > self.max_idle_bytes:
                return
            self._idle.append(block)
            self._idle_bytes += block.nbytes
            while self._idle_bytes > self.max_idle_bytes:
                self._idle_bytes -= self._idle.pop(0).nbytes
