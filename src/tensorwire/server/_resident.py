"""Resident tensors: kept on the server (on its device) between requests.

Each session has its own store; a handle id is a random 63-bit number, so a
handle from another session is indistinguishable from one never issued. Uploads
with `cache=True` go through a server-wide content cache keyed by a hash the
server recomputes itself, so one client cannot plant bytes under another's hash.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..codec import HandleRef, content_digest
from ..errors import ProtocolError, QuotaExceeded, TensorwireError
from .ops import Backend


class UnknownHandle(TensorwireError):
    """A handle this session does not hold (freed, expired, or never its own)."""


@dataclass(frozen=True)
class Quotas:
    """Per-client limits; exceeding one is a clear QuotaExceeded for that client only."""

    resident_bytes: int = 1 << 40
    handles: int = 100_000
    inflight: int = 256  # requests queued per connection (below the queue: no one fills it)


@dataclass
class _Cached:
    tensor: Any
    refs: int


class ContentCache:
    """Server-wide tensors by content digest, shared by every session that uploaded them."""

    def __init__(self) -> None:
        self._entries: dict[str, _Cached] = {}

    def acquire(self, digest: str) -> Any | None:
        entry = self._entries.get(digest)
        if entry is None:
            return None
        entry.refs += 1
        return entry.tensor

    def insert(self, digest: str, tensor: Any) -> Any:
        entry = self._entries.setdefault(digest, _Cached(tensor, 0))
        entry.refs += 1
        return entry.tensor

    def release(self, digest: str) -> None:
        entry = self._entries.get(digest)
        if entry is not None:
            entry.refs -= 1
            if entry.refs <= 0:
                del self._entries[digest]

    def __len__(self) -> int:
        return len(self._entries)


@dataclass
class _Resident:
    tensor: Any
    digest: str | None


class ResidentStore:
    """One session's resident tensors."""

    def __init__(self, backend: Backend, cache: ContentCache, quotas: Quotas) -> None:
        self.backend = backend
        self.cache = cache
        self.quotas = quotas
        self._tensors: dict[int, _Resident] = {}
        self.nbytes = 0

    def add(self, tensor: Any, digest: str | None = None) -> HandleRef:
        self.check_quota(_nbytes(tensor))
        hid = secrets.randbits(63)
        self._tensors[hid] = _Resident(tensor, digest)
        self.nbytes += _nbytes(tensor)
        return self._ref(hid, tensor)

    def upload(self, arr: np.ndarray, digest: str | None) -> HandleRef:
        """Keep a copy of a received array (its wire buffer is reused after the reply)."""
        self.check_quota(arr.nbytes)  # before copying anything
        if digest is not None:
            if content_digest(arr) != digest:
                raise ProtocolError("uploaded bytes do not match their content hash")
            cached = self.cache.acquire(digest)
            tensor = cached if cached is not None else self.cache.insert(digest, self._own(arr))
            return self.add(tensor, digest)
        return self.add(self._own(arr))

    def check_quota(self, nbytes: int) -> None:
        """QuotaExceeded before anything is kept beyond this session's limits."""
        if len(self._tensors) >= self.quotas.handles:
            raise QuotaExceeded(f"resident tensor quota reached ({self.quotas.handles} handles)")
        if self.nbytes + nbytes > self.quotas.resident_bytes:
            raise QuotaExceeded(
                f"resident memory quota: {self.nbytes} + {nbytes} bytes would exceed "
                f"{self.quotas.resident_bytes}"
            )

    def adopt_cached(self, digest: str) -> HandleRef | None:
        """A handle to an identical tensor already on the server, if there is one."""
        tensor = self.cache.acquire(digest)
        return None if tensor is None else self.add(tensor, digest)

    def get(self, ref: HandleRef) -> Any:
        entry = self._tensors.get(ref.hid)
        if entry is None:
            raise UnknownHandle(f"unknown tensor handle {ref.hid}: freed, expired, or not yours")
        return self.backend.shared_use(entry.tensor)  # read by the running request

    def free(self, hids: Any) -> None:
        if not isinstance(hids, list):
            raise ProtocolError("handles to free must be a list of ids")
        for hid in hids:
            entry = self._tensors.pop(hid, None) if type(hid) is int else None
            if entry is not None:
                self.nbytes -= _nbytes(entry.tensor)
                if entry.digest is not None:
                    self.cache.release(entry.digest)

    def clear(self) -> None:
        self.free(list(self._tensors))

    def __len__(self) -> int:
        return len(self._tensors)

    def _own(self, arr: np.ndarray) -> Any:
        native = self.backend.from_wire(arr)
        # from_wire may share the wire buffer (CPU); that buffer is reused after the reply.
        if _shares(native, arr):
            native = native.copy() if isinstance(native, np.ndarray) else native.clone()
        return native

    def _ref(self, hid: int, tensor: Any) -> HandleRef:
        dtype = str(tensor.dtype).removeprefix("torch.")
        device = str(getattr(tensor, "device", "cpu"))
        return HandleRef(hid, tuple(tensor.shape), dtype, device)


def _nbytes(tensor: Any) -> int:
    if isinstance(tensor, np.ndarray):
        return int(tensor.nbytes)
    return int(tensor.numel() * tensor.element_size())


def _shares(native: Any, arr: np.ndarray) -> bool:
    if isinstance(native, np.ndarray):
        return bool(np.may_share_memory(native, arr))
    ptr = getattr(native, "data_ptr", None)
    if ptr is None or str(native.device) != "cpu":
        return False
    start = arr.__array_interface__["data"][0]
    return bool(start <= ptr() < start + max(arr.nbytes, 1))
