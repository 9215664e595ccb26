"""A fixed-size allocator of aligned blocks inside one shared-memory segment.

First fit over a free list sorted by offset; freeing coalesces with both neighbours.
The list stays short because tensors in flight are few; a scan is cheaper than a tree here.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Sequence
from typing import Any

import numpy.typing as npt

from ._errors import ChannelError
from ._segment import DEFAULT_DIRECTORY, DEFAULT_PREFIX, Segment

__all__ = ["ALIGNMENT", "Arena"]

ALIGNMENT = 64  # a cache line; also satisfies every numpy dtype and AVX-512 loads


def _round_up(n: int) -> int:
    return (n + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


class Arena:
    """Thread-safe allocator over a :class:`Segment` of fixed size (no growth).

    ``alloc`` returns ``None`` when no free block fits: a full arena is an expected state
    and the caller sends that tensor as an ordinary frame instead.
    """

    def __init__(self, segment: Segment, *, owns_segment: bool = False) -> None:
        self.segment = segment
        self._owns = owns_segment
        self._lock = threading.Lock()
        usable = segment.size // ALIGNMENT * ALIGNMENT
        self._free_offsets: list[int] = [0] if usable else []
        self._free_sizes: dict[int, int] = {0: usable} if usable else {}
        self._used: dict[int, int] = {}  # offset -> reserved (rounded) size
        self._used_bytes = 0
        self._capacity = usable

    @classmethod
    def create(
        cls, capacity: int, *, directory: str = DEFAULT_DIRECTORY, prefix: str = DEFAULT_PREFIX
    ) -> Arena:
        """A new segment of ``capacity`` bytes (rounded up to the alignment) and its arena."""
        seg = Segment.create(_round_up(max(capacity, 1)), directory=directory, prefix=prefix)
        return cls(seg, owns_segment=True)

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def used(self) -> int:
        """Bytes reserved by live allocations, alignment padding included."""
        return self._used_bytes

    def largest_free(self) -> int:
        with self._lock:
            return max(self._free_sizes.values(), default=0)

    def alloc(self, nbytes: int) -> int | None:
        """Offset of a new block of at least ``nbytes`` (64-byte aligned), or None if full."""
        if nbytes < 0:
            raise ValueError(f"cannot allocate {nbytes} bytes")
        want = _round_up(max(nbytes, 1))  # zero bytes still gets a distinct offset
        with self._lock:
            for i, off in enumerate(self._free_offsets):
                size = self._free_sizes[off]
                if size >= want:
                    self._take(i, off, size, want)
                    return off
        return None

    def _take(self, index: int, off: int, size: int, want: int) -> None:
        del self._free_sizes[off]
        if size == want:
            del self._free_offsets[index]
        else:
            self._free_offsets[index] = off + want
            self._free_sizes[off + want] = size - want
        self._used[off] = want
        self._used_bytes += want

    def free(self, offset: int) -> None:
        """Return a block from :meth:`alloc`; a double or foreign free raises ChannelError."""
        with self._lock:
            size = self._used.pop(offset, None)
            if size is None:
                raise ChannelError(f"free of offset {offset}: not an allocated block")
            self._used_bytes -= size
            self._insert_free(offset, size)

    def _insert_free(self, off: int, size: int) -> None:
        i = bisect.bisect_left(self._free_offsets, off)
        nxt = self._free_offsets[i] if i < len(self._free_offsets) else None
        if nxt is not None and off + size == nxt:  # merge with the following block
            size += self._free_sizes.pop(nxt)
            del self._free_offsets[i]
        prev = self._free_offsets[i - 1] if i > 0 else None
        if prev is not None and prev + self._free_sizes[prev] == off:  # merge with previous
            self._free_sizes[prev] += size
            return
        self._free_offsets.insert(i, off)
        self._free_sizes[off] = size

    def allocations(self) -> dict[int, int]:
        """A snapshot: offset -> reserved size of each live block."""
        with self._lock:
            return dict(self._used)

    def view(self, offset: int, nbytes: int) -> memoryview:
        """Writable bytes of a block (or part of one)."""
        if offset < 0 or nbytes < 0 or offset + nbytes > self.segment.size:
            raise ChannelError(f"{nbytes} bytes at offset {offset} exceed the arena")
        return self.segment.buf[offset : offset + nbytes]

    def ndarray(self, offset: int, shape: Sequence[int] | int, dtype: npt.DTypeLike) -> Any:
        """A numpy array viewing a block, see :meth:`Segment.ndarray`."""
        return self.segment.ndarray(offset, shape, dtype)

    def close(self) -> None:
        """Close the segment if this arena created it (see Segment.close for lifetimes)."""
        if self._owns:
            self.segment.close()

    def __enter__(self) -> Arena:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Arena {self.used}/{self.capacity} bytes used>"
