"""ucx://HOST:PORT through ucxx: UCX picks RDMA, shared memory or tcp (`UCX_TLS`).

ucxx is the optional extra `pip install tensorwire[ucx]` and is imported only
when a ucx URL is used. One asyncio loop thread per process drives every UCX
endpoint of that process (servers and clients alike): ucxx keeps one global
context whose progress runs on an event loop.

A message is two UCX sends on one endpoint: its length as a little-endian u64,
then the frames in the pipe framing (`channel.pack_message`: u32 count, u32
sizes, bytes). The receiver checks the length against its limit before it
allocates, and the framing against the length before anything else sees it.
A peer that breaks the framing has its endpoint closed; nobody else notices.

UCX has no key authentication: a server needs --insecure to serve ucx://, and
ucxx listens on every interface of the given port.
"""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import numpy as np
import zmq

from ..channel import pack_message, unpack_message
from ..errors import ConnectionClosed, ProtocolError, TransportError
from ._base import Transport, register_transport, wire_path

log = logging.getLogger("tensorwire.ucx")

CONNECT_TIMEOUT = 10.0  # seconds to open an endpoint or a listener
# Received messages waiting for the serving thread. Beyond either bound the readers pause
# (UCX then holds the senders back), as ZeroMQ's receive high-water mark does for zmq.
MAX_INBOX = 1024
MAX_INBOX_BYTES = 1 << 30
INBOX_POLL = 0.001  # seconds between checks while paused
CLOSE_TIMEOUT = 5.0
INSTALL_HINT = "ucxx is not installed: pip install tensorwire[ucx]"
_T = TypeVar("_T")
_LOOP: asyncio.AbstractEventLoop | None = None
_LOOP_LOCK = threading.Lock()


@register_transport
class UcxTransport(Transport):
    scheme = "ucx"
    zmq_socket = False  # served by UcxListener / UcxConnection, not a ZeroMQ socket

    @classmethod
    def viable(cls) -> tuple[bool, str]:
        if importlib.util.find_spec("ucxx") is None:
            return False, INSTALL_HINT
        return True, ""

    def bind(self, sock: zmq.Socket[bytes], url: str) -> str:
        raise TransportError("ucx:// is served by a UcxListener, not a ZeroMQ socket")

    def connect(self, sock: zmq.Socket[bytes], url: str) -> None:
        raise TransportError("ucx:// is reached through a UcxConnection, not a ZeroMQ socket")


def host_port(url: str) -> tuple[str, int]:
    host, _, port = url[len("ucx://") :].rpartition(":")
    if not url.startswith("ucx://") or not host or not port.isdigit() or int(port) > 65535:
        raise TransportError(f"ucx URL {url!r} must look like ucx://HOST:PORT")
    return host, int(port)


def _loop() -> asyncio.AbstractEventLoop:
    """The process's UCX loop thread, started (and ucxx imported) on first use."""
    global _LOOP
    with _LOOP_LOCK:
        if _LOOP is None:
            # ucxx sets UCX_MEMTYPE_CACHE, which this UCX build does not know; UCX would
            # print a warning on stdout, where `tensorwire serve` prints its URL.
            os.environ.setdefault("UCX_WARN_UNUSED_ENV_VARS", "n")
            try:
                import ucxx  # noqa: F401 (fails here, not deep inside a coroutine)
            except ImportError as exc:
                raise TransportError(f"{INSTALL_HINT} ({exc})") from None
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="tensorwire-ucx", daemon=True).start()
            _LOOP = loop
        return _LOOP


def _run(coro: Coroutine[Any, Any, _T], timeout: float) -> _T:
    """Run `coro` on the UCX loop and wait for its result (from any other thread)."""
    return asyncio.run_coroutine_threadsafe(coro, _loop()).result(timeout)


async def _send(ep: Any, message: bytes) -> None:
    await ep.send(np.array([len(message)], "<u8"))
    await ep.send(np.frombuffer(message, np.uint8))


async def _recv(ep: Any, max_bytes: int, max_frames: int) -> list[memoryview]:
    head = np.empty(1, "<u8")
    await ep.recv(head)
    total = int(head[0])
    if not 4 <= total <= max_bytes:
        raise ProtocolError(f"ucx message header says {total} bytes; 4..{max_bytes} allowed")
    body = bytearray(total)
    await ep.recv(np.frombuffer(body, np.uint8))
    return unpack_message(memoryview(body), max_frames)


async def _close(ep: Any) -> None:
    try:
        await ep.close()
    except Exception as exc:  # already closed or broken: nothing left to release
        log.debug("closing a ucx endpoint: %r", exc)


class _Peer:
    """One accepted endpoint; a lock keeps each reply's two sends together."""

    def __init__(self, ep: Any) -> None:
        self.ep, self.lock = ep, asyncio.Lock()


class UcxListener:
    """The server side: accepts endpoints, queues what they send, sends replies.

    The serving thread polls `wake` (an eventfd), then calls `take()`; messages
    come as (peer id, frames). `reply(peer, frames)` may be called from that thread.
    """

    def __init__(self, max_bytes: int, max_frames: int) -> None:
        self.max_bytes, self.max_frames = max_bytes, max_frames
        self.wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._inbox: deque[tuple[int, list[memoryview]]] = deque()
        self._inbox_bytes = 0
        self._inbox_lock = threading.Lock()  # the loop thread appends, the serving thread takes
        self._peers: dict[int, _Peer] = {}
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()
        self._listener: Any = None
        self.wire_path = "local"  # for wire precision: "tcp" once bound to another host's URL

    def bind(self, url: str) -> str:
        """Listen on the URL's port (0 picks one); the URL clients should use."""
        host, port = host_port(url)

        async def listen() -> Any:
            import ucxx

            return ucxx.create_listener(self._serve, port=port)

        try:
            self._listener = _run(listen(), CONNECT_TIMEOUT)
        except Exception as exc:
            raise TransportError(f"cannot listen on {url}: {exc}") from None
        bound = f"ucx://{host}:{self._listener.port}"
        self.wire_path = wire_path(bound)
        return bound

    async def _serve(self, ep: Any) -> None:
        peer = next(self._ids)
        self._peers[peer] = _Peer(ep)
        try:
            while True:
                while len(self._inbox) >= MAX_INBOX or self._inbox_bytes >= MAX_INBOX_BYTES:
                    await asyncio.sleep(INBOX_POLL)
                frames = await _recv(ep, self.max_bytes, self.max_frames)
                with self._inbox_lock:
                    self._inbox_bytes += sum(f.nbytes for f in frames)
                    self._inbox.append((peer, frames))
                os.eventfd_write(self.wake, 1)
        except ProtocolError as exc:
            log.warning("ucx peer %d sent a malformed message (%s); endpoint closed", peer, exc)
        except Exception as exc:  # the peer closed or died: UCX reports it as an error
            log.info("ucx peer %d is gone: %r", peer, exc)
        finally:
            self._peers.pop(peer, None)
            await _close(ep)

    def take(self) -> list[tuple[int, list[memoryview]]]:
        """Every message received so far."""
        try:
            os.eventfd_read(self.wake)
        except BlockingIOError:
            pass
        with self._inbox_lock:
            taken = list(self._inbox)
            self._inbox.clear()
            self._inbox_bytes = 0
        return taken

    def reply(self, peer: int, frames: list[Any]) -> None:
        """Queue a reply to `peer`; a peer that is gone simply gets none."""
        _loop().call_soon_threadsafe(self._start_send, peer, pack_message(frames))

    def _start_send(self, peer: int, message: bytes) -> None:
        target = self._peers.get(peer)
        if target is None:
            log.info("reply not delivered: ucx peer %d is gone", peer)
            return
        task = asyncio.get_running_loop().create_task(self._send(peer, target, message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, peer: int, target: _Peer, message: bytes) -> None:
        try:
            async with target.lock:
                await _send(target.ep, message)
        except Exception as exc:
            log.info("reply not delivered to ucx peer %d: %r", peer, exc)

    def close(self) -> None:
        async def close() -> None:
            if self._listener is not None:
                self._listener.close()
                self._listener = None
            for target in list(self._peers.values()):
                await _close(target.ep)

        if _LOOP is not None:
            try:
                _run(close(), CLOSE_TIMEOUT)
            except Exception as exc:
                log.info("closing the ucx listener: %r", exc)
        if self.wake >= 0:
            os.close(self.wake)
            self.wake = -1


class UcxConnection:
    """The client side: one endpoint to a server.

    Every reply is handed to `on_message(frames)` on the UCX loop thread; if the
    endpoint breaks, `on_lost(error)` is called there once and `broken` is set.
    """

    def __init__(
        self,
        url: str,
        on_message: Callable[[list[memoryview]], None],
        on_lost: Callable[[ConnectionClosed], None],
        max_bytes: int,
        max_frames: int,
    ) -> None:
        host, port = host_port(url)
        self.url, self.broken = url, False
        self._on_message, self._on_lost = on_message, on_lost
        self._max = (max_bytes, max_frames)

        async def connect() -> Any:
            import ucxx

            return await ucxx.create_endpoint(host, port)

        try:
            self._ep = _run(connect(), CONNECT_TIMEOUT)
        except Exception as exc:
            raise ConnectionClosed(f"cannot connect to {url}: {exc}") from None
        self._lock = asyncio.Lock()
        self._reader = asyncio.run_coroutine_threadsafe(self._read(), _loop())

    async def _read(self) -> None:
        try:
            while True:
                self._on_message(await _recv(self._ep, *self._max))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the server closed the endpoint, or died
            self._lose(exc)

    def _lose(self, exc: BaseException) -> None:
        if not self.broken:
            self.broken = True
            self._on_lost(ConnectionClosed(f"ucx endpoint to {self.url} closed: {exc!r}"))

    def send(self, frames: list[Any]) -> None:
        """Queue one message; it is copied (framed) before this returns."""
        asyncio.run_coroutine_threadsafe(self._send(pack_message(frames)), _loop())

    async def _send(self, message: bytes) -> None:
        try:
            async with self._lock:
                await _send(self._ep, message)
        except Exception as exc:
            self._lose(exc)

    def call_later(self, delay: float, fn: Callable[[], object]) -> None:
        """Run `fn` on the UCX loop thread after `delay` seconds."""
        loop = _loop()
        loop.call_soon_threadsafe(loop.call_later, delay, fn)

    def close(self) -> None:
        self.broken = True

        async def close() -> None:
            self._reader.cancel()
            await _close(self._ep)

        try:
            _run(close(), CLOSE_TIMEOUT)
        except Exception as exc:
            log.debug("closing the ucx endpoint: %r", exc)
