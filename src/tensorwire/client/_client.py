"""`tw.Client`: call ops on a server; numpy in -> numpy out, torch in -> torch out.

Over ipc:// and tcp://, two paths, both on ZeroMQ DEALER sockets:
- `call` runs on the calling thread with that thread's own socket: send, wait,
  receive. No locks and no hand-off to another thread, so a small call costs
  one wake-up of the server and one of us.
- `submit` queues the request for a pump thread that owns one more socket and
  keeps many requests in flight on it, completing futures as replies arrive.

Over ucx:// (another host, through ucxx) every request of every thread goes over
one UCX endpoint; replies are matched to their futures on the UCX loop thread.
"""

from __future__ import annotations

import concurrent.futures
import functools
import itertools
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np
import zmq

from ..channel import (
    DEFAULT_SPIN_US,
    ChannelError,
    ClientChannel,
    Spin,
    copy_into,
    host_token,
    small_message,
    spin_seconds,
    take_all,
)
from ..codec import (
    DEFAULT_LIMITS,
    BufferPool,
    HandleRef,
    IpcRef,
    castable,
    choose,
    content_digest,
    decode,
    encode_payload,
    first_kind,
    from_wire,
    peek_meta,
    restore_kind,
    tensor_kind,
    to_numpy,
    to_wire,
    tree_map,
    validate_wire_dtype,
    wire_numpy_dtype,
)
from ..errors import (
    WIRE_ERRORS,
    ConnectionClosed,
    ProtocolError,
    RemoteError,
    SessionExpired,
    TensorwireError,
    TimeoutError,
    TransportError,
)
from ..trace import build_trace
from ..transport import (
    ClientKeys,
    Transport,
    UcxConnection,
    client_socket,
    get_transport,
    wire_path,
)
from . import _graph
from ._cuda_ipc import CUDA_RESULTS, IpcSender, ipc_results
from ._pending import Pending, PendingTable
from ._pump import SubmitPump
from ._remote import RemoteTensor

if TYPE_CHECKING:
    from ._graph import Graph

TRANSPORTS = ("auto", "zmq")
_PIPE_SILENT = object()  # no reply over the message pipe in time: resend over zmq
DEFAULT_SHM_SIZE = 64 << 20  # bytes per direction; tensors that do not fit go as frames
BYE_TIMEOUT = 2.0


class Client:
    """A connection to a tensorwire server."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 30.0,
        transport: str = "auto",
        wire_dtype: str | None = None,
        require: str | None = None,
        shm_size: int = DEFAULT_SHM_SIZE,
        copy: bool = False,
        auth_dir: str | None = None,
        key_name: str = "client",
        retries: int = 2,
        spin_us: float = DEFAULT_SPIN_US,
        cuda_results: str = "copy",
    ) -> None:
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {TRANSPORTS}, got {transport!r}")
        if require not in (None, "shm"):
            raise ValueError(f"require must be None or 'shm', got {require!r}")
        if require == "shm" and transport == "zmq":
            raise ValueError("require='shm' contradicts transport='zmq'")
        if type(shm_size) is not int or shm_size <= 0:
            raise ValueError(f"shm_size must be a positive number of bytes, got {shm_size!r}")
        self.wire_dtype = validate_wire_dtype(wire_dtype)
        if cuda_results not in CUDA_RESULTS:
            raise ValueError(f"cuda_results must be one of {CUDA_RESULTS}, got {cuda_results!r}")
        self._cuda_results = cuda_results
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        self.url, self.timeout, self.transport = url, float(timeout), transport
        self.copy = copy
        self._shm_size = self._shm_request = shm_size if transport == "auto" else 0
        self._require = require
        if type(retries) is not int or retries < 0:
            raise ValueError(f"retries must be a non-negative integer, got {retries!r}")
        self.retries = retries
        self._spin = Spin(spin_seconds(spin_us))  # polling for a reply before sleeping
        self._channel: ClientChannel | None = None
        self._session: str | None = None
        self.shm_reason = "transport='zmq' was asked for" if transport == "zmq" else ""
        self._trace_parts: tuple[Any, ...] | None = None
        self._trace: dict[str, Any] = {}
        self._transport: Transport = get_transport(url)
        self._ucx: UcxConnection | None = None  # ucx:// only; opened by the first request
        if not self._transport.zmq_socket:
            self._shm_size = self._shm_request = 0
            self.shm_reason = "ucx:// carries no shared memory (it is for other hosts)"
        # CurveZMQ keys for tcp: DIR/<key_name>.key_secret and DIR/server.key.
        self._keys = ClientKeys.from_dir(auth_dir, key_name) if auth_dir is not None else None
        self._ids = itertools.count(1)
        self._hello_token = secrets.token_hex(16)  # makes a resent hello safe
        self._closed = False
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._local = threading.local()
        self._sockets: list[zmq.Socket[bytes]] = []
        self._sockets_lock = threading.Lock()
        self._pending = PendingTable()
        # Wire casts write into recycled buffers: fresh pages cost more than the cast.
        self._cast_buffers = BufferPool()
        self._dropped: deque[int] = deque()  # handles garbage-collected here, to free there
        self._acks: deque[int] = deque()  # replies received: the server may forget them
        self._pump = SubmitPump(self)  # its thread starts with the first submit()
        self.server_info: dict[str, Any] = {}  # the hello reply, once there is one
        self._ipc: IpcSender | None = None  # CUDA IPC of this session (same host, CUDA server)
        try:
            self.server_info = self._request("hello", "", (), {})
            self._negotiate(require)
        except BaseException:
            self.close()
            raise

    def _negotiate(self, require: str | None) -> None:
        """Take the session the server opened; attach to its arenas, or note why not."""
        offer, sid = self.server_info.get("shm"), self.server_info.get("session")
        self._session = sid if isinstance(sid, str) else None
        self._ipc = IpcSender(self.server_info)
        if offer and self._session is not None:
            try:
                self._channel = ClientChannel(offer)
            except TensorwireError as exc:
                # The server would place results where we cannot read: start over without.
                self.shm_reason = f"cannot attach the server's arena: {exc}"
                self._bye()
                self._shm_size, self._hello_token = 0, secrets.token_hex(16)
                self.server_info = self._request("hello", "", (), {})
                self._session = self.server_info.get("session")
        elif self.transport == "auto" and self._transport.zmq_socket:
            self.shm_reason = str(self.server_info.get("shm_reason", "not offered"))
        if require == "shm" and self._channel is None:
            raise TransportError(f"shared memory required but unavailable: {self.shm_reason}")

    @property
    def last_trace(self) -> dict[str, Any]:
        """Seconds per stage of the last completed request, and each tensor's path."""
        if self._trace_parts is not None:  # built on first read: most calls never look
            timing, received, done, server, reply_paths, graph_mode = self._trace_parts
            carrier, serialize, send, sent_at, request_paths = timing
            self._trace = build_trace(
                carrier=carrier,
                serialize=serialize,
                send=send,
                wait=received - sent_at,
                deserialize=done - received,
                server=server,
                request_paths=request_paths,
                reply_paths=reply_paths,
                graph_mode=graph_mode,
            )
            self._trace_parts = None
        return self._trace

    @property
    def path(self) -> str:
        """'shm' when bulk tensors go through shared memory, else 'zmq' (or 'ucx')."""
        if self._channel is not None:
            return "shm"
        return "zmq" if self._transport.zmq_socket else "ucx"

    # -- public surface -------------------------------------------------------------

    def call(self, op: str, /, *args: Any, **kwargs: Any) -> Any:
        """Run `op` on the server and return its result.

        Reserved keywords: `out="remote"` keeps the result on the server and returns a
        RemoteTensor; `wire_dtype=` overrides the client's wire precision for this call.
        """
        if _graph.RECORDING and (graph := _graph.recording(args, kwargs)) is not None:
            return graph.call(op, *args, **kwargs)  # inside gpu.graph() / @gpu.function
        extra = _call_options(kwargs)
        return self._request("call", op, args, kwargs, extra=extra)

    def submit(self, op: str, /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Start `op` and return a Future; many may be in flight on one connection.

        Do not modify an argument array until its future is done: it is sent
        without a copy.
        """
        item, frames = self._prepare("call", op, args, kwargs, _call_options(kwargs))
        item.future = Future()
        if not self._transport.zmq_socket:
            connection = self._send_ucx(frames, item)
            connection.call_later(self.timeout, lambda: self._pending.expire(TimeoutError))
            return item.future
        self._pending.add(item.rid, item)
        self._pump.submit(item, frames)
        return item.future

    def empty(self, shape: Any, dtype: Any = np.float32) -> np.ndarray:
        """An array in the shared-memory arena: sending it costs no copy.

        Without shared memory (another host, transport='zmq') it is a plain numpy
        array; `last_trace["paths"]` always says which way each tensor went.
        """
        if self._channel is None:
            return np.empty(shape, dtype)
        return self._channel.empty(shape, dtype)

    def zeros(self, shape: Any, dtype: Any = np.float32) -> np.ndarray:
        """Like `empty`, filled with zeros."""
        out = self.empty(shape, dtype)
        out[...] = 0
        return out

    def asarray(self, x: Any) -> np.ndarray:
        """A copy of `x` in the shared-memory arena (see `empty`)."""
        src = to_numpy(x) if not isinstance(x, np.ndarray) else x
        out = self.empty(src.shape, src.dtype)
        copy_into(out, src)
        return out

    def put(self, x: Any, *, cache: bool = False) -> RemoteTensor:
        """Keep `x` on the server and return a handle to it.

        With cache=True a content hash goes first and the bytes only when the
        server holds no identical tensor yet: weights upload once per server.
        """
        arr = x if isinstance(x, np.ndarray) else to_numpy(x)
        if not cache:
            return self._handle(self._request("put", "", (arr,), {}))
        digest = content_digest(self._as_received(arr))
        ref = self._request("has", "", (), {}, extra={"digest": digest})
        if ref is None:
            ref = self._request("put", "", (arr,), {}, extra={"digest": digest})
        return self._handle(ref)

    def fetch(self, handle: HandleRef) -> Any:
        """The value of a resident tensor, as a numpy array."""
        return self._request("fetch", "", (handle,), {})

    def free(self, *handles: HandleRef) -> None:
        """Drop resident tensors now (dropping the last reference does it later)."""
        self._request("free", "", tuple(h.hid for h in handles), {})

    def graph(self) -> Graph:
        """Record ops lazily; `run` executes the whole graph in one request."""
        from ._graph import Graph

        return Graph(self)

    def function(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Decorator: trace `fn` into a graph once, then run it in one request per call."""
        from ._graph import traced

        return traced(self, fn)

    def ops(self) -> list[dict[str, Any]]:
        """The server's ops, each with name, signature, doc and category."""
        result: list[dict[str, Any]] = self._request("ops", "", (), {})
        return result

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return functools.partial(self.call, name)

    def close(self) -> None:
        """Close every socket; requests still in flight fail with ConnectionClosed."""
        if self._closed:
            return
        self._pump.stop()
        self._pending.fail_all(ConnectionClosed("client closed"))
        self._bye()
        self._closed = True
        if self._ucx is not None:
            self._ucx.close()
        if self._channel is not None:
            self._channel.close()
        with self._sockets_lock:
            for sock in self._sockets:
                sock.close(linger=0)
            self._sockets.clear()
        self._ctx.term()
        self._cast_buffers.clear()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<tensorwire.Client {self.url} {'closed' if self._closed else 'open'}>"

    def _reconnect(self) -> None:
        """Open a new session after the server lost ours (resident handles are gone)."""
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        self._session = None
        self._shm_size = self._shm_request
        self._hello_token = secrets.token_hex(16)
        self.server_info = self._request("hello", "", (), {})
        self._negotiate(self._require)

    def _bye(self) -> None:
        """Tell the server to drop our session now (it would reap it later anyway)."""
        if self._session is None:
            return
        try:
            self._request("bye", "", (), {}, timeout=min(self.timeout, BYE_TIMEOUT))
        except TensorwireError:
            pass  # the server reclaims sessions of vanished clients itself
        self._session = None

    # -- the synchronous path -----------------------------------------------------------

    def _request(
        self,
        kind: str,
        op: str,
        args: Any,
        kwargs: Any,
        timeout: float | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Any:
        try:
            return self._request_once(kind, op, args, kwargs, timeout, extra)
        except SessionExpired:
            if kind in ("hello", "bye"):
                raise
            self._reconnect()  # the server restarted: a new session, then one more try
            return self._request_once(kind, op, args, kwargs, timeout, extra)

    def _request_once(
        self,
        kind: str,
        op: str,
        args: Any,
        kwargs: Any,
        timeout: float | None,
        extra: dict[str, Any] | None,
    ) -> Any:
        item, frames = self._prepare(kind, op, args, kwargs, extra)
        if timeout is not None:
            item.deadline = time.monotonic() + timeout
        if not self._transport.zmq_socket:
            return self._over_ucx(frames, item)
        channel = self._channel
        if channel is not None and channel.pipe is not None and kind in ("call", "graph"):
            message = small_message(frames)
            if message is not None and channel.pipe_lock.acquire(blocking=False):
                try:
                    result = self._over_pipe(channel, message, item)
                finally:
                    channel.pipe_lock.release()
                if result is not _PIPE_SILENT:
                    return result
                # Silence on the pipe (e.g. the server was restarted: nobody reads it):
                # resend the same request id over zmq, which the reply cache makes safe.
        return self._over_zmq(frames, item, retry=True)

    def _over_zmq(self, frames: list[Any], item: Pending, retry: bool) -> Any:
        """Send, wait; on silence reconnect and resend the same request id (Lazy Pirate).

        The server answers a resent id from its reply cache, so an op never runs twice.
        """
        item.carrier = "zmq"
        lookup = {item.rid: item}.get
        attempts = self.retries + 1 if retry else 1
        for attempt in range(attempts):
            sock = self._thread_socket()
            sock.send_multipart(frames, copy=False)
            item.sent_at = time.perf_counter()
            item.send = item.sent_at - item.sent_at_start
            share = (item.deadline - time.monotonic()) / (attempts - attempt)
            if self._receive(sock, item, lookup, time.monotonic() + share):
                return item.outcome()
            self._drop_thread_socket()  # a fresh connection for the resend
        raise self._timeout(item)

    def _receive(self, sock: zmq.Socket[bytes], item: Pending, lookup: Any, until: float) -> bool:
        spin_until = time.perf_counter() + self._spin.budget
        while not item.done:
            try:
                frames = self._spin_receive(sock, spin_until)
                if frames is None:
                    # A receive timeout instead of Socket.poll, which builds a Poller per call.
                    remaining_ms = int((until - time.monotonic()) * 1000)
                    if remaining_ms <= 0:
                        raise zmq.Again
                    sock.setsockopt(zmq.RCVTIMEO, remaining_ms)
                    frames = sock.recv_multipart(copy=False)
            except zmq.Again:
                return False
            self._spin.waited(time.perf_counter() - item.sent_at)
            self._complete(frames, lookup)
        return True

    @staticmethod
    def _spin_receive(sock: zmq.Socket[bytes], spin_until: float) -> list[Any] | None:
        """A reply that arrives before `spin_until`, polled for without sleeping."""
        while time.perf_counter() < spin_until:
            if int(sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                return sock.recv_multipart(zmq.NOBLOCK, copy=False)
        return None

    def _drop_thread_socket(self) -> None:
        sock = getattr(self._local, "sock", None)
        if sock is not None:
            self._local.sock = None
            with self._sockets_lock:
                self._sockets.remove(sock)
            sock.close(linger=0)

    def _over_pipe(self, channel: ClientChannel, message: bytes, item: Pending) -> Any:
        """The same-host fast path: one pipe write, one pipe read (caller holds the lock)."""
        pipe = channel.pipe
        if pipe is None:  # another thread gave the pipe up meanwhile
            return _PIPE_SILENT
        # Like one Lazy Pirate attempt: wait a share of the time, then go over zmq.
        now = time.monotonic()
        left = item.deadline - now
        until = now + left / (self.retries + 1)
        try:
            pipe.send(message, left)
        except ChannelError:
            channel.drop_pipe()  # partly written: the stream is unframed; zmq from now on
            return _PIPE_SILENT
        item.sent_at = sent_at = time.perf_counter()
        item.send = sent_at - item.sent_at_start
        item.carrier = "pipe"
        lookup = {item.rid: item}.get
        reader = pipe.reader
        while not item.done:
            if not pipe.wait_readable(until - time.monotonic(), self._spin.budget):
                channel.drop_pipe()  # the server may be gone (restarted): zmq finds out
                return _PIPE_SILENT
            self._spin.waited(time.perf_counter() - sent_at)
            reader.read_available()
            for frames in reader.messages():
                self._complete(frames, lookup)
        return item.outcome()

    def _over_ucx(self, frames: list[Any], item: Pending) -> Any:
        """Send and wait for the reply, matched on the UCX loop thread.

        No Lazy Pirate here: silence until the deadline is a TimeoutError (the request
        may still run on the server); a broken endpoint fails its requests with
        ConnectionClosed, and the next request opens a new one.
        """
        future: Future[Any] = Future()
        item.future = future
        self._send_ucx(frames, item)
        concurrent.futures.wait([future], timeout=max(item.deadline - time.monotonic(), 0.0))
        if not future.done():
            self._pending.pop(item.rid)
            raise self._timeout(item)
        return future.result()

    def _send_ucx(self, frames: list[Any], item: Pending) -> UcxConnection:
        """Register `item` as pending and send its frames on the (re)opened endpoint."""
        with self._sockets_lock:
            if self._closed:
                raise ConnectionClosed("client is closed")
            if self._ucx is None or self._ucx.broken:
                self._ucx = UcxConnection(
                    self.url, lambda reply: self._complete(reply, self._pending.pop),
                    self._pending.fail_all, DEFAULT_LIMITS.max_message_bytes,
                    DEFAULT_LIMITS.max_frames,
                )
            connection = self._ucx
        item.carrier = "ucx"
        self._pending.add(item.rid, item)
        connection.send(frames)
        item.sent_at = time.perf_counter()
        item.send = item.sent_at - item.sent_at_start
        return connection

    def _timeout(self, item: Pending) -> TimeoutError:
        hint = ""
        if self.url.startswith("tcp://") and self._keys is None and not self.server_info:
            hint = " (a server that requires CurveZMQ keys stays silent: pass auth_dir=...)"
        return TimeoutError(
            f"request {item.rid}: no reply from {self.url} within {self.timeout:g} s{hint}"
        )

    def _thread_socket(self) -> zmq.Socket[bytes]:
        sock: zmq.Socket[bytes] | None = getattr(self._local, "sock", None)
        if sock is None:
            sock = self._new_socket()
            self._local.sock = sock
        return sock

    def _new_socket(self) -> zmq.Socket[bytes]:
        if self._closed:
            raise ConnectionClosed("client is closed")
        sock = client_socket(self._ctx)
        if self._keys is not None:
            self._keys.apply(sock)
        self._transport.connect(sock, self.url)
        with self._sockets_lock:
            self._sockets.append(sock)
        return sock

    # -- encoding and completing ------------------------------------------------------

    def _prepare(
        self, kind: str, op: str, args: Any, kwargs: Any, extra: dict[str, Any] | None = None
    ) -> tuple[Pending, list[Any]]:
        if self._closed:
            raise ConnectionClosed("client is closed")
        t0 = time.perf_counter()
        rid = next(self._ids)
        payload = {"a": list(args), "kw": kwargs} if args or kwargs else None
        meta: dict[str, Any] = {"k": kind, "id": rid, "op": op}
        if extra:
            meta.update(extra)
        keep: list[Any] = []
        placer = export = None
        if kind == "hello":
            meta.update(host=host_token(), pid=os.getpid(), shm=self._shm_size,
                        ht=self._hello_token, xr=self._cuda_results == "map")
        elif self._session is not None:
            meta["s"] = self._session
            if self._dropped:
                meta["fh"] = take_all(self._dropped)
            if self._acks:
                meta["ak"] = take_all(self._acks)
            if self._channel is not None:
                placer = self._channel.placer(keep)
                released = self._channel.take_released()
                if released:
                    meta["fr"] = released
            if self._ipc is not None:
                export = self._ipc.exporter(kind)
                if (dropped := self._ipc.take_released()) is not None:
                    meta["fi"] = dropped
                if (opened := self._ipc.take_acks()) is not None:
                    meta["xa"] = opened
        wire = meta.get("w", self.wire_dtype) if kind in ("call", "put", "graph") else None
        caster = None
        if wire is not None:
            meta["w"] = wire  # the server narrows its results the same way
            caster = self._caster(wire, keep)
        encoded = encode_payload(payload, placer, caster, export)
        frames = encoded.frames(meta)
        t1 = time.perf_counter()
        item = Pending(
            rid=rid,
            future=None,
            deadline=time.monotonic() + self.timeout,
            kind=_kind_of(args) if kind == "call" else None,
            request_paths=encoded.paths,
            serialize=t1 - t0,
            sent_at_start=t1,
            keep=keep,
            sent=export if export is not None and export.sent else None,
        )
        return item, frames

    def _complete(self, frames: list[Any], lookup: Any) -> None:
        """Decode a reply and settle the future it answers (unknown ids are late: dropped)."""
        received = time.perf_counter()
        channel = self._channel
        try:
            decoded = decode(frames, resolver=channel.resolve if channel is not None else None,
                             widener=self._widen)
        except ProtocolError as exc:
            meta = peek_meta(frames[0] if frames else b"")
            item = lookup(meta.get("id"))
            if item is not None:
                err = meta.get("err")
                item.settle(error=_remote_exception(err) if err else exc)
            return
        meta = decoded.meta
        item = lookup(meta.get("id"))
        if item is None:
            return
        self._acks.append(item.rid)  # told to the server with the next request
        if not meta.get("ok"):
            item.settle(error=_remote_exception(meta.get("err")))
            return
        payload = decoded.payload
        copied = self.copy and any(p.startswith("shm") for p in decoded.paths)
        if copied:
            payload = _copied(payload)
        if meta.get("hd") and type(payload) is not IpcRef:  # (counts CUDA IPC references too)
            payload = self._wrap_handles(payload)
        if (sent := item.sent) is not None:  # CUDA IPC arguments: results as torch CUDA tensors
            result = ipc_results(payload, sent.sent, self._ipc.open_result if self._ipc else None,
                                 sent.refs)
        else:
            result = restore_kind(payload, item.kind)
        # Only numbers: holding `item` would keep the reply (and its arena blocks) alive.
        timing = (item.carrier, item.serialize, item.send, item.sent_at, item.request_paths)
        reply_paths = meta.get("rp", decoded.paths)  # the server's account wins
        if copied:
            reply_paths = [f"{p}+copied out" if p.startswith("shm") else p for p in reply_paths]
        self._trace_parts = (timing, received, time.perf_counter(), meta.get("t"),
                             reply_paths, meta.get("gm"))
        item.settle(result)

    def _caster(
        self, wire: str, keep: list[Any] | None = None
    ) -> Callable[[np.ndarray], tuple[np.ndarray, str | None]]:
        """Narrow tensors per the wire policy; "auto" only where the wire is the bottleneck.
        With `keep` (the request's list of arena blocks) and shared memory, a tensor that
        will go through the arena is cast straight into it: no copy after the cast."""
        channel = self._channel
        path = "shm" if channel is not None else wire_path(self.url)

        def cast(arr: np.ndarray) -> tuple[np.ndarray, str | None]:
            to = choose(wire, transport_path=path, nbytes=arr.nbytes)
            out = None
            if keep is not None and channel is not None and to is not None and castable(arr):
                out = channel.outgoing(arr.shape, wire_numpy_dtype(to), keep)  # None: pool
            return to_wire(arr, to, out=out, pool=self._cast_buffers)

        return cast

    def _as_received(self, arr: np.ndarray) -> np.ndarray:
        """`arr` as the server will hold it: through the wire's precision and back (a
        narrowed upload is widened there, and its content hash is checked on that)."""
        if self.wire_dtype is None:
            return arr
        narrow, original = self._caster(self.wire_dtype)(arr)
        return arr if original is None else from_wire(narrow, original)

    def _widen(self, narrow: np.ndarray, original: str) -> np.ndarray:
        return from_wire(narrow, original, pool=self._cast_buffers)

    def _handle(self, ref: Any) -> RemoteTensor:
        if isinstance(ref, RemoteTensor):
            return ref
        raise ProtocolError(f"expected a tensor handle from the server, got {type(ref).__name__}")

    def _wrap_handles(self, value: Any) -> Any:
        return tree_map(
            lambda ref: RemoteTensor(self, ref, self._dropped), value,
            lambda v: isinstance(v, HandleRef),
        )

    def _discard_socket(self, sock: zmq.Socket[bytes]) -> None:
        with self._sockets_lock:
            if sock in self._sockets:
                self._sockets.remove(sock)
        sock.close(linger=0)


def _call_options(kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """Pop the reserved call options (out, wire_dtype) from an op's keywords into meta."""
    if "out" not in kwargs and "wire_dtype" not in kwargs:
        return None
    meta: dict[str, Any] = {}
    out = kwargs.pop("out", None)
    if out is not None:
        if out not in ("remote", "local"):
            raise ValueError(f"out must be 'remote' or 'local', got {out!r}")
        meta["out"] = out
    if "wire_dtype" in kwargs:
        meta["w"] = validate_wire_dtype(kwargs.pop("wire_dtype"))
    return meta


def _kind_of(args: tuple[Any, ...]) -> str | None:
    if args and (kind := tensor_kind(args[0])) is not None:
        return kind  # the common case, without walking the arguments
    return first_kind(args)


def _copied(value: Any) -> Any:
    """The result tree with every array copied out of the arena (Client(copy=True))."""
    return tree_map(_copy_out, value, lambda v: isinstance(v, np.ndarray))


def _copy_out(arr: np.ndarray) -> np.ndarray:
    out = np.empty_like(arr, order="C")
    copy_into(out, arr)
    return out


def _remote_exception(err: Any) -> TensorwireError:
    if not isinstance(err, dict):
        return ProtocolError("error reply without details")
    code, kind, msg = err.get("code"), str(err.get("type", "Error")), str(err.get("msg", ""))
    cls = WIRE_ERRORS.get(str(code))
    return cls(msg) if cls is not None else RemoteError(kind, msg)
