"""The server's half of a same-host session: two arenas it creates, owns and unlinks.

c2s carries request tensors (the client allocates in it); s2c carries results
(the server allocates in it and frees a block when the client says it dropped
the last view of it).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import ProtocolError
from ._arena import Arena
from ._cuda import HostRegistration, register_host, unregister_host
from ._errors import ChannelError
from ._pipe import MessagePipe
from ._regions import (
    C2S,
    FRAME_ARENA_FULL,
    FRAME_SMALL,
    S2C,
    SHM_ALIAS,
    SHM_COPY,
    SHM_DIRECT,
    Region,
    array_in,
    contiguous_address,
    copy_into,
    parse_descriptor,
)
from ._segment import DEFAULT_DIRECTORY

log = logging.getLogger("tensorwire.channel")

INLINE_BELOW = 64 << 10  # bytes; smaller tensors ride in frames (a copy is cheaper)


class ServerChannel:
    """Arenas for one client session, and the placer/resolver the codec calls."""

    def __init__(self, size: int, *, directory: str = DEFAULT_DIRECTORY,
                 inline_below: int = INLINE_BELOW, pin: bool = False) -> None:
        self.inline_below = inline_below
        self.directory = directory
        self.c2s = Arena.create(size, directory=directory)
        try:
            self.s2c = Arena.create(size, directory=directory)
        except BaseException:
            self.c2s.close()
            raise
        self.regions = (Region(self.c2s.segment), Region(self.s2c.segment))
        self._current: ReplyBlocks | None = None  # the reply being made
        # pin: the backend is on CUDA; page-lock both arenas once, for DMA (no-op without CUDA)
        self.pinned: list[HostRegistration] = (
            [register_host(self.c2s.segment.buf), register_host(self.s2c.segment.buf)]
            if pin else []
        )
        try:
            self.pipe: MessagePipe | None = MessagePipe.create(directory)
        except OSError as exc:  # FIFOs unsupported there: the session still has the arenas
            log.info("no message pipe for this session: %s", exc.strerror)
            self.pipe = None

    def offer(self) -> dict[str, Any]:
        """What the client needs to attach (sent only to a client on this host)."""
        return {
            "c2s": self.c2s.segment.name,
            "s2c": self.s2c.segment.name,
            "size": self.c2s.capacity,
            "dir": self.directory,
            "inline_below": self.inline_below,
            "pipe": self.pipe.name if self.pipe is not None else None,
        }

    def resolve(self, location: Any, nbytes: int) -> tuple[Any, str]:
        """A request tensor's bytes, checked to lie inside the arena."""
        region, offset, size, _ = parse_descriptor(location, nbytes)
        self.regions[region].check(offset, size)
        return self.regions[region].segment.buf[offset : offset + size], SHM_COPY

    def begin_reply(self) -> ReplyBlocks:
        """The s2c blocks of the reply whose request runs now (`output_allocator` hands them
        out until the next one begins). Several replies may be in the making at once."""
        self._current = ReplyBlocks(self)
        return self._current

    def output_allocator(self) -> Callable[[tuple[int, ...], np.dtype], np.ndarray | None]:
        """For kernels (ops._output): results of the reply's op allocated in s2c directly."""
        current = self._current if self._current is not None else self.begin_reply()
        return current.allocate

    def release(self, offsets: Any) -> None:
        """The client dropped its last view of these s2c blocks."""
        if not isinstance(offsets, list):
            raise ProtocolError("released blocks must be a list of offsets")
        for offset in offsets:
            try:
                self.s2c.free(offset)
            except (ChannelError, TypeError, ValueError) as exc:
                log.info("client released a block it does not hold: %s", exc)

    def close(self) -> None:
        for registration in self.pinned:  # before the arenas unmap
            unregister_host(registration)
        self.pinned = []
        if self.pipe is not None:
            self.pipe.close()
            self.pipe = None
        self.c2s.close()
        self.s2c.close()


class ReplyBlocks:
    """One reply's share of the s2c arena: blocks its kernels wrote results into, placed in
    the reply, or freed when it is sent (`end`)."""

    __slots__ = ("_channel", "_fresh")

    def __init__(self, channel: ServerChannel) -> None:
        self._channel = channel
        self._fresh: set[int] = set()  # s2c blocks handed to kernels for this reply

    def allocate(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray | None:
        """A block for a result of this reply, or None: small, or the arena is full."""
        channel = self._channel
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes < channel.inline_below:
            return None
        offset = channel.s2c.alloc(nbytes)
        if offset is None:
            return None  # the arena is full: the heap, and a frame later
        self._fresh.add(offset)
        buf = channel.s2c.segment.buf[offset : offset + nbytes]
        return np.frombuffer(buf, dtype, math.prod(shape)).reshape(shape)  # positional: faster

    def place(self, arr: np.ndarray) -> tuple[Any, str]:
        """Where a result goes: an alias of an arena argument, a fresh s2c block, or a frame."""
        channel = self._channel
        if arr.nbytes < channel.inline_below:
            return None, FRAME_SMALL
        regions, address = channel.regions, contiguous_address(arr)
        offset = regions[S2C].offset_at(address, arr.nbytes)
        if offset is not None and offset in self._fresh:
            self._fresh.discard(offset)  # the kernel wrote the result right here: no copy
            return [S2C, offset, arr.nbytes, True], SHM_DIRECT
        for region_id in (C2S, S2C):
            offset = regions[region_id].offset_at(address, arr.nbytes)
            if offset is not None:
                return [region_id, offset, arr.nbytes, False], SHM_ALIAS
        offset = channel.s2c.alloc(arr.nbytes)
        if offset is None:
            return None, FRAME_ARENA_FULL
        dst = array_in(channel.s2c.segment.buf[offset : offset + arr.nbytes], arr)
        copy_into(dst, arr)
        return [S2C, offset, arr.nbytes, True], SHM_COPY

    def end(self) -> None:
        """Free the blocks kernels got for this reply that did not end up in it."""
        for offset in self._fresh:
            self._channel.s2c.free(offset)
        self._fresh.clear()
