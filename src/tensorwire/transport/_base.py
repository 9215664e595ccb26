"""Transports move lists of frames between a client and a server.

A transport is chosen by URL scheme through a small registry. Each says whether
it is viable on this machine, and binds (server side) or connects (client side)
a ZeroMQ socket; only the codec knows what a message is.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import zmq

from ..errors import TransportError


class Transport(ABC):
    scheme: ClassVar[str]
    zmq_socket: ClassVar[bool] = True  # False: the transport brings its own endpoints (ucx)

    @classmethod
    def viable(cls) -> tuple[bool, str]:
        """Whether this transport works here, and why not when it does not."""
        return True, ""

    @abstractmethod
    def bind(self, sock: zmq.Socket[bytes], url: str) -> str:
        """Bind a server socket; return the URL clients should use (real port)."""

    @abstractmethod
    def connect(self, sock: zmq.Socket[bytes], url: str) -> None:
        """Connect a client socket."""

    def unbind_cleanup(self, url: str) -> None:  # noqa: B027 (optional: only ipc leaves a file)
        """Remove anything bind() left behind (an ipc socket file)."""


_REGISTRY: dict[str, type[Transport]] = {}


def register_transport(cls: type[Transport]) -> type[Transport]:
    _REGISTRY[cls.scheme] = cls
    return cls


def scheme_of(url: str) -> str:
    scheme, sep, _ = url.partition("://")
    if not sep:
        raise TransportError(f"URL {url!r} has no scheme; expected one of {known_schemes()}")
    return scheme


_LOOPBACK = ("127.", "localhost", "[::1]", "::1")


def wire_path(url: str) -> str:
    """What the wire is for precision decisions: "tcp" across hosts (tcp or ucx); "local"
    for ipc and loopback, where bytes are cheap and narrowing them would only add work."""
    scheme = scheme_of(url)
    host = url[len(scheme) + 3 :].rpartition(":")[0]
    if scheme in ("tcp", "ucx") and not host.startswith(_LOOPBACK):
        return "tcp"  # another host: the wire may be the bottleneck
    return "local"


def known_schemes() -> list[str]:
    return sorted(_REGISTRY)


def get_transport(url: str) -> Transport:
    """The transport for a URL; an unknown scheme names the known ones."""
    scheme = scheme_of(url)
    cls = _REGISTRY.get(scheme)
    if cls is None:
        raise TransportError(
            f"unknown transport scheme {scheme!r} in {url!r}; known: {', '.join(known_schemes())}"
        )
    ok, why = cls.viable()
    if not ok:
        raise TransportError(f"transport {scheme!r} cannot be used here: {why}")
    return cls()
