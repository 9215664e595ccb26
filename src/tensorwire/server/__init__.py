"""Server: sessions, the op registry and backends, and the request loop."""

from ._core import ServerCore
from ._resident import Quotas
from ._server import Server
from .ops import OpRegistry, default_registry, make_backend, register_op

__all__ = [
    "OpRegistry",
    "Quotas",
    "Server",
    "ServerCore",
    "default_registry",
    "make_backend",
    "register_op",
]
