"""torch CUDA arguments sent by CUDA IPC, and the results of such calls.

A same-host session whose server computes on CUDA (the hello reply says ``"ipc": true``)
sends a torch CUDA tensor given to ``call``/``submit`` as a CUDA IPC descriptor instead of
its bytes; the server computes on that memory. The tensor is kept alive until the reply, and
must not be modified meanwhile (as for any argument: it is not copied). Once its storage is
garbage-collected here, the next request tells the server ("fi") to drop its import, so the
memory goes back to torch's allocator without waiting for the import's lease to expire.

Results come back as torch CUDA tensors on the first CUDA argument's device: a view of an
argument (identity, reshape, transpose, ...) is rebuilt on the argument itself without any
copy. Anything else travels device-to-host on the server as for every call and is copied back
onto the GPU here: its bytes cross PCIe twice. With ``Client(cuda_results="map")`` a new result
of 1 MB or more is instead the server's own memory, exported by CUDA IPC and mapped here
(acknowledged with the next request, "xa"; dropping the tensor gives it back). Such a tensor
is memory torch received by IPC, which it may refuse to share again: ``.clone()`` it before
sending it back. That mode has run only against CPU stand-ins so far.

Everywhere else a CUDA tensor is refused with the reason (server on the CPU or on another
host, a graph, memory torch cannot share such as expandable segments: ``CudaIpcRefused``);
nothing is copied through the host behind the caller's back. A ``__dlpack__`` object on CUDA
is taken as a torch tensor (``torch.from_dlpack``, no copy) and goes the same way, if torch
can share its memory.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..channel._cuda import (
    ITEMSIZE,
    CudaIpcRefused,
    IpcDescriptor,
    check_ref_counter_file,
    exportable,
    open_ipc,
    share_storage,
    view_fields,
    view_on,
)
from ..codec import IpcRef, native_name, tree_map
from ..errors import ProtocolError

KDL_CUDA, KDL_CUDA_MANAGED = 2, 13  # DLPack device types of CUDA memory
# Client(cuda_results=): new results of a call with CUDA arguments are copied back onto the
# GPU ("copy"), or, from 1 MB up, mapped from the server's memory by CUDA IPC ("map").
CUDA_RESULTS = ("copy", "map")
# A shared storage unused for this long is shared anew (a fresh ref-counter slot) before it
# is sent again: the server's import of it may have expired (its lease: 30 s, renewed on
# use), and reopening an import on a slot the old one already gave back would count it twice.
RESHARE_AFTER_S = 10.0
RELEASE_SCAN = 16  # shared storages checked for release per request
MAX_REFS = 8  # references kept per shared storage (~1 KB each): views and positions sent


class IpcSender:
    """This session's CUDA IPC: whether the server takes it, and which storages were sent.

    A storage is shared once (torch's ``_share_cuda_`` takes a producer ref-counter slot and
    makes an IPC event each time, and the server would open each event anew): its descriptor
    is reused for every later tensor on it, for as long as it lives here. Ordering comes from
    one interprocess event per device, recorded on the current stream before each request
    that sends tensors of that device; the server opens it once and waits on it.
    """

    def __init__(self, server_info: dict[str, Any]) -> None:
        self.enabled = server_info.get("ipc") is True
        reason = server_info.get("ipc_reason")
        self.reason = reason if isinstance(reason, str) and reason else (
            "the server does not accept CUDA IPC")
        self._shared: dict[int, _Shared] = {}  # storage (its StorageImpl address) -> export
        pid = server_info.get("pid")
        self.server_pid = pid if type(pid) is int and pid > 0 else None
        self._acks: list[list[Any]] = []  # exported results opened: [counter file, slot]
        self._events: dict[int, tuple[Any, bytes]] = {}  # device -> (IPC event, its handle)
        self._lock = threading.Lock()

    def exporter(self, kind: str) -> Export | None:
        """The per-request exporter, or None when no CUDA tensor can be among the arguments."""
        if "torch" not in sys.modules:
            return None
        return Export(self, kind == "call")

    def storage_map(self, tensor: Any) -> dict[str, Any]:
        """The storage half of the tensor's descriptor: shared on first use, then reused."""
        return self.shared(tensor).wire

    def shared(self, tensor: Any) -> _Shared:
        """The tensor's storage as shared with the server: on first use, then reused."""
        storage = tensor.untyped_storage()
        # The StorageImpl's address: our weak reference keeps it from being reused by
        # another storage until the entry is taken out (take_released).
        key = storage._cdata
        now = time.monotonic()
        with self._lock:
            shared = self._shared.get(key)
            if shared is not None and now - shared.used < RESHARE_AFTER_S:
                shared.used = now
                return shared
        wire = share_storage(tensor)  # CudaIpcRefused says why memory cannot be shared
        from torch.multiprocessing.reductions import StorageWeakRef  # first use only

        shared = _Shared(StorageWeakRef(storage), wire, now)  # type: ignore[no-untyped-call]
        with self._lock:
            self._shared[key] = shared
        return shared

    def event_handle(self, device: int) -> bytes:
        """Record this device's IPC event on its current stream; its handle for the server."""
        import torch

        with self._lock:
            found = self._events.get(device)
            if found is None:
                event = torch.cuda.Event(interprocess=True)  # type: ignore[no-untyped-call]
                event.record(torch.cuda.current_stream(device))
                handle = bytes(event.ipc_handle())  # type: ignore[no-untyped-call]
                found = self._events[device] = (event, handle)
                return found[1]
        found[0].record(torch.cuda.current_stream(device))
        return found[1]

    def open_result(self, body: dict[str, Any]) -> Any:
        """A result the server exported by CUDA IPC, mapped here as a torch CUDA tensor."""
        if self.server_pid is None:
            raise ProtocolError("the server exported a CUDA result without naming its process")
        try:
            desc = IpcDescriptor.from_wire(body)
            check_ref_counter_file(desc, expected_pid=self.server_pid)
        except CudaIpcRefused as exc:  # the server takes its slot back when it expires
            raise ProtocolError(f"cannot map the server's CUDA result: {exc}") from None
        try:
            # From here the slot is ours: a failure gives it back, and so does the tensor
            # when it dies. Either way the server must not take it back too: acknowledge.
            return open_ipc(desc, expected_pid=self.server_pid)
        except CudaIpcRefused as exc:
            raise ProtocolError(f"cannot map the server's CUDA result: {exc}") from None
        finally:
            with self._lock:
                self._acks.append([desc.ref_counter, desc.ref_offset])

    def take_acks(self) -> list[list[Any]] | None:
        """Exported results opened since the last request: the server forgets them."""
        if not self._acks:
            return None
        with self._lock:
            acks, self._acks = self._acks, []
        return acks

    def take_released(self) -> list[list[Any]] | None:
        """Storages shared earlier and garbage-collected since: the server may drop them.

        Looks at RELEASE_SCAN of them per request, the longest unchecked first: a client
        holding thousands of shared storages does not pay for all of them on every call,
        and every one is looked at within a few requests."""
        shared = self._shared
        if not shared:
            return None
        keys = []
        with self._lock:
            for _ in range(min(RELEASE_SCAN, len(shared))):
                key, entry = next(iter(shared.items()))
                if entry.ref.expired():
                    del shared[key]
                    keys.append(_import_key(entry.wire))
                else:  # dicts keep insertion order: to the back of the line
                    del shared[key]
                    shared[key] = entry
        return keys or None


@dataclass
class _Shared:
    ref: Any  # StorageWeakRef: expired once the client holds no tensor on the storage
    wire: dict[str, Any]  # the storage half of the descriptor
    used: float  # when it was last sent (time.monotonic)
    refs: dict[tuple[Any, ...], IpcRef] = field(default_factory=dict)  # see reference()

    def reference(self, index: int, tensor: Any, dtype: str, event: bytes) -> IpcRef:
        """`tensor` (on this storage) as argument `index`: one IpcRef per view and position,
        which the codec packs once, since clients send the same tensor call after call."""
        view = (index, tensor.storage_offset(), dtype, tensor.shape, tensor.stride(), event)
        ref = self.refs.get(view)
        if ref is None:
            if len(self.refs) >= MAX_REFS:
                self.refs.clear()
            body = {**self.wire, **view_fields(tensor, dtype), "ev": event}
            ref = self.refs[view] = IpcRef(index, body)
        return ref


def _import_key(wire: dict[str, Any]) -> list[Any]:
    """What the server's imports are keyed and released by: [handle, offset, size]."""
    return [wire["h"], wire["so"], wire["ss"]]


class Export:
    """Turns the CUDA tensors of one request into IPC references, and keeps them alive."""

    def __init__(self, sender: IpcSender, is_call: bool) -> None:
        self.sender, self.is_call = sender, is_call
        self.sent: list[Any] = []  # the tensors, by reference index
        self.refs: list[IpcRef] = []  # and the references they went as
        self._events: dict[int, bytes] = {}  # device -> event handle, recorded once

    def __call__(self, obj: Any) -> IpcRef | None:
        if type(obj) is np.ndarray:
            return None
        where = _cuda_device(obj)
        if where is None:
            return None
        if not self.sender.enabled:
            raise ProtocolError(f"a tensor on {where} cannot be sent by CUDA IPC: "
                                f"{self.sender.reason}; move it to the CPU (.cpu()) first")
        if not self.is_call:
            raise ProtocolError(f"a tensor on {where} can be sent by CUDA IPC only to "
                                "call/submit; move it to the CPU (.cpu()) for put and graphs")
        tensor, dtype = exportable(_as_torch(obj))
        shared = self.sender.shared(tensor)
        device = tensor.device.index
        event = self._events.get(device)
        if event is None:
            event = self._events[device] = self.sender.event_handle(device)
        self.sent.append(tensor)
        ref = shared.reference(len(self.sent) - 1, tensor, dtype, event)
        self.refs.append(ref)
        return ref


def _cuda_device(obj: Any) -> object | None:
    """Where `obj` lives when that is CUDA memory (a torch tensor or DLPack object), else None.

    Only formatted into messages: a torch tensor's own device object stands for itself (what
    it prints is its name), so the usual case builds no string per call."""
    torch = sys.modules["torch"]
    if isinstance(obj, torch.Tensor):
        return obj.device if obj.is_cuda else None
    device = getattr(obj, "__dlpack_device__", None)
    if device is None or isinstance(obj, type):
        return None
    try:
        kind, index = device()
    except Exception:  # noqa: BLE001 (not a usable DLPack object: the codec will say so)
        return None
    return f"cuda:{index} (DLPack)" if kind in (KDL_CUDA, KDL_CUDA_MANAGED) else None


def _as_torch(obj: Any) -> Any:
    torch = sys.modules["torch"]
    if isinstance(obj, torch.Tensor):
        return obj
    try:
        return torch.from_dlpack(obj)  # no copy: the same CUDA memory
    except (RuntimeError, TypeError, BufferError) as exc:
        raise CudaIpcRefused(f"cannot take {type(obj).__name__} on CUDA as a torch tensor "
                             f"via __dlpack__: {exc}") from None


def ipc_results(value: Any, sent: list[Any],
                open_result: Callable[[dict[str, Any]], Any] | None = None,
                refs: list[IpcRef] | None = None) -> Any:
    """A reply to a request with CUDA IPC arguments, as torch CUDA tensors. A reference with
    a handle ("h") is a result the server exported: `open_result` maps it. `refs` are the
    references the `sent` tensors went as (they say each one's view); without them, each
    tensor's view is read from torch."""
    if refs is None:
        refs = [IpcRef(i, view_fields(t, native_name(t.dtype))) for i, t in enumerate(sent)]

    def restore(leaf: Any) -> Any:
        if isinstance(leaf, IpcRef):
            if "h" not in leaf.body:
                return _alias(leaf, sent, refs)
            if open_result is None:
                raise ProtocolError("the reply holds an exported CUDA result; none was expected")
            return open_result(leaf.body)
        import torch

        if isinstance(leaf, np.ndarray):
            from ..codec import from_numpy

            leaf = from_numpy(leaf, "torch")
        return leaf.to(sent[0].device) if isinstance(leaf, torch.Tensor) else leaf

    return tree_map(restore, value, _is_result_tensor)


def _is_result_tensor(value: Any) -> bool:
    if isinstance(value, (IpcRef, np.ndarray)):  # a tuple: no union object built per call
        return True
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def _alias(ref: IpcRef, sent: list[Any], refs: list[IpcRef]) -> Any:
    """The view of a sent tensor's storage that the server's result was; checked first."""
    body = ref.body
    if not 0 <= ref.index < len(sent):
        raise ProtocolError(f"reply aliases CUDA argument {ref.index}; {len(sent)} were sent")
    base = sent[ref.index]
    if _is_sent_view(body, refs[ref.index].body):
        # The argument as sent (identity, the usual case): our own tensor is the bounds
        # check. detach() is torch's cheapest new tensor on the same memory and view, and
        # is exact here: a sent tensor never requires grad (exportable detached it).
        return base.detach()
    dtype, offset = body.get("dt"), body.get("off")
    shape, strides = _ints(body.get("sh")), _ints(body.get("st"))
    if dtype not in ITEMSIZE or type(offset) is not int or offset < 0 or shape is None or (
            strides is None or len(shape) != len(strides)):
        raise ProtocolError("malformed CUDA IPC alias in the reply")
    size, itemsize = base.untyped_storage().nbytes(), ITEMSIZE[dtype]
    last = offset // itemsize + sum((n - 1) * s for n, s in zip(shape, strides, strict=True))
    if offset % itemsize or (0 not in shape and (last + 1) * itemsize > size):
        raise ProtocolError("CUDA IPC alias in the reply reaches past the argument's storage")
    return view_on(base, dtype, offset // itemsize, shape, strides)


def _is_sent_view(body: dict[str, Any], sent: dict[str, Any]) -> bool:
    """Whether an alias describes the argument as its descriptor `sent` gave it (offset in
    elements there, in bytes here): same dtype, offset, shape and strides. Equal values
    only: nothing of the body is used when it does."""
    dtype: str = sent["dt"]
    return bool(body.get("sh") == sent["sh"] and body.get("st") == sent["st"]
                and body.get("dt") == dtype and body.get("off") == sent["off"] * ITEMSIZE[dtype])


def _ints(value: Any) -> list[int] | None:
    if not (isinstance(value, list) and len(value) <= 64):
        return None
    for v in value:  # a loop, not all() over a generator: half the cost for a short list
        if type(v) is not int or v < 0:
            return None
    return value
