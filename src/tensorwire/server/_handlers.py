"""Turn one decoded request into one reply (meta, payload). Pure: no sockets here."""

from __future__ import annotations

import re
import socket
import time
from dataclasses import dataclass
from typing import Any

from .._version import __version__
from ..codec import PROTOCOL_VERSION
from ..errors import ProtocolError, TensorwireError
from ._sessions import Sessions
from .ops import Backend, OpRegistry

_PATHLIKE = re.compile(r"(?:[A-Za-z]:)?(?:/[\w.@+-]+){2,}/?")


KINDS = ("call", "hello", "ops", "bye")


@dataclass
class Request:
    """A decoded request: who sent it and when it arrived."""

    kind: str
    rid: int
    op: str
    args: list[Any]
    kwargs: dict[str, Any]
    meta: dict[str, Any]


def parse_request(meta: dict[str, Any], payload: Any) -> Request:
    """Validate meta and payload shape; ProtocolError names what is wrong."""
    kind, rid = meta.get("k"), meta.get("id")
    if type(rid) is not int:
        raise ProtocolError(f"request id must be an int, got {type(rid).__name__}")
    if kind not in KINDS:
        raise ProtocolError(f"request {rid}: unknown request kind {kind!r}")
    op = meta.get("op", "")
    if kind == "call" and (not isinstance(op, str) or not op):
        raise ProtocolError(f"request {rid}: op name must be a non-empty string")
    args, kwargs = [], {}
    if payload is not None:
        if not isinstance(payload, dict):
            raise ProtocolError(f"request {rid}: payload must be a map")
        args, kwargs = payload.get("a", []), payload.get("kw", {})
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise ProtocolError(f"request {rid}: arguments must be a list and a map")
    return Request(kind=kind, rid=rid, op=op, args=args, kwargs=kwargs, meta=meta)


class Handler:
    """Runs requests against a registry and a backend."""

    def __init__(self, registry: OpRegistry, backend: Backend, sessions: Sessions) -> None:
        self.registry = registry
        self.backend = backend
        self.sessions = sessions

    def info(self) -> dict[str, Any]:
        return {
            "proto": PROTOCOL_VERSION,
            "version": __version__,
            "backend": self.backend.name,
            "device": self.backend.device,
            "host": socket.gethostname(),
        }

    def handle(self, req: Request) -> tuple[Any, float]:
        """The reply payload for a request and the compute seconds it took."""
        if req.kind == "hello":
            return {**self.info(), **self.sessions.hello(req.meta)}, 0.0
        if req.kind == "ops":
            return self.registry.list(), 0.0
        if req.kind == "bye":
            self.sessions.bye(req.meta)
            return None, 0.0
        start = time.perf_counter()
        result = self.registry.call(req.op, self.backend, req.args, req.kwargs)
        self.backend.synchronize()
        return result, time.perf_counter() - start


def error_meta(rid: Any, exc: BaseException) -> dict[str, Any]:
    """The reply meta for a failed request. Never leaks server paths."""
    code = _wire_code(exc) if isinstance(exc, TensorwireError) else "remote"
    message = _PATHLIKE.sub("<path>", str(exc))[:2000]
    return {"id": rid, "ok": False, "err": {"code": code, "type": type(exc).__name__, "msg": message}}


def _wire_code(exc: TensorwireError) -> str:
    from ..errors import WIRE_ERRORS

    for code, cls in WIRE_ERRORS.items():
        if type(exc) is cls:
            return code
    return "protocol" if isinstance(exc, ProtocolError) else "remote"
