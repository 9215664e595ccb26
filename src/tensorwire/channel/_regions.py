"""A mapped segment seen as an address range: where does an array live, and views into it."""

from __future__ import annotations

import ctypes
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ..errors import ProtocolError
from ._segment import Segment

# Which way a region carries bytes; the first field of every shared-memory descriptor.
C2S, S2C = 0, 1
# The paths a tensor may take, as the trace names them.
SHM_COPY = "shm"  # copied into the arena on the way in or out
SHM_ZERO_COPY = "shm(zero-copy)"  # already lived in the arena: no copy
SHM_ALIAS = "shm(alias)"  # a result sharing memory with an arena argument
SHM_DIRECT = "shm(direct)"  # a result the kernel wrote straight into the arena
FRAME_ARENA_FULL = "frame(arena full)"
FRAME_SMALL = "frame"


PARALLEL_COPY_MIN = 2 << 20  # bytes; below this a second thread costs more than it saves
_helper: tuple[int, ThreadPoolExecutor] | None = None


def copy_into(dst: np.ndarray, src: np.ndarray) -> None:
    """np.copyto, split over two threads for large contiguous arrays (2-3x faster here:
    one core does not saturate memory bandwidth, and the peer process is waiting)."""
    if src.nbytes < PARALLEL_COPY_MIN or not (
        dst.flags.c_contiguous and src.flags.c_contiguous and dst.dtype == src.dtype
    ):
        np.copyto(dst, src)
        return
    d, s = dst.reshape(-1), src.reshape(-1)
    half = d.size // 2
    done = _copy_helper().submit(np.copyto, d[half:], s[half:])
    np.copyto(d[:half], s[:half])
    done.result()


def _copy_helper() -> ThreadPoolExecutor:
    global _helper
    if _helper is None or _helper[0] != os.getpid():  # threads do not survive fork
        _helper = (os.getpid(), ThreadPoolExecutor(1, thread_name_prefix="tensorwire-copy"))
    return _helper[1]


def address_of(arr: np.ndarray) -> int:
    """Where the array's data starts (~1 us: numpy builds the whole interface dict)."""
    addr: int = arr.__array_interface__["data"][0]
    return addr


def contiguous_address(arr: np.ndarray) -> int | None:
    """`address_of` a C-contiguous array, else None. Taken once per tensor and then checked
    against each region (`Region.offset_at`), not once per region."""
    return address_of(arr) if arr.flags.c_contiguous else None


class Region:
    """One segment: its base address, bounds checks, and views that keep it mapped."""

    def __init__(self, segment: Segment) -> None:
        self.segment = segment
        self.size = segment.size
        probe = np.frombuffer(segment.buf, dtype=np.uint8)
        self.base = address_of(probe)
        del probe

    def offset_at(self, address: int | None, nbytes: int) -> int | None:
        """The offset of `nbytes` at `address` (a `contiguous_address`) when they lie wholly
        inside this region, else None."""
        if address is None:
            return None
        offset = address - self.base
        if 0 <= offset and offset + nbytes <= self.size:
            return offset
        return None

    def block(self, offset: int, nbytes: int) -> Any:
        """A ctypes array over [offset, offset+nbytes): one object per block, so a
        weakref on it tells when every numpy view of the block is gone."""
        self.check(offset, nbytes)
        return (ctypes.c_char * max(nbytes, 1)).from_buffer(self.segment.buf, offset)

    def check(self, offset: Any, nbytes: Any) -> None:
        if type(offset) is not int or type(nbytes) is not int:
            raise ProtocolError("shared-memory descriptor must hold integer offset and size")
        if offset < 0 or nbytes < 0 or offset + nbytes > self.size:
            raise ProtocolError(
                f"shared-memory descriptor [{offset}, +{nbytes}) lies outside the "
                f"{self.size}-byte arena"
            )


def array_in(buffer: Any, like: np.ndarray) -> np.ndarray:
    """A C-ordered array with `like`'s dtype and shape over `buffer`."""
    return np.frombuffer(buffer, dtype=like.dtype, count=like.size).reshape(like.shape)


def parse_descriptor(location: Any, expected: int) -> tuple[int, int, int, bool]:
    """[region, offset, nbytes, fresh] with types checked and nbytes matching the tensor's
    (what its header claims); ProtocolError otherwise."""
    if not (isinstance(location, list) and len(location) == 4):
        raise ProtocolError("malformed shared-memory descriptor")
    region, offset, size, fresh = location
    if region not in (C2S, S2C) or type(region) is not int:
        raise ProtocolError(f"shared-memory descriptor names unknown region {region!r}")
    if type(offset) is not int or type(size) is not int or type(fresh) is not bool:
        raise ProtocolError("shared-memory descriptor must hold integer offset and size")
    if size != expected:
        raise ProtocolError(f"shared-memory descriptor holds {size} bytes; tensor needs {expected}")
    return region, offset, size, fresh
