"""References to CUDA memory shared by IPC (same host, same GPU).

On the wire a reference is ExtType(EXT_CUDA_IPC, [index, body]):

- in a request, ``index`` numbers the caller's CUDA tensors in the order they were sent and
  ``body`` is a CUDA IPC descriptor map (``channel._cuda.IpcDescriptor.to_wire()``);
- in a reply, ``body`` describes a view ``{"dt", "off" (bytes), "sh", "st"}`` of request
  argument ``index``: the result aliases memory the caller sent (identity, reshape, ...), so
  no byte travels back and the client rebuilds the view on its own tensor.

The codec checks only the shape of a reference (a bounded map); what the body says is
validated by whoever opens or rebuilds it, before anything is opened. Like a resident
handle, a reference is counted in ``handles``: a request holding one takes the server's
native path.
"""

from __future__ import annotations

from typing import Any

import msgpack

from ..errors import ProtocolError

EXT_CUDA_IPC = 4
CUDA_IPC_PATH = "cuda_ipc"
MAX_IPC_INDEX = 1 << 16  # CUDA tensors in one request
MAX_BODY_KEYS = 32
# Received references by their exact bytes: a client sends the same tensor call after call,
# and a server answers an identity with the same alias, so most are decoded once. Small ones
# only, and a bounded number: a peer sending ever new ones costs a few MB here at most.
RECEIVED_MAX = 1024
RECEIVED_MAX_BYTES = 1024
_received: dict[bytes, IpcRef] = {}


class IpcRef:
    """CUDA memory named by a descriptor (request) or a view of an argument (reply).

    ``raw`` is its msgpack form [index, body] once known: as received (the same bytes again
    are the same reference, which lets the server skip checking a descriptor it checked
    before), or as first packed (a client reuses its references: they are packed once).
    The body must not change once the reference was packed."""

    __slots__ = ("body", "index", "raw")

    def __init__(self, index: int, body: dict[str, Any], raw: bytes = b"") -> None:
        self.index, self.body, self.raw = index, body, raw

    def wire(self) -> list[Any]:
        return [self.index, self.body]

    def __repr__(self) -> str:
        return f"<CUDA IPC reference {self.index}>"


def received_ipc(data: bytes) -> IpcRef:
    """The reference packed as `data` (an ExtType's bytes), decoded and shape-checked once.

    The same bytes give the same object again: its body must be read only, as everywhere
    (what a body says is validated per session by whoever opens it, not here)."""
    ref = _received.get(data)
    if ref is None:
        ref = ipc_from_wire(msgpack.unpackb(data, raw=False), data)
        if len(data) <= RECEIVED_MAX_BYTES:
            if len(_received) >= RECEIVED_MAX:
                _received.clear()
            _received[data] = ref
    return ref


def ipc_from_wire(parts: Any, raw: bytes = b"") -> IpcRef:
    if not (isinstance(parts, list) and len(parts) == 2):
        raise ProtocolError("malformed CUDA IPC reference: expected [index, map]")
    index, body = parts
    if type(index) is not int or not 0 <= index < MAX_IPC_INDEX:
        raise ProtocolError(f"CUDA IPC reference index must be an int in [0, {MAX_IPC_INDEX})")
    if not isinstance(body, dict) or len(body) > MAX_BODY_KEYS:
        raise ProtocolError(f"CUDA IPC reference body must be a map of at most "
                            f"{MAX_BODY_KEYS} entries")
    return IpcRef(index, body, raw)
