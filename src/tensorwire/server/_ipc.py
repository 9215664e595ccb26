"""CUDA IPC on the server: which sessions may send it, opening arguments, answering results.

A session accepts CUDA IPC when its client runs on this host in another process and the
backend computes on CUDA (``ipc_refusal`` says why not otherwise; the hello reply carries it
so the client refuses CUDA tensors itself, with the reason). Every local session has an
``IpcImports`` (its opened storages under leases), reaped with the sessions and closed when
the session ends.

Results of a call with CUDA IPC arguments: a result that is a view of an argument's memory
(identity, reshape, transpose, ...) goes back as an ``IpcRef`` naming that argument and the
view; the client rebuilds it on its own tensor, so no byte moves. Any other result is copied
device-to-host as for every call (into the client's arena when it has one), and the client
copies it back onto its GPU: two PCIe crossings of the result's bytes, kept because it needs
no server-side export, lease or cleanup protocol. A result kept on the server
(``out="remote"``) that aliases the client's memory is cloned first: a resident tensor must
not change when the client writes to its own tensor.
"""

from __future__ import annotations

import os
from typing import Any

from ..channel._cuda import CudaIpcRefused, IpcDescriptor, IpcImports
from ..codec import IpcRef
from ..errors import ProtocolError
from .ops import Backend


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


class IpcCall:
    """The CUDA IPC arguments of one call: opened on demand, results answered by alias."""

    def __init__(self, rid: int, imports: IpcImports | None, refusal: str,
                 backend: Backend) -> None:
        self.rid, self.imports, self.refusal, self.backend = rid, imports, refusal, backend
        self.opened: list[tuple[int, Any]] = []  # (argument index, tensor)

    def open(self, ref: IpcRef) -> Any:
        """The argument as a tensor on this server's GPU; ProtocolError names any problem."""
        try:
            if self.refusal or self.imports is None:
                IpcDescriptor.from_wire(ref.body)  # a malformed one hears what is wrong first
                raise CudaIpcRefused(f"CUDA IPC is not accepted here: {self.refusal}; move "
                                     "the tensor to the CPU before sending it")
            tensor = self.imports.open(ref.body, stream=getattr(self.backend, "stream", None))
        except CudaIpcRefused as exc:
            raise ProtocolError(f"request {self.rid}: CUDA IPC argument {ref.index}: {exc}"
                                ) from None
        self.opened.append((ref.index, tensor))
        return self.backend.from_wire(tensor)  # as is on the backend's GPU; else copied there

    def to_reply(self, value: Any) -> Any:
        """A result for the client: an alias of an argument, else host bytes as usual."""
        alias = self._alias(value) if self.opened else None
        return alias if alias is not None else self.backend.to_wire(value)

    def owned(self, value: Any) -> Any:
        """A result to keep on the server: never one that aliases the client's memory."""
        return value.clone() if self.opened and self._alias(value) is not None else value

    def _alias(self, value: Any) -> IpcRef | None:
        if not hasattr(value, "untyped_storage") or value.is_conj() or value.is_neg():
            return None  # not a torch tensor, or a lazy view the client would not see
        storage = value.untyped_storage()
        for index, arg in self.opened:
            base = arg.untyped_storage()
            if storage.data_ptr() == base.data_ptr() and storage.device == base.device:
                offset = value.data_ptr() - base.data_ptr()  # bytes into the client's storage
                dtype = str(value.dtype).removeprefix("torch.")
                return IpcRef(index, {"dt": dtype, "off": offset, "sh": list(value.shape),
                                      "st": list(value.stride())})
        return None
