"""tensorwire: run tensor work on a GPU owned by another process, at close to hardware speed.

    import tensorwire as tw
    with tw.Server(listen=["ipc:///tmp/tw.sock"]) as server:
        with tw.Client(server.url) as gpu:
            c = gpu.matmul(a, b)
"""

from ._version import __version__
from .client import AsyncClient, Client, RemoteTensor
from .codec import exact
from .errors import (
    AuthError,
    ConnectionClosed,
    ProtocolError,
    QuotaExceeded,
    RemoteError,
    ServerBusy,
    SessionExpired,
    TensorwireError,
    TimeoutError,
    TransportError,
    VersionMismatch,
)
from .server import Server, register_op

__all__ = [
    "AsyncClient",
    "AuthError",
    "Client",
    "ConnectionClosed",
    "ProtocolError",
    "QuotaExceeded",
    "RemoteError",
    "RemoteTensor",
    "Server",
    "ServerBusy",
    "SessionExpired",
    "TensorwireError",
    "TimeoutError",
    "TransportError",
    "VersionMismatch",
    "__version__",
    "exact",
    "register_op",
]
