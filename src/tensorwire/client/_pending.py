"""Requests in flight on one connection: futures keyed by request id."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import TensorwireError

if TYPE_CHECKING:
    from ._cuda_ipc import Export


@dataclass(slots=True)
class Pending:
    """One request in flight: its future, deadline, and what the trace needs."""

    rid: int
    future: Future[Any] | None  # only for submit(); call() reads the outcome directly
    deadline: float
    kind: str | None
    request_paths: list[str]
    serialize: float
    sent_at_start: float
    sent_at: float = 0.0
    send: float = 0.0
    carrier: str = "zmq"  # how the messages travelled: "zmq", "pipe" or "ucx"
    keep: list[Any] = field(default_factory=list)  # arena blocks in flight with the request
    sent: Export | None = None  # CUDA tensors sent by IPC: alive until the reply
    done: bool = False
    value: Any = None
    error: BaseException | None = None

    def settle(self, value: Any = None, error: BaseException | None = None) -> None:
        if self.done:
            return
        self.done, self.value, self.error = True, value, error
        if self.future is None:
            return
        try:
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(value)
        except InvalidStateError:
            pass  # the caller cancelled its future; the reply is simply dropped

    def outcome(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value


class PendingTable:
    """Thread-safe map of request id -> Pending, with deadline expiry."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[int, Pending] = {}

    def add(self, rid: int, item: Pending) -> None:
        with self._lock:
            self._items[rid] = item

    def pop(self, rid: Any) -> Pending | None:
        with self._lock:
            return self._items.pop(rid, None)

    def next_deadline(self) -> float | None:
        with self._lock:
            return min((p.deadline for p in self._items.values()), default=None)

    def expire(self, error: type[TensorwireError]) -> None:
        """Fail every request whose deadline has passed."""
        now = time.monotonic()
        with self._lock:
            late = [rid for rid, p in self._items.items() if p.deadline <= now]
            expired = [(rid, self._items.pop(rid)) for rid in late]
        for rid, item in expired:
            _fail(item, error(f"request {rid}: no reply within the timeout"))

    def fail_all(self, exc: TensorwireError) -> None:
        with self._lock:
            items, self._items = list(self._items.values()), {}
        for item in items:
            _fail(item, exc)


def _fail(item: Pending, exc: BaseException) -> None:
    item.settle(error=exc)
