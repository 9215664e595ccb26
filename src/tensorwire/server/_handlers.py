"""Turn one decoded request into one reply (meta, payload). Pure: no sockets here."""

from __future__ import annotations

import re
import socket
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._version import __version__
from ..codec import PROTOCOL_VERSION, HandleRef, IpcRef, tree_map
from ..errors import ProtocolError, TensorwireError
from ._exposition import server_state
from ._ipc import IpcCall
from ._metrics import Metrics
from ._resident import ResidentStore
from ._sessions import Session, Sessions
from .ops import Backend, OpRegistry
from .ops._output import outputs_into

_PATHLIKE = re.compile(r"(?:[A-Za-z]:)?(?:/[\w.@+-]+){2,}/?")


KINDS = ("call", "hello", "ops", "bye", "put", "has", "fetch", "free", "graph", "stats")
_NEEDS_SESSION = ("put", "has", "fetch", "free")
# Ops whose result is a view of an argument where it can be: no kernel runs for it.
VIEW_OPS = frozenset({"identity", "reshape", "transpose", "permute"})


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
        self.metrics: Metrics | None = None  # the core's; the "stats" request reads it

    def info(self) -> dict[str, Any]:
        return {
            "proto": PROTOCOL_VERSION,
            "version": __version__,
            "backend": self.backend.name,
            "device": self.backend.device,
            "host": socket.gethostname(),
        }

    def handle(self, req: Request, session: Session | None, handles: int) -> tuple[Any, float]:
        """The reply payload for a request and the compute seconds it took."""
        if req.kind == "hello":
            return {**self.info(), **self.sessions.hello(req.meta)}, 0.0
        if req.kind == "ops":
            return self.registry.list(), 0.0
        if req.kind == "stats":  # `tensorwire top`
            if self.metrics is None:
                raise ProtocolError(f"request {req.rid}: this server keeps no metrics")
            return server_state(self.metrics, self.sessions, self.info(), session), 0.0
        if req.kind == "bye":
            self.sessions.bye(req.meta)
            return None, 0.0
        if session is None and (handles or req.kind in _NEEDS_SESSION or "out" in req.meta):
            raise ProtocolError(f"request {req.rid}: resident tensors need a session (hello first)")
        if req.kind == "graph":
            from ._graph import run_graph  # one request, a whole DAG of ops

            start = time.perf_counter()
            result = run_graph(self, req, session)
            self.backend.settle()
            return result, time.perf_counter() - start
        if req.kind != "call":
            assert session is not None
            return self._resident(req, session.store), 0.0
        start = time.perf_counter()
        if session is None or not (handles or "out" in req.meta):
            with outputs_into(_reply_arena(session)):
                result = self.registry.call(req.op, self.backend, req.args, req.kwargs)
        else:
            result = self._call_native(req, session)
            if req.op in VIEW_OPS and _all_aliases(result):
                # A view of the client's own memory, made without a kernel: nothing to wait for.
                return result, time.perf_counter() - start
        self.backend.settle()
        return result, time.perf_counter() - start

    def _call_native(self, req: Request, session: Session) -> Any:
        """A call whose arguments or result live on the server."""
        out = req.meta.get("out", "local")
        if out not in ("remote", "local"):
            raise ProtocolError(f"request {req.rid}: out must be 'remote' or 'local', got {out!r}")
        store = session.store
        ipc = IpcCall(req.rid, session.ipc, session.ipc_refusal, self.backend, session.exports)

        def native(v: Any) -> Any:
            return self._native(v, store, ipc)

        args = tree_map(native, req.args, _is_leaf)
        kwargs = tree_map(native, req.kwargs, _is_leaf) if req.kwargs else {}
        with outputs_into(_reply_arena(session) if out == "local" else None):
            result = self.registry.call_native(req.op, self.backend, args, kwargs)
            if out == "local":  # device results are copied straight into the reply's arena
                if self.backend.is_tensor(result):  # the usual single result
                    return ipc.to_reply(result)
                return tree_map(ipc.to_reply, result, self.backend.is_tensor)
        return tree_map(lambda t: store.add(ipc.owned(t)), result, self.backend.is_tensor)

    def _native(self, value: Any, store: ResidentStore, ipc: IpcCall) -> Any:
        if isinstance(value, HandleRef):
            return ipc.argument(store.get(value))  # a result on its memory is not exported
        if isinstance(value, IpcRef):  # the client's CUDA memory, shared by IPC
            return ipc.open(value)
        return self.backend.from_wire(value)

    def _resident(self, req: Request, store: ResidentStore) -> Any:
        digest = req.meta.get("digest")
        if digest is not None and not (isinstance(digest, str) and len(digest) == 32):
            raise ProtocolError(f"request {req.rid}: malformed content digest")
        if req.kind == "has":
            if digest is None:
                raise ProtocolError(f"request {req.rid}: 'has' needs a content digest")
            return store.adopt_cached(digest)
        if req.kind == "free":
            store.free(req.args)
            return None
        if len(req.args) != 1:
            raise ProtocolError(f"request {req.rid}: {req.kind} takes exactly one tensor")
        (value,) = req.args
        if req.kind == "put":
            if not isinstance(value, np.ndarray):
                raise ProtocolError(f"request {req.rid}: put takes a tensor")
            return store.upload(value, digest)
        if not isinstance(value, HandleRef):  # fetch
            raise ProtocolError(f"request {req.rid}: fetch takes a tensor handle")
        return self.backend.to_wire(store.get(value))


def _reply_arena(session: Session | None) -> Any:
    """The allocator that puts the op's result straight into the client's arena, if any."""
    if session is None or session.channel is None:
        return None
    return session.channel.output_allocator()


def _all_aliases(result: Any) -> bool:
    if isinstance(result, IpcRef):  # the usual single result
        return True
    leaves: list[Any] = []
    tree_map(leaves.append, result, lambda v: not isinstance(v, list | tuple | dict))
    return bool(leaves) and all(isinstance(v, IpcRef) for v in leaves)


def _is_leaf(value: Any) -> bool:
    return isinstance(value, _LEAVES)


_LEAVES = (HandleRef, IpcRef, np.ndarray)  # a tuple: no union object built per call


def error_meta(rid: Any, exc: BaseException) -> dict[str, Any]:
    """The reply meta for a failed request. Never leaks server paths."""
    code = _wire_code(exc) if isinstance(exc, TensorwireError) else "remote"
    message = _PATHLIKE.sub("<path>", str(exc))[:2000]
    err = {"code": code, "type": type(exc).__name__, "msg": message}
    return {"id": rid, "ok": False, "err": err}


def _wire_code(exc: TensorwireError) -> str:
    from ..errors import WIRE_ERRORS

    for code, cls in WIRE_ERRORS.items():
        if type(exc) is cls:
            return code
    return "protocol" if isinstance(exc, ProtocolError) else "remote"
