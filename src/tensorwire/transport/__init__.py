"""Transports: move frames between client and server, chosen by URL scheme."""

from ._auth import ClientKeys, ServerAuth, generate
from ._base import (
    Transport,
    get_transport,
    known_schemes,
    register_transport,
    scheme_of,
    wire_path,
)
from ._ucx import UcxConnection, UcxListener, UcxTransport
from ._zmq import HWM, IpcTransport, TcpTransport, client_socket, server_socket

__all__ = [
    "HWM",
    "ClientKeys",
    "ServerAuth",
    "generate",
    "IpcTransport",
    "TcpTransport",
    "Transport",
    "UcxConnection",
    "UcxListener",
    "UcxTransport",
    "client_socket",
    "get_transport",
    "known_schemes",
    "register_transport",
    "scheme_of",
    "server_socket",
    "wire_path",
]
