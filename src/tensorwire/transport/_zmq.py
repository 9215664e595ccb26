"""ZeroMQ transports: ipc:// and tcp://, plus the socket options both sides use."""

from __future__ import annotations

import os
import socket
import stat

import zmq

from ..errors import TransportError
from ._base import Transport, register_transport

HWM = 1000  # messages queued per peer before ROUTER_MANDATORY reports EAGAIN
# ZMTP heartbeats both ways: a peer silent this long has its connection dropped.
HEARTBEAT_IVL_MS, HEARTBEAT_TIMEOUT_MS = 2_000, 10_000


def _heartbeats(sock: zmq.Socket[bytes]) -> None:
    sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
    sock.setsockopt(zmq.HEARTBEAT_TTL, HEARTBEAT_TIMEOUT_MS)


def server_socket(ctx: zmq.Context[zmq.Socket[bytes]], max_message_bytes: int) -> zmq.Socket[bytes]:
    """A ROUTER that never drops replies silently (PITFALLS: ROUTER at HWM)."""
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, HWM)
    sock.setsockopt(zmq.RCVHWM, HWM)
    sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
    _heartbeats(sock)
    return sock


def client_socket(ctx: zmq.Context[zmq.Socket[bytes]]) -> zmq.Socket[bytes]:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, HWM)
    sock.setsockopt(zmq.RCVHWM, HWM)
    _heartbeats(sock)
    return sock


@register_transport
class IpcTransport(Transport):
    scheme = "ipc"

    def bind(self, sock: zmq.Socket[bytes], url: str) -> str:
        path = url[len("ipc://") :]
        if not path:
            raise TransportError(f"ipc URL {url!r} has no path")
        directory = os.path.dirname(path) or "."
        if not os.path.isdir(directory):
            os.makedirs(directory, mode=0o700, exist_ok=True)
        _remove_stale_socket(path)
        try:
            sock.bind(url)
        except zmq.ZMQError as exc:
            raise TransportError(f"cannot listen on {url}: {exc}") from None
        os.chmod(path, 0o600)  # connecting needs write access: only this user may
        return url

    def connect(self, sock: zmq.Socket[bytes], url: str) -> None:
        sock.connect(url)

    def unbind_cleanup(self, url: str) -> None:
        path = url[len("ipc://") :]
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)
        except OSError:
            pass


def _remove_stale_socket(path: str) -> None:
    """Unlink a socket file left by a dead server; refuse one a live server holds."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise TransportError(f"cannot listen on ipc://{path}: a non-socket file is in the way")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)
        return
    except OSError:
        return
    finally:
        probe.close()
    raise TransportError(f"cannot listen on ipc://{path}: another server is listening there")


@register_transport
class TcpTransport(Transport):
    scheme = "tcp"

    def bind(self, sock: zmq.Socket[bytes], url: str) -> str:
        host, _, port = url[len("tcp://") :].rpartition(":")
        if not host or not port:
            raise TransportError(f"tcp URL {url!r} must look like tcp://HOST:PORT")
        bind_url = f"tcp://{host}:*" if port == "0" else url
        try:
            sock.bind(bind_url)
        except zmq.ZMQError as exc:
            raise TransportError(f"cannot listen on {url}: {exc}") from None
        endpoint = sock.getsockopt(zmq.LAST_ENDPOINT)
        return endpoint.decode() if isinstance(endpoint, bytes) else str(endpoint)

    def connect(self, sock: zmq.Socket[bytes], url: str) -> None:
        sock.connect(url)
