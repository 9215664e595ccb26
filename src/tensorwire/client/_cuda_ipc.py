"""torch CUDA arguments sent by CUDA IPC, and the results of such calls.

A same-host session whose server computes on CUDA (the hello reply says ``"ipc": true``)
sends a torch CUDA tensor given to ``call``/``submit`` as a CUDA IPC descriptor instead of
its bytes; the server computes on that memory. The tensor is kept alive until the reply, and
must not be modified meanwhile (as for any argument: it is not copied). Once its storage is
garbage-collected here, the next request tells the server ("fi") to drop its import, so the
memory goes back to torch's allocator without waiting for the import's lease to expire.

Results come back as torch CUDA tensors on the first CUDA argument's device: a view of an
argument (identity, reshape, transpose, ...) is rebuilt on the argument itself without any
copy; anything else travels device-to-host on the server as for every call and is copied
back onto the GPU here (the cost: the result's bytes cross PCIe twice).

Everywhere else a CUDA tensor is refused with the reason (server on the CPU or on another
host, a graph, memory torch cannot share such as expandable segments: ``CudaIpcRefused``);
nothing is copied through the host behind the caller's back. A ``__dlpack__`` object on CUDA
is taken as a torch tensor (``torch.from_dlpack``, no copy) and goes the same way, if torch
can share its memory.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

import numpy as np

from ..channel._cuda import ITEMSIZE, CudaIpcRefused, export_ipc
from ..codec import IpcRef, tree_map
from ..errors import ProtocolError

KDL_CUDA, KDL_CUDA_MANAGED = 2, 13  # DLPack device types of CUDA memory


class IpcSender:
    """This session's CUDA IPC: whether the server takes it, and which storages were sent."""

    def __init__(self, server_info: dict[str, Any]) -> None:
        self.enabled = server_info.get("ipc") is True
        reason = server_info.get("ipc_reason")
        self.reason = reason if isinstance(reason, str) and reason else (
            "the server does not accept CUDA IPC")
        self._sent: dict[tuple[bytes, int, int], Any] = {}  # import key -> storage weak ref
        self._lock = threading.Lock()

    def exporter(self, kind: str) -> Export | None:
        """The per-request exporter, or None when no CUDA tensor can be among the arguments."""
        if "torch" not in sys.modules:
            return None
        return Export(self, kind == "call")

    def remember(self, key: tuple[bytes, int, int], storage: Any) -> None:
        from torch.multiprocessing.reductions import StorageWeakRef

        with self._lock:
            self._sent[key] = StorageWeakRef(storage)  # type: ignore[no-untyped-call]

    def take_released(self) -> list[list[Any]] | None:
        """Storages sent earlier and garbage-collected since: the server may drop them."""
        if not self._sent:
            return None
        with self._lock:
            gone = [k for k, ref in self._sent.items() if ref.expired()]
            for k in gone:
                del self._sent[k]
        return [list(k) for k in gone] or None


class Export:
    """Turns the CUDA tensors of one request into IPC references, and keeps them alive."""

    def __init__(self, sender: IpcSender, is_call: bool) -> None:
        self.sender, self.is_call = sender, is_call
        self.sent: list[Any] = []  # the tensors, by reference index

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
        tensor = _as_torch(obj)
        desc = export_ipc(tensor)  # CudaIpcRefused says why memory cannot be shared
        self.sender.remember(desc.key, tensor.untyped_storage())
        self.sent.append(tensor)
        return IpcRef(len(self.sent) - 1, desc.to_wire())


def _cuda_device(obj: Any) -> str | None:
    """Where `obj` lives when that is CUDA memory (a torch tensor or DLPack object), else None."""
    torch = sys.modules["torch"]
    if isinstance(obj, torch.Tensor):
        return str(obj.device) if obj.device.type == "cuda" else None
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


def ipc_results(value: Any, sent: list[Any]) -> Any:
    """A reply to a request with CUDA IPC arguments, as torch CUDA tensors."""
    device = sent[0].device

    def restore(leaf: Any) -> Any:
        if isinstance(leaf, IpcRef):
            return _alias(leaf, sent)
        import torch

        if isinstance(leaf, np.ndarray):
            from ..codec import from_numpy

            leaf = from_numpy(leaf, "torch")
        return leaf.to(device) if isinstance(leaf, torch.Tensor) else leaf

    return tree_map(restore, value, _is_result_tensor)


def _is_result_tensor(value: Any) -> bool:
    if isinstance(value, IpcRef | np.ndarray):
        return True
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def _alias(ref: IpcRef, sent: list[Any]) -> Any:
    """The view of a sent tensor's storage that the server's result was; checked first."""
    import torch

    body = ref.body
    if not 0 <= ref.index < len(sent):
        raise ProtocolError(f"reply aliases CUDA argument {ref.index}; {len(sent)} were sent")
    dtype, offset = body.get("dt"), body.get("off")
    shape, strides = _ints(body.get("sh")), _ints(body.get("st"))
    if dtype not in ITEMSIZE or type(offset) is not int or offset < 0 or shape is None or (
            strides is None or len(shape) != len(strides)):
        raise ProtocolError("malformed CUDA IPC alias in the reply")
    base = sent[ref.index]
    size, itemsize = base.untyped_storage().nbytes(), ITEMSIZE[dtype]
    last = offset // itemsize + sum((n - 1) * s for n, s in zip(shape, strides, strict=True))
    if offset % itemsize or (0 not in shape and (last + 1) * itemsize > size):
        raise ProtocolError("CUDA IPC alias in the reply reaches past the argument's storage")
    out = torch.empty(0, dtype=getattr(torch, dtype), device=base.device)
    return out.set_(base.untyped_storage(), offset // itemsize, shape, strides)


def _ints(value: Any) -> list[int] | None:
    ok = isinstance(value, list) and len(value) <= 64 and all(
        type(v) is int and v >= 0 for v in value)
    return value if ok else None
