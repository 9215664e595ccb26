"""`submit`: a pump thread that keeps many requests in flight on one ZeroMQ socket.

Requests are queued by any thread and sent by the pump, which settles their futures as the
replies come. Lazy Pirate, as for `call`: when a request has heard nothing for its share of
the timeout, the pump drops its socket, connects anew and resends every request still
unanswered under the same ids; the server answers those that already ran from its reply
cache, so none runs twice.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import zmq

from ..errors import TimeoutError
from ._pending import Pending

if TYPE_CHECKING:
    from ._client import Client

NEVER = float("inf")  # a last attempt is not resent: it waits for its deadline


@dataclass
class _Submitted:
    """A submitted request the pump keeps for a resend until it is answered."""

    item: Pending
    frames: list[Any]
    resend_at: float
    attempt: int


class SubmitPump:
    """The client's pump thread, started by the first `submit`."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self._outbox: deque[tuple[Pending, list[Any]]] = deque()
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopping = False

    def submit(self, item: Pending, frames: list[Any]) -> None:
        """Queue a request (already registered as pending) for the pump to send."""
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._loop, daemon=True)
                    self._thread.start()
        self._outbox.append((item, frames))
        os.eventfd_write(self._wake, 1)

    def stop(self) -> None:
        """End the thread (if it ever started) and close the wake-up descriptor."""
        self._stopping = True
        os.eventfd_write(self._wake, 1)
        if self._thread is not None:
            self._thread.join()
        os.close(self._wake)

    def _loop(self) -> None:
        client = self.client
        sock = client._new_socket()
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._wake, zmq.POLLIN)
        inflight: dict[int, _Submitted] = {}
        while not self._stopping:
            times = [s.resend_at for s in inflight.values() if s.resend_at != NEVER]
            deadline = client._pending.next_deadline()
            if deadline is not None:
                times.append(deadline)
            wait_ms = int(max(min(times) - time.monotonic(), 0) * 1000) if times else None
            events = dict(poller.poll(wait_ms))
            if self._wake in events:
                os.eventfd_read(self._wake)
                self._send_outbox(sock, inflight)
            while sock in events:
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                client._complete(frames, client._pending.pop)
            client._pending.expire(TimeoutError)
            for rid in [rid for rid, s in inflight.items() if s.item.done]:
                del inflight[rid]
            if any(s.resend_at <= time.monotonic() for s in inflight.values()):
                poller.unregister(sock)
                client._discard_socket(sock)
                sock = client._new_socket()  # a fresh connection for the resends
                poller.register(sock, zmq.POLLIN)
                for rid in sorted(inflight):
                    self._resend(sock, inflight[rid])

    def _send_outbox(self, sock: zmq.Socket[bytes], inflight: dict[int, _Submitted]) -> None:
        while self._outbox:
            item, frames = self._outbox.popleft()
            sock.send_multipart(frames, copy=False)
            item.sent_at = time.perf_counter()
            item.send = item.sent_at - item.sent_at_start
            inflight[item.rid] = _Submitted(item, frames, self._resend_at(item, 0), 0)

    def _resend(self, sock: zmq.Socket[bytes], sub: _Submitted) -> None:
        sub.attempt += 1
        sub.resend_at = self._resend_at(sub.item, sub.attempt)
        sock.send_multipart(sub.frames, copy=False)

    def _resend_at(self, item: Pending, attempt: int) -> float:
        """When to give up waiting on this attempt: its share of the time left (the last
        attempt waits for the deadline, where the request expires instead)."""
        left = self.client.retries + 1 - attempt
        if left <= 1:
            return NEVER
        return time.monotonic() + (item.deadline - time.monotonic()) / left
