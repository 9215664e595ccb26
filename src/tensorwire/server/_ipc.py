"""CUDA IPC on the server: which sessions may send it, opening arguments, answering results.

A session accepts CUDA IPC when its client runs on this host in another process and the
backend computes on CUDA (``ipc_refusal`` says why not otherwise; the hello reply carries it
so the client refuses CUDA tensors itself, with the reason). Every local session has an
``IpcImports`` (its opened storages under leases), reaped with the sessions and closed when
the session ends.

Results of a call with CUDA IPC arguments: a result that is a view of an argument's memory
(identity, reshape, transpose, ...) goes back as an ``IpcRef`` naming that argument and the
view; the client rebuilds it on its own tensor, so no byte moves. For a client that asked for
it (``cuda_results="map"``), a new result of ``EXPORT_MIN_BYTES`` or more is exported by CUDA
IPC in turn (``IpcExports``): the client maps this server's memory, and no byte crosses PCIe.
Everything else, including results sharing memory with any argument (a resident tensor,
say), is copied device-to-host as for every call and back onto the client's GPU there. A
result kept on the server (``out="remote"``) that aliases the client's memory is cloned
first: a resident tensor must not change when the client writes to its own tensor.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from ..channel._cuda import (
    CudaIpcRefused,
    IpcDescriptor,
    IpcImports,
    exportable,
    release_slot,
    share_storage,
    view_fields,
)
from ..codec import IpcRef, native_name
from ..errors import ProtocolError
from .ops import Backend

log = logging.getLogger("tensorwire.server")

EXPORT_MIN_BYTES = 1 << 20  # smaller results are copied: cheaper than a handle to open
EXPORT_TTL_S = 60.0  # an export the client has not acknowledged by then is taken back
MAX_ACKS = 4096


def ipc_refusal(local: bool, pid: int, device: str) -> str:
    """Why a session cannot send CUDA IPC arguments; "" when it can."""
    if not local:
        return "the client is on another host"
    if pid == os.getpid():
        return "the client runs inside the server's own process (CUDA IPC is between processes)"
    if not device.startswith("cuda"):
        return f"the server computes on {device}, not on a CUDA device"
    return ""


def session_imports(local: bool, pid: int) -> IpcImports | None:
    """The imports table of a local session (None for a client on another host)."""
    return IpcImports(expected_pid=pid) if local else None


class IpcExports:
    """This session's results exported by CUDA IPC, until the client says it opened them.

    Sharing takes a slot in this process's torch ref-counter file. The client's import holds
    it and gives it back when its tensor dies; torch keeps the memory out of reuse until
    then (``torch.cuda.ipc_collect()`` returns it afterwards), so the server keeps no
    reference. An export the client never acknowledges (it died, or lost the reply) would
    hold its memory for as long as this server lives: its slot is given back here when it
    expires, or when the session ends. ``share`` and ``release`` default to torch's.
    """

    def __init__(self, ttl: float = EXPORT_TTL_S, *,
                 share: Callable[[Any], dict[str, Any]] = share_storage,
                 release: Callable[[str, int], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl, self._share, self._clock = ttl, share, clock
        self._release = release or _release_own_slot
        self._pending: dict[tuple[str, int], float] = {}  # (counter file, slot) -> deadline
        self._lock = threading.Lock()

    def wants(self, value: Any) -> bool:
        """A CUDA tensor large enough to be worth a handle."""
        return bool(getattr(value, "is_cuda", False)
                    and value.numel() * value.element_size() >= EXPORT_MIN_BYTES)

    def export(self, tensor: Any) -> IpcRef:
        """The reply reference to `tensor`: a full descriptor (index unused)."""
        tensor, dtype = exportable(tensor)
        body = {**self._share(tensor), **view_fields(tensor, dtype)}
        with self._lock:
            self._pending[(body["rc"], body["ro"])] = self._clock() + self.ttl
        return IpcRef(0, body)

    def acknowledged(self, slots: Any) -> None:
        """The client opened these exports ("xa": [[counter file, slot], ...])."""
        if not isinstance(slots, list) or len(slots) > MAX_ACKS:
            raise ProtocolError(f"CUDA IPC acknowledgements must be a list of at most {MAX_ACKS}")
        with self._lock:
            for slot in slots:
                if not (isinstance(slot, list) and len(slot) == 2 and type(slot[0]) is str
                        and type(slot[1]) is int):
                    raise ProtocolError("CUDA IPC acknowledgement must be [counter file, slot]")
                self._pending.pop((slot[0], slot[1]), None)

    def reap(self) -> int:
        """Take back the exports not acknowledged in time; returns how many."""
        now = self._clock()
        with self._lock:
            dead = [k for k, deadline in self._pending.items() if deadline <= now]
            for k in dead:
                del self._pending[k]
        for rc, ro in dead:
            self._release(rc, ro)
        return len(dead)

    def close(self) -> None:
        """The session ended: take back every export it did not acknowledge."""
        with self._lock:
            dead, self._pending = list(self._pending), {}
        for rc, ro in dead:
            self._release(rc, ro)

    def __len__(self) -> int:
        return len(self._pending)


def _release_own_slot(ref_counter: str, slot: int) -> None:
    """Do what the client's import would have done on release: decrement our own slot, then
    let torch free what no consumer holds any more."""
    if not release_slot(ref_counter, slot):
        return
    try:
        import torch

        torch.cuda.ipc_collect()  # type: ignore[no-untyped-call]
    except Exception as exc:  # noqa: BLE001 (the memory stays reserved; nothing else to do)
        log.warning("could not take back a CUDA IPC export: %s", type(exc).__name__)


class IpcCall:
    """The CUDA IPC arguments of one call: opened on demand, results answered by alias or
    exported."""

    def __init__(self, rid: int, imports: IpcImports | None, refusal: str,
                 backend: Backend, exports: IpcExports | None = None) -> None:
        self.rid, self.imports, self.refusal, self.backend = rid, imports, refusal, backend
        self.exports = exports
        self.opened: list[tuple[int, Any]] = []  # (argument index, tensor)
        self.storages: set[int] = set()  # every native argument's storage (no export of those)

    def open(self, ref: IpcRef) -> Any:
        """The argument as a tensor on this server's GPU; ProtocolError names any problem."""
        try:
            if self.refusal or self.imports is None:
                IpcDescriptor.from_wire(ref.body)  # a malformed one hears what is wrong first
                raise CudaIpcRefused(f"CUDA IPC is not accepted here: {self.refusal}; move "
                                     "the tensor to the CPU before sending it")
            tensor = self.imports.open(ref.body, stream=getattr(self.backend, "stream", None),
                                       raw=ref.raw)
        except CudaIpcRefused as exc:
            raise ProtocolError(f"request {self.rid}: CUDA IPC argument {ref.index}: {exc}"
                                ) from None
        self.opened.append((ref.index, tensor))
        return self.backend.from_wire(tensor)  # as is on the backend's GPU; else copied there

    def argument(self, value: Any) -> Any:
        """Note a native argument's storage: a result sharing it is never exported."""
        if hasattr(value, "untyped_storage"):
            self.storages.add(value.untyped_storage().data_ptr())
        return value

    def to_reply(self, value: Any) -> Any:
        """A result for the client: an alias of an argument, an export of a new CUDA result,
        else host bytes as usual."""
        if not self.opened:
            return self.backend.to_wire(value)
        alias = self._alias(value)
        if alias is not None:
            return alias
        if (self.exports is not None and self.exports.wants(value)
                and value.untyped_storage().data_ptr() not in self.storages):
            try:
                return self.exports.export(value)
            except CudaIpcRefused as exc:  # this server's memory cannot be shared: bytes
                log.debug("result not exported by CUDA IPC: %s", exc)
        return self.backend.to_wire(value)

    def owned(self, value: Any) -> Any:
        """A result to keep on the server: never one that aliases the client's memory."""
        return value.clone() if self.opened and self._alias(value) is not None else value

    def _alias(self, value: Any) -> IpcRef | None:
        if not hasattr(value, "untyped_storage") or value.is_conj() or value.is_neg():
            return None  # not a torch tensor, or a lazy view the client would not see
        for index, arg in self.opened:
            if value is arg:  # the argument itself (identity): no storage objects to compare
                return _view_ref(index, value, value.storage_offset() * value.element_size())
        storage = value.untyped_storage()
        for index, arg in self.opened:
            base = arg.untyped_storage()
            if storage.data_ptr() == base.data_ptr() and storage.device == base.device:
                # bytes into the client's storage
                return _view_ref(index, value, value.data_ptr() - base.data_ptr())
        return None


def _view_ref(index: int, value: Any, offset: int) -> IpcRef:
    """A result that is a view of argument `index`'s memory, `offset` bytes into it."""
    return IpcRef(index, {"dt": native_name(value.dtype), "off": offset,
                          "sh": list(value.shape), "st": list(value.stride())})
