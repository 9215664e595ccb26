"""A cross-process doorbell: one byte through a named FIFO wakes the other side.

For small calls over shared memory the wake-up is most of the latency; a FIFO skips
ZeroMQ's I/O threads (one kernel hop each way, like a pipe). Both ends open each FIFO
read-write, which on Linux never blocks on open and never sees EOF, so a dead peer shows
up as a timeout: liveness stays the transport's job.
"""

from __future__ import annotations

import errno
import os
import re
import select
import shutil
import weakref

from ._errors import ChannelError, SegmentRefused
from ._pipe import TO_CLIENT, TO_SERVER, make_fifo_pair, remove_if_creator
from ._segment import DEFAULT_DIRECTORY

__all__ = ["Doorbell"]

_PREFIX = "tensorwire-bell-"
_NAME_RE = re.compile(re.escape(_PREFIX) + r"[A-Za-z0-9_]{8,32}")
_OPEN_FLAGS = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC


class Doorbell:
    """Two one-way FIFOs in a private directory. The server creates, the client attaches.

    ``ring()`` wakes the peer; ``wait(timeout)`` consumes one ring of the peer's, returning
    False on timeout. Rings are counted, not merged: n rings allow n waits.
    """

    def __init__(self, directory: str, name: str, creator: bool) -> None:
        path = os.path.join(directory, name)
        send, recv = (TO_CLIENT, TO_SERVER) if creator else (TO_SERVER, TO_CLIENT)
        self.name = name
        self.is_creator = creator
        self._finalizer = weakref.finalize(self, remove_if_creator, path, os.getpid())
        if not creator:
            self._finalizer.detach()
        self._recv = os.open(os.path.join(path, recv), _OPEN_FLAGS)
        try:
            # Non-blocking send: a full pipe means 64 KiB of unread rings; wake-up enough.
            self._send = os.open(os.path.join(path, send), _OPEN_FLAGS | os.O_NONBLOCK)
        except BaseException:
            os.close(self._recv)
            raise

    @classmethod
    def create(cls, *, directory: str = DEFAULT_DIRECTORY) -> Doorbell:
        """Make the FIFOs in a new mode-0700 directory with an unguessable name."""
        path = make_fifo_pair(directory, _PREFIX)
        try:
            return cls(directory, os.path.basename(path), creator=True)
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise

    @classmethod
    def attach(cls, name: str, *, directory: str = DEFAULT_DIRECTORY) -> Doorbell:
        """Open the client end of a doorbell the server created."""
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise SegmentRefused(f"doorbell name refused: expected {_PREFIX!r} + a token")
        try:
            return cls(directory, name, creator=False)
        except OSError as exc:
            raise SegmentRefused(f"cannot open doorbell in {directory}: {exc.strerror}") from None

    def ring(self) -> None:
        try:
            os.write(self._send, b"\x01")
        except BlockingIOError:
            pass  # the peer already has plenty of unread rings
        except OSError as exc:
            if exc.errno == errno.EBADF:
                raise ChannelError("doorbell is closed") from None
            raise

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the peer rings (True) or ``timeout`` seconds pass (False)."""
        if self._recv < 0:
            raise ChannelError("doorbell is closed")
        if timeout is not None:
            ready, _, _ = select.select([self._recv], [], [], timeout)
            if not ready:
                return False
        os.read(self._recv, 1)
        return True

    def fileno(self) -> int:
        """The receiving descriptor, for select/poll/asyncio ``add_reader``."""
        return self._recv

    def close(self) -> None:
        """Close both ends; the creator also removes the FIFOs. Idempotent."""
        for fd in (self._recv, self._send):
            if fd >= 0:
                os.close(fd)
        self._recv = self._send = -1
        self._finalizer()

    def __enter__(self) -> Doorbell:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
