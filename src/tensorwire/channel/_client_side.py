"""The client's half of a same-host session: it attaches to the server's two arenas.

Ownership rule (what users see): an array that lives in the arena — from
`empty`/`zeros`/`asarray`, or a result that arrived through shared memory —
stays valid and unchanged for as long as it, or any view of it, is alive. Its
block is handed back only after the last view is gone (c2s blocks to our own
allocator, s2c blocks to the server with the next request). A result may share
memory with an arena array passed as an argument (identity, reshape); arrays the
caller did not allocate in the arena are never aliased.
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections import deque
from typing import Any

import numpy as np

from ..errors import ProtocolError
from ._arena import Arena
from ._errors import ChannelError, SegmentRefused
from ._pipe import MessagePipe
from ._regions import (
    C2S,
    FRAME_ARENA_FULL,
    FRAME_SMALL,
    S2C,
    SHM_ALIAS,
    SHM_COPY,
    SHM_ZERO_COPY,
    Region,
    array_in,
    contiguous_address,
    copy_into,
    parse_descriptor,
)
from ._segment import DEFAULT_DIRECTORY, Segment


class ClientChannel:
    """Attached arenas, the live blocks in them, and the codec's placer/resolver."""

    def __init__(self, offer: dict[str, Any]) -> None:
        size, inline_below = offer.get("size"), offer.get("inline_below")
        directory = offer.get("dir", DEFAULT_DIRECTORY)
        if type(size) is not int or type(inline_below) is not int or size <= 0:
            raise ProtocolError("malformed shared-memory offer")
        if not isinstance(directory, str) or not directory.startswith("/"):
            raise ProtocolError("malformed shared-memory offer")
        c2s = Segment.attach(offer.get("c2s"), size, directory=directory)  # type: ignore[arg-type]
        try:
            s2c = Segment.attach(offer.get("s2c"), size, directory=directory)  # type: ignore[arg-type]
        except BaseException:
            c2s.close()
            raise
        self.inline_below = inline_below
        self.pipe: MessagePipe | None = None
        self.pipe_lock = threading.Lock()  # one call at a time on the pipe; others use zmq
        if offer.get("pipe"):
            try:
                self.pipe = MessagePipe.attach(offer["pipe"], directory, max_message=1 << 62)
            except SegmentRefused:
                self.pipe = None  # the arenas still work; small calls go through zmq
        self.c2s_alloc = Arena(c2s)  # we allocate request space; the server only reads it
        self.regions = (Region(c2s), Region(s2c))
        # Live blocks per region: offset -> the ctypes object every view of it hangs on.
        self._live: tuple[weakref.WeakValueDictionary[int, Any], ...] = (
            weakref.WeakValueDictionary(), weakref.WeakValueDictionary())
        self._released: deque[int] = deque()  # s2c blocks to hand back to the server
        # The weak references that free a block when its last view goes (see _new_block),
        # by id: a ctypes block is unhashable, and so is a weak reference to it.
        self._block_refs: dict[int, weakref.ref[Any]] = {}
        self._lock = threading.Lock()

    # -- arrays that live in the arena -----------------------------------------------

    def empty(self, shape: Any, dtype: Any) -> np.ndarray:
        """An uninitialised array in the c2s arena (sending it costs no copy)."""
        arr = self.try_empty(shape, dtype)
        if arr is None:
            nbytes = _count(shape) * np.dtype(dtype).itemsize
            raise ChannelError(
                f"shared-memory arena has no room for {nbytes} bytes "
                f"(largest free block {self.c2s_alloc.largest_free()}); free arena arrays "
                "or create the client with a larger shm_size"
            )
        return arr

    def outgoing(self, shape: Any, dtype: Any, keep: list[Any]) -> np.ndarray | None:
        """An arena array for a tensor a request is about to write and send (a cast's
        output), held in `keep` until the reply; None when it would travel inline anyway
        or the arena has no room."""
        dt = np.dtype(dtype)
        if _count(shape) * dt.itemsize < self.inline_below:
            return None
        arr = self.try_empty(shape, dt)
        if arr is not None:
            keep.append(arr)
        return arr

    def try_empty(self, shape: Any, dtype: Any) -> np.ndarray | None:
        """`empty`, or None when the arena has no room."""
        dt = np.dtype(dtype)
        count = _count(shape)
        offset = self.c2s_alloc.alloc(count * dt.itemsize)
        if offset is None:
            return None
        block = self._new_block(C2S, offset, count * dt.itemsize)
        return np.frombuffer(block, dt, count).reshape(shape)  # positional: faster

    # -- the codec's hooks ---------------------------------------------------------------

    def placer(self, keep: list[Any]) -> Any:
        """A placer for one request; the blocks it fills or refers to are kept alive in
        `keep` until the reply."""

        def place(arr: np.ndarray) -> tuple[Any, str]:
            if arr.nbytes < self.inline_below:
                return None, FRAME_SMALL
            address = contiguous_address(arr)
            for region_id in (C2S, S2C):
                offset = self.regions[region_id].offset_at(address, arr.nbytes)
                if offset is not None:
                    # The caller may drop its array before a submitted request is served:
                    # its block must not be freed (and reused) before the reply.
                    keep.append(arr)
                    return [region_id, offset, arr.nbytes, False], SHM_ZERO_COPY
            offset = self.c2s_alloc.alloc(arr.nbytes)
            if offset is None:
                return None, FRAME_ARENA_FULL
            block = self._new_block(C2S, offset, arr.nbytes)
            copy_into(array_in(block, arr), arr)
            keep.append(block)
            return [C2S, offset, arr.nbytes, False], SHM_COPY

        return place

    def resolve(self, location: Any, nbytes: int) -> tuple[Any, str]:
        """A result's bytes: a fresh s2c block, or an alias inside a block we hold."""
        region, offset, size, fresh = parse_descriptor(location, nbytes)
        if fresh:
            if region != S2C:
                raise ProtocolError("only the server's arena holds fresh result blocks")
            return self._new_block(S2C, offset, size), SHM_COPY
        start, block = self._containing(region, offset, size)
        sub = (type(block)._type_ * max(size, 1)).from_buffer(block, offset - start)
        return sub, SHM_ALIAS

    def take_released(self) -> list[int]:
        """s2c blocks whose last view is gone, to report to the server."""
        return take_all(self._released)

    def drop_pipe(self) -> None:
        """Stop using the message pipe (small calls go through ZeroMQ from now on)."""
        pipe, self.pipe = self.pipe, None
        if pipe is not None:
            pipe.close()

    def close(self) -> None:
        self.drop_pipe()
        for region in self.regions:
            region.segment.close()

    # -- bookkeeping -----------------------------------------------------------------

    def _new_block(self, region: int, offset: int, nbytes: int) -> Any:
        block = self.regions[region].block(offset, nbytes)
        with self._lock:  # another thread may be scanning _live in _containing
            self._live[region][offset] = block
        # A weak reference with a callback, not weakref.finalize (~0.9 us a block, per
        # request or reply): it frees the block once its last view is gone. Kept in a dict
        # (one atomic store and pop; nothing iterates it) so that it lives as long as we do.
        refs, gone = self._block_refs, self._gone_callback(region, offset)
        ref = weakref.ref(block, lambda ref: (refs.pop(id(ref), None), gone()))
        refs[id(ref)] = ref
        return block

    def _gone_callback(self, region: int, offset: int) -> Any:
        if region == C2S:
            return functools.partial(_free_quietly, self.c2s_alloc, offset)
        return functools.partial(self._released.append, offset)

    def _containing(self, region: int, offset: int, size: int) -> tuple[int, Any]:
        block = self._live[region].get(offset)  # the usual alias: a whole block (identity)
        if block is not None and size <= len(block):
            return offset, block
        with self._lock:  # an insert from another thread would break the iteration
            live = list(self._live[region].items())
        for start, block in live:
            if start <= offset and offset + size <= start + len(block):
                return start, block
        raise ProtocolError("result refers to arena memory this client does not hold")


def _count(shape: Any) -> int:
    return int(np.prod(shape, dtype=np.int64)) if np.ndim(shape) else int(shape)


def take_all(queue: deque[int]) -> list[int]:
    """Empty a deque that other threads append to and drain concurrently.

    Takes what was there on entry (later arrivals wait for the next call), so the usual
    case raises no IndexError to end the loop.
    """
    out: list[int] = []
    if not queue:  # the usual case
        return out
    for _ in range(len(queue)):
        try:
            out.append(queue.popleft())
        except IndexError:  # not `while queue`: another thread may take the last one first
            break
    return out


def _free_quietly(arena: Arena, offset: int) -> None:
    try:
        arena.free(offset)
    except ChannelError:
        pass  # already returned (client closed)
