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

from ..errors import ProtocolError

EXT_CUDA_IPC = 4
CUDA_IPC_PATH = "cuda_ipc"
MAX_IPC_INDEX = 1 << 16  # CUDA tensors in one request
MAX_BODY_KEYS = 32


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
