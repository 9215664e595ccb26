"""Exactly one reply per request: recent replies of a session, by request id.

A client that timed out resends the same request id (Lazy Pirate). The server
answers it from here instead of running the op twice. Clients acknowledge the
replies they got with their next request, so a reply is held only while it may
still be asked for again. Replies above max_reply (large tensors in frames, not
shared-memory descriptors) keep only the marker: holding their buffers even one
request longer cost ~2 ms per 10 MB round trip here (fresh pages instead of reused
ones); a retry of such a request gets a clear error, never a second execution.
Bounded by count and by bytes.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

TOO_LARGE = object()


class ReplyCache:
    def __init__(self, max_entries: int = 256, max_bytes: int = 16 << 20,
                 max_reply: int = 1 << 20) -> None:
        self.max_entries, self.max_bytes, self.max_reply = max_entries, max_bytes, max_reply
        self._replies: OrderedDict[int, Any] = OrderedDict()
        self._bytes = 0

    def get(self, rid: int) -> Any:
        """The frames answered to `rid`, TOO_LARGE, or None if it never ran (or is forgotten)."""
        return self._replies.get(rid)

    def put(self, rid: int, frames: list[Any]) -> None:
        size = sum(memoryview(f).nbytes for f in frames)
        kept: Any = frames if size <= self.max_reply else TOO_LARGE
        self._replies[rid] = kept
        self._bytes += size if kept is frames else 0
        while len(self._replies) > self.max_entries or self._bytes > self.max_bytes:
            _, old = self._replies.popitem(last=False)
            if old is not TOO_LARGE:
                self._bytes -= sum(memoryview(f).nbytes for f in old)

    def drop(self, rids: Any) -> None:
        """The client has these replies: keeping them would only hold their buffers."""
        if not isinstance(rids, list):
            return
        for rid in rids:
            old = self._replies.pop(rid, None) if type(rid) is int else None
            if old is not None and old is not TOO_LARGE:
                self._bytes -= sum(memoryview(f).nbytes for f in old)

    def __len__(self) -> int:
        return len(self._replies)
