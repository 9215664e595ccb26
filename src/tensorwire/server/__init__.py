"""Server: sessions, the op registry and backends, and the request loop."""

from ._core import ServerCore
from ._server import Server
from .ops import OpRegistry, default_registry, make_backend, register_op

__all__ = ["OpRegistry", "Server", "ServerCore", "default_registry", "make_backend", "register_op"]
