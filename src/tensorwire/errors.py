"""The one exception tree of tensorwire.

    TensorwireError
    ├── RemoteError          the op failed on the server (.remote_type, .remote_message)
    ├── ProtocolError        a malformed or invalid message, on either side
    │   └── VersionMismatch  client and server speak different protocol versions
    ├── TimeoutError         no reply in time (also a builtin TimeoutError)
    ├── ConnectionClosed     the peer went away
    │   └── SessionExpired   the server no longer knows this client's session (restarted)
    ├── ServerBusy           the server's queue is full; retry later
    ├── TransportError       no transport for a URL, or it cannot be used here
    ├── AuthError            authentication failed
    └── QuotaExceeded        a per-client limit was hit

Low-level errors (zmq, OSError, torch) are mapped to these at one boundary each,
never caught all over. Messages sent to a client never contain server paths,
segment names or keys.
"""

from __future__ import annotations

import builtins

__all__ = [
    "AuthError",
    "ConnectionClosed",
    "ProtocolError",
    "QuotaExceeded",
    "RemoteError",
    "ServerBusy",
    "SessionExpired",
    "TensorwireError",
    "TimeoutError",
    "TransportError",
    "VersionMismatch",
]


class TensorwireError(Exception):
    """Base of every error tensorwire raises."""


class RemoteError(TensorwireError):
    """The op failed on the server."""

    def __init__(self, remote_type: str, remote_message: str) -> None:
        super().__init__(f"{remote_type}: {remote_message}")
        self.remote_type = remote_type
        self.remote_message = remote_message


class ProtocolError(TensorwireError):
    """A malformed or invalid message."""


class VersionMismatch(ProtocolError):
    """Client and server speak different protocol versions."""


class TimeoutError(TensorwireError, builtins.TimeoutError):  # noqa: A001
    """No reply arrived in time."""


class ConnectionClosed(TensorwireError):
    """The peer went away."""


class SessionExpired(ConnectionClosed):
    """The server does not know this client's session: it restarted or reclaimed it."""


class ServerBusy(TensorwireError):
    """The server's request queue is full."""


class TransportError(TensorwireError):
    """No transport can serve this URL here."""


class AuthError(TensorwireError):
    """Authentication failed."""


class QuotaExceeded(TensorwireError):
    """A per-client quota was exceeded."""


# Error codes on the wire -> the class a client raises for them.
WIRE_ERRORS: dict[str, type[TensorwireError]] = {
    "protocol": ProtocolError,
    "version": VersionMismatch,
    "busy": ServerBusy,
    "auth": AuthError,
    "quota": QuotaExceeded,
    "session": SessionExpired,
}
