"""CUDA IPC without a GPU: times tensorwire's own work on that path (`call_floor.py
--ipc-standin`), with a CPU torch tensor in a shared file standing in for CUDA memory.

Only the CUDA calls are replaced. On the client: the "is it CUDA" checks, torch's storage share
and the interprocess event. On the server: opening the storage (it maps the file instead) and
the stream's wait on the event. Everything else is the real path: the IPC references in the
request, the server's imports cache and leases, the handler, the alias in the reply and the
client's view of its own tensor. The CUDA calls themselves take a few µs on a GPU machine
(`cuda_costs.py` times them there); this measures the rest, where no GPU is lent.

As a script it is the stand-in server (torch backend on the CPU):

    python benchmarks/_ipc_standin.py URL DIR
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

SRC = str(Path(__file__).resolve().parents[1] / "src")
FILE = "standin-storage"  # in DIR: the bytes both sides map
PID = 4242  # the producer pid the descriptor names (its ref-counter file is never opened)


def storage_map(nbytes: int) -> dict[str, Any]:
    """The storage half of a descriptor for the shared file, as torch's share would give it."""
    return {"v": 1, "dev": 0, "uuid": "GPU-00000000standin", "h": b"\x02c" + bytes(64),
            "so": 0, "ss": nbytes, "rc": f"/torch_{PID}_1_1", "ro": 0, "pid": PID}


def shared_tensor(directory: str, nbytes: int) -> Any:
    """The client's "CUDA" tensor: float32 over a file the stand-in server maps too."""
    import torch

    path = os.path.join(directory, FILE)
    t = torch.from_file(path, shared=True, size=nbytes, dtype=torch.uint8)
    return t.view(torch.float32)


def install_client(server_pid: int, client: Any) -> None:
    """Let `client` send torch CPU tensors as if they were CUDA memory shared by IPC."""
    from tensorwire.client import _cuda_ipc as cipc
    from tensorwire.codec import native_name

    torch = sys.modules["torch"]
    cipc._cuda_device = lambda obj: "cuda:0 (stand-in)" if isinstance(obj, torch.Tensor) else None
    cipc.exportable = lambda t: (t, native_name(t.dtype))
    cipc.share_storage = lambda t: storage_map(t.untyped_storage().nbytes())
    cipc.IpcSender.event_handle = lambda self, device: bytes(64)  # type: ignore[method-assign]
    client._ipc = cipc.IpcSender({"ipc": True, "pid": server_pid})


def serve(url: str, directory: str) -> None:
    import torch

    from tensorwire.channel._cuda import IpcImports, LeaseTable
    from tensorwire.server import _sessions
    from tensorwire.server._core import ServerCore

    def opener(desc: Any, **_: Any) -> Any:
        t = torch.from_file(os.path.join(directory, FILE), shared=True,
                            size=desc.storage_size, dtype=torch.uint8)
        return t.view(getattr(torch, desc.dtype)) if desc.dtype != "uint8" else t

    IpcImports._wait_event = lambda self, handle, base, stream: None  # type: ignore[method-assign]
    hello = _sessions.Sessions.hello

    def hello_with_ipc(self: Any, meta: dict[str, Any]) -> dict[str, Any]:
        reply = hello(self, meta)
        session = self._sessions.get(reply.get("session"))
        if session is not None:  # what a CUDA server gives a same-host session
            session.ipc = IpcImports(opener=opener,
                                     leases=LeaseTable(30.0, collect=lambda: None))
            session.ipc_refusal = ""
        return reply

    _sessions.Sessions.hello = hello_with_ipc  # type: ignore[method-assign]
    core = ServerCore([url], backend="torch", device="cpu")
    for sig in (signal.SIGTERM, signal.SIGINT):  # stop cleanly: sessions' shared memory goes
        signal.signal(sig, lambda *_: core.stop())
    try:
        print(f"tensorwire: listening on {core.bind()[0]}", flush=True)
        core.serve_forever()
    finally:
        core.close()


if __name__ == "__main__":
    sys.path.insert(0, SRC)
    serve(sys.argv[1], sys.argv[2])
