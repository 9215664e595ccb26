"""The server loop: ROUTER sockets, a bounded queue, exactly one reply per request.

One thread owns every socket. It drains whatever has arrived into a bounded
queue (answering "busy" beyond it), then runs one request and replies. Running
requests inline keeps small calls to one thread wake-up; the queue keeps one
client's burst from starving the rest.

Each request runs in two steps: launch (decode, run up to its device work) and
complete (wait for that work, encode, reply). Serially (`pipeline_depth=1`) one
follows the other. Pipelined, on a CUDA backend, up to `pipeline_depth` requests
are launched, each on its client's stream, before the oldest completes: one
request's copies overlap another's kernels. Anything that is not an op call or a
graph waits for the running requests first.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq

from ..channel import (
    DEFAULT_DIRECTORY,
    DEFAULT_SPIN_US,
    ChannelError,
    ReplyBlocks,
    Spin,
    pack_message,
    spin_seconds,
)
from ..codec import (
    DEFAULT_LIMITS,
    BufferPool,
    Caster,
    Decoded,
    Limits,
    Narrowed,
    castable,
    choose,
    decode,
    encode,
    encode_payload,
    peek_meta,
    to_wire,
    validate_wire_dtype,
    wire_numpy_dtype,
)
from ..errors import AuthError, ProtocolError, QuotaExceeded, ServerBusy, SessionExpired
from ..trace import server_stages
from ..transport import (
    ServerAuth,
    Transport,
    UcxListener,
    get_transport,
    server_socket,
    wire_path,
)
from ._handlers import Handler, Request, error_meta, parse_request
from ._metrics import Metrics, Observation
from ._replies import TOO_LARGE, ReplyCache
from ._resident import Quotas
from ._sessions import Session, Sessions
from ._wire import mark_narrowed, settle_narrowed
from .ops import OpRegistry, default_registry, make_backend
from .ops._backend import NO_FENCE, Fence
from .ops._output import Allocator, narrowing_replies

log = logging.getLogger("tensorwire.server")

PIPE_REPLY_TIMEOUT = 5.0  # seconds a client may take to drain a large reply from its pipe
POLL_MS = 100  # how often a stop request is noticed while idle
DRAIN_BATCH = 64  # messages taken from one socket per turn
MAX_PIPELINE_DEPTH = 64  # requests launched ahead of their replies, at most


@dataclass
class _Incoming:
    sock: zmq.Socket[bytes] | None  # None: it came through a session's pipe, or over ucx
    ident: Any  # zmq routing id, or the ucx peer id
    frames: list[Any]
    arrived: float
    session: Session | None = None
    ucx: UcxListener | None = None  # the listener whose peer sent it


@dataclass(eq=False)
class _Running:
    """A request launched, its reply not sent yet: what the reply is made of once the
    request's device work (its fence) is done."""

    item: _Incoming
    obs: Observation
    started: float
    frames: list[Any] | None = None  # its reply, known at launch: an error, or a retry's
    rid: Any = None
    sid: str | None = None  # its session
    request: Request | None = None
    session: Session | None = None
    path: str = ""
    deserialized: float = 0.0
    compute: float = 0.0
    policy: str | None = None  # the client's wire policy for the reply
    blocks: ReplyBlocks | None = None  # its share of the client's result arena
    result: Any = None
    fence: Fence = NO_FENCE


class ServerCore:
    """Binds the listen URLs and serves until `stop()`; used by CLI and tw.Server."""

    def __init__(
        self,
        listen: list[str],
        *,
        device: str = "auto",
        backend: str = "auto",
        registry: OpRegistry | None = None,
        limits: Limits = DEFAULT_LIMITS,
        max_queue: int = 1024,
        shm: bool = True,
        shm_dir: str = DEFAULT_DIRECTORY,
        shm_max_arena: int = 1 << 30,
        auth_dir: str | None = None,
        insecure: bool = False,
        quotas: Quotas | None = None,
        spin_us: float = DEFAULT_SPIN_US,
        stretch_spin: bool | None = None,
        pipeline_depth: int = 1,
    ) -> None:
        if not listen:
            raise ValueError("a server needs at least one listen URL")
        if type(pipeline_depth) is not int or not 1 <= pipeline_depth <= MAX_PIPELINE_DEPTH:
            raise ValueError(f"pipeline_depth must be an int from 1 to {MAX_PIPELINE_DEPTH}, "
                             f"got {pipeline_depth!r}")
        self._transports: list[tuple[Transport, str]] = [(get_transport(u), u) for u in listen]
        if auth_dir is None and not insecure and any(u.startswith("tcp://") for u in listen):
            raise AuthError(
                "tcp needs CurveZMQ keys: pass an auth directory (`tensorwire keys generate "
                "DIR --name CLIENT`, then --auth-dir DIR), or --insecure for plain tcp"
            )
        if not insecure and any(u.startswith("ucx://") for u in listen):
            raise AuthError(
                "ucx has no authentication (anyone who can reach the port may run ops): "
                "pass --insecure to serve ucx://"
            )
        self.auth_dir = auth_dir
        self._auth: ServerAuth | None = None
        backend_impl = make_backend(backend, device)
        self.quotas = quotas or Quotas()
        self.sessions = Sessions(backend_impl, enabled=shm, directory=shm_dir,
                                 max_arena=shm_max_arena, quotas=self.quotas)
        self.handler = Handler(registry or default_registry(), backend_impl, self.sessions)
        self.limits = limits
        self.max_queue = max_queue
        # Above 1: requests launch on their clients' CUDA streams before the oldest replies.
        self.pipeline_depth = pipeline_depth
        backend_impl.pipelined = pipeline_depth > 1
        if pipeline_depth > 1 and not backend_impl.device.startswith("cuda"):
            log.warning("pipeline depth %d on %s: nothing overlaps there; replies only wait "
                        "for the requests launched after them", pipeline_depth,
                        backend_impl.device)
        self._running: deque[_Running] = deque()  # launched, not replied to (oldest first)
        # Polling for the next request (stretch_spin: see channel/_spin.py; None: by CPUs).
        self._spin = Spin(spin_seconds(spin_us), stretch_spin)
        self.urls: list[str] = []
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self._socks: list[zmq.Socket[bytes]] = []
        self._wire_paths: dict[zmq.Socket[bytes], str] = {}  # per socket, for wire precision
        self._zap_socks: set[zmq.Socket[bytes]] = set()  # the only ones whose peers have keys
        self._ucx: list[UcxListener] = []
        self._queue: deque[_Incoming] = deque()
        # Queued requests per connection. A plain dict: Counter's missing-key hook is a
        # Python call, made twice per request (the key is gone whenever the queue is empty).
        self._inflight: dict[Any, int] = {}
        self._cast_buffers = BufferPool()  # wire casts write into recycled pages
        self.metrics = Metrics()
        self.handler.metrics = self.metrics  # the "stats" request reads it
        self.sessions.on_end = self._forget_client
        self._stop = threading.Event()

    def _forget_client(self, sid: str) -> None:
        self.metrics.forget_client(sid)
        self.handler.backend.forget_client(sid)

    def bind(self) -> list[str]:
        self._ctx = zmq.Context()
        try:
            if self.auth_dir is not None:
                self._auth = ServerAuth(self._ctx, self.auth_dir)
            for transport, url in self._transports:
                if not transport.zmq_socket:
                    self.urls.append(self._listen_ucx(url))
                    continue
                sock = server_socket(self._ctx, self.limits.max_message_bytes)
                if self._auth is not None and transport.scheme == "tcp":
                    self._auth.apply(sock)
                    self._zap_socks.add(sock)
                self._socks.append(sock)
                self.urls.append(transport.bind(sock, url))
                self._wire_paths[sock] = wire_path(self.urls[-1])
        except BaseException:
            self.close()
            raise
        return self.urls

    def _listen_ucx(self, url: str) -> str:
        listener = UcxListener(self.limits.max_message_bytes, self.limits.max_frames)
        self._ucx.append(listener)
        return listener.bind(url)

    def stop(self) -> None:
        self._stop.set()

    def serve_forever(self) -> None:
        poller, drains, version = self._poller(), {}, -1  # built with the sessions below
        served = 0.0
        while not self._stop.is_set():
            if version != self.sessions.version:  # sessions came or went: poll their pipes
                pipes = self.sessions.pipes()
                poller, drains = self._poller(), self._drains(pipes)
                version = self.sessions.version
                for fd in pipes:
                    poller.register(fd, zmq.POLLIN)
            # Just served: poll without sleeping for a while, the next call is likely near.
            hot = (self._queue or self._running
                   or time.perf_counter() - served < self._spin.budget)
            # Only what is ready is looked at: idle sessions cost a polling loop nothing.
            for key, _ in poller.poll(0 if hot else POLL_MS):
                drain = drains.get(key)
                if drain is not None:
                    drain()
            if self._queue or self._running:
                if not self._running:  # how long the server waited for this request
                    self._spin.waited(time.perf_counter() - served)
                self._advance()
                served = time.perf_counter()
            if not self._running:  # reaping may unmap what running requests still use
                self.sessions.reap()
            if self._auth is not None:
                self._auth.reload()
        while self._queue or self._running:  # answer everything accepted before exiting
            self._advance()

    def _drains(self, pipes: dict[int, Session]) -> dict[Any, Callable[[], None]]:
        """What to call when each polled socket or descriptor is ready."""
        drains: dict[Any, Callable[[], None]] = {
            sock: functools.partial(self._drain, sock) for sock in self._socks}
        for listener in self._ucx:
            drains[listener.wake] = functools.partial(self._drain_ucx, listener)
        for fd, session in pipes.items():
            drains[fd] = functools.partial(self._drain_pipe, session)
        return drains

    def _poller(self) -> zmq.Poller:
        poller = zmq.Poller()
        for sock in self._socks:
            poller.register(sock, zmq.POLLIN)
        for listener in self._ucx:
            poller.register(listener.wake, zmq.POLLIN)
        return poller

    def close(self) -> None:
        self.sessions.close_all()
        for sock in self._socks:
            sock.close(linger=0)
        self._socks.clear()
        self._zap_socks.clear()
        for listener in self._ucx:
            listener.close()
        self._ucx.clear()
        for (transport, _), url in zip(self._transports, self.urls, strict=False):
            transport.unbind_cleanup(url)
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None
        self._cast_buffers.clear()

    def _drain(self, sock: zmq.Socket[bytes]) -> None:
        for _ in range(DRAIN_BATCH):
            # Checking EVENTS is ~1 us; a NOBLOCK recv that fails raises zmq.Again (~10 us).
            if not int(sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                return
            ident, *frames = sock.recv_multipart(copy=False)
            self._enqueue(_Incoming(sock, ident, frames, time.perf_counter()))

    def _enqueue(self, item: _Incoming) -> None:
        key = _connection(item)
        queued = self._inflight.get(key, 0)
        error: Exception | None = None
        if len(self._queue) >= self.max_queue:
            error = ServerBusy(f"server queue is full ({self.max_queue} requests); retry later")
        elif queued >= self.quotas.inflight:
            error = QuotaExceeded(
                f"more than {self.quotas.inflight} requests in flight on one connection"
            )
        if error is None:
            self._inflight[key] = queued + 1
            self._queue.append(item)
            return
        rid = peek_meta(item.frames[0] if item.frames else b"").get("id")
        self._reply(item, encode(error_meta(rid, error)))

    def _release_slot(self, item: _Incoming) -> None:
        key = _connection(item)
        left = self._inflight.get(key, 0) - 1
        if left > 0:
            self._inflight[key] = left
        else:
            self._inflight.pop(key, None)

    def _drain_ucx(self, listener: UcxListener) -> None:
        for peer, frames in listener.take():
            self._enqueue(_Incoming(None, peer, frames, time.perf_counter(), ucx=listener))

    def _drain_pipe(self, session: Session) -> None:
        pipe = session.channel.pipe if session.channel is not None else None
        if pipe is None:
            return
        try:
            pipe.reader.read_available()
            for frames in pipe.reader.messages():
                self._enqueue(_Incoming(None, None, frames, time.perf_counter(), session))
        except ProtocolError as exc:  # framing is lost: this client's pipe cannot recover
            self._end_session(session, f"unreadable message pipe: {exc}")

    def _advance(self) -> None:
        """Serial: run the next request and reply. Pipelined: launch queued requests up to
        the depth (their device work queues up behind the running ones'), then reply to the
        oldest once its device work is done."""
        running = self._running
        if self.pipeline_depth == 1:
            self._complete(self._launch(self._queue.popleft()))
            return
        while self._queue and len(running) < self.pipeline_depth:
            if running:
                if not self._overlappable(self._queue[0]):
                    break  # it waits until every running request has replied
                self.metrics.launched_behind += 1
            running.append(self._launch(self._queue.popleft()))
        if running:
            self._complete(running.popleft())

    def _overlappable(self, item: _Incoming) -> bool:
        """Whether a request may launch while others run: an op call or a graph, not a retry
        of a running request, and releasing no CUDA memory the running ones may still use."""
        meta = peek_meta(item.frames[0] if item.frames else b"")
        if meta.get("k") not in ("call", "graph") or "fi" in meta or "xa" in meta:
            return False
        key = (meta.get("s"), meta.get("id"))
        return all(key != (run.sid, run.rid) for run in self._running)

    def _finish_running(self) -> None:
        """Reply to every running request (before anything that could unmap their memory)."""
        while self._running:
            self._complete(self._running.popleft())

    def _end_session(self, session: Session, why: str) -> None:
        self._finish_running()  # their copies may still target this session's arenas
        self.sessions.end(session, why)

    def _launch(self, item: _Incoming) -> _Running:
        """Decode and run a request up to its device work (waited for in `_complete`); an
        error, or a retry's cached reply, is its reply at once."""
        self._release_slot(item)
        run = _Running(item, Observation("?", "", "-", True, "", [0.0] * 4, 0, 0),
                       time.perf_counter())
        try:
            self._start(run)
        except Exception as exc:  # every failure becomes this caller's error reply
            self.handler.backend.take_timings()  # drop a failed request's device work
            run.frames = self._failure(item, exc, run.obs)
        return run

    def _complete(self, run: _Running) -> None:
        frames, keep = run.frames, None
        if frames is None:
            try:
                frames, keep = self._finish(run)
            except Exception as exc:
                frames = self._failure(run.item, exc, run.obs)
        self._reply(run.item, frames)  # first: what follows is bookkeeping
        if run.blocks is not None:
            run.blocks.end()  # arena blocks kernels got but the reply did not use
        if keep is not None:  # for a retry; kept only now, while the client reads the reply
            keep[0].put(keep[1], frames)  # (one thread serves: no request can come between)
        obs = run.obs
        obs.bytes_in += _header_bytes(run.item.frames)
        obs.bytes_out += _header_bytes(frames)  # the header, as for in
        self.metrics.observe(obs)

    def _start(self, run: _Running) -> None:
        item, obs = run.item, run.obs
        decoded, session = self._decode(item)
        request = parse_request(decoded.meta, decoded.payload)
        obs.rid, obs.kind, obs.op = request.rid, request.kind, request.op
        obs.bytes_in = decoded.nbytes
        run.request, run.session, run.rid = request, session, request.rid
        if session is not None:
            run.sid = obs.client = session.sid
            cached = session.replies.get(request.rid)
            if cached is not None:  # a retry: answer again, never run twice
                run.frames = _from_cache(request.rid, cached)
                return
            _released(session, decoded.meta)
        channel = session.channel if session is not None else None
        backend = self.handler.backend
        backend.begin_request(run.sid)  # pipelined: on the client's own stream
        run.path = path = self._path(item, channel is not None)
        narrow = (settle_narrowed(request, path, decoded.handles, self._cast_buffers, backend)
                  if decoded.narrowed else None)  # most requests carry nothing narrowed
        run.deserialized = time.perf_counter()
        if request.kind == "hello":
            request.meta["user"] = self._user(item)  # the session belongs to this identity
            if item.ucx is not None:
                request.meta["host"] = None  # a remote session: no shared memory, no CUDA IPC
        if channel is not None and request.kind != "hello":
            run.blocks = channel.begin_reply()
        run.policy = policy = _reply_policy(decoded.meta.get("w"))
        if policy is None:
            result, run.compute = self.handler.handle(request, session, decoded.handles)
        else:  # a device backend may narrow its results before they leave the device
            with narrowing_replies(_narrowing(policy, path)):
                result, run.compute = self.handler.handle(request, session, decoded.handles)
        run.result = mark_narrowed(result, narrow) if narrow is not None else result
        run.fence = backend.fence()  # {} on CPU; the request's copies (pipelined: all of it)

    def _finish(self, run: _Running) -> tuple[list[Any], tuple[ReplyCache, int] | None]:
        """The reply frames, once the request's device work is done, and the reply cache to
        keep them in (by request id)."""
        request, session, blocks, obs = run.request, run.session, run.blocks, run.obs
        assert request is not None
        device = run.fence.wait()
        encoded_at = time.perf_counter()
        caster = None
        if run.policy is not None:  # results cast straight into the reply's arena where they go
            arena = blocks.allocate if blocks is not None else None
            caster = _caster(run.policy, run.path, self._cast_buffers, arena)
        result, run.result = run.result, None  # the reply holds what it needs
        encoded = encode_payload(result, blocks.place if blocks is not None else None, caster)
        done = time.perf_counter()
        obs.stages = server_stages(run.started - run.item.arrived,
                                   run.deserialized - run.started, run.compute, done - encoded_at)
        obs.bytes_out = encoded.nbytes
        stages: list[Any] = [*obs.stages, device] if device else obs.stages
        reply = {"id": request.rid, "ok": True, "t": stages}
        if request.kind == "graph" and isinstance(result, dict):
            reply["gm"] = result.get("mode")  # how the graph ran: compiled, or eager and why
        if encoded.handles:
            reply["hd"] = encoded.handles  # the client turns these into RemoteTensors
        if any("(" in path for path in encoded.paths):
            reply["rp"] = encoded.paths  # why a tensor fell back: the client cannot tell
        frames = encoded.frames(reply)
        if session is not None and request.kind not in ("hello", "bye"):
            return frames, (session.replies, request.rid)
        return frames, None

    def _path(self, item: _Incoming, shm: bool) -> str:
        """How this request's bytes travel, for wire precision: "shm", "local" or "tcp"."""
        if item.ucx is not None:
            return item.ucx.wire_path
        if shm or item.sock is None:
            return "shm"
        return self._wire_paths[item.sock]

    def _decode(self, item: _Incoming) -> tuple[Decoded, Session | None]:
        """The request and the session it names (checked to be the sender's)."""
        # Fast path: a pipe message can only be for its own session's arena, and a small
        # zmq request has its tensors in frames; either decodes in one msgpack call. Its
        # session is checked right after; anything else is decoded again, the careful way,
        # so a bad request gets the very error it always got.
        channel = item.session.channel if item.session is not None else None
        try:
            decoded = decode(item.frames, self.limits,
                             resolver=channel.resolve if channel is not None else None,
                             widener=Narrowed.checked)
        except ProtocolError:
            pass
        else:
            return decoded, self._session_of(item, decoded.meta)
        found: list[Session | None] = []  # the session, looked up once while decoding

        def resolver_for(meta: dict[str, Any]) -> Any:
            found.append(self._session_of(item, meta))
            channel = found[0].channel if found[0] is not None else None
            return channel.resolve if channel is not None else None

        decoded = decode(item.frames, self.limits, resolver_for=resolver_for,
                         widener=Narrowed.checked)
        return decoded, found[0]

    def _session_of(self, item: _Incoming, meta: dict[str, Any]) -> Session | None:
        session = self.sessions.get(meta)
        # Someone else's session id gets exactly the answer an unknown one gets.
        foreign_pipe = item.session is not None and session is not item.session
        if foreign_pipe or (session is not None and item.sock is not None
                            and session.user != self._user(item)):
            raise SessionExpired("unknown or expired session; reconnect")
        return session

    def _user(self, item: _Incoming) -> str | None:
        # Without ZAP there is no User-Id: asking would raise (and catch) a ZMQError.
        return _user(item) if item.sock in self._zap_socks else None

    def _failure(self, item: _Incoming, exc: Exception, obs: Observation) -> list[Any]:
        rid = obs.rid
        if rid is None:
            rid = peek_meta(item.frames[0] if item.frames else b"").get("id")
        obs.ok, obs.error = False, type(exc).__name__
        if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
            self.handler.backend.release_memory()  # caches emptied; the server keeps serving
        log.debug("request %r failed: %r", rid, exc)
        return encode(error_meta(rid, exc))

    def _reply(self, item: _Incoming, frames: list[Any]) -> None:
        if item.ucx is not None:
            item.ucx.reply(item.ident, frames)
            return
        if item.sock is None:
            self._reply_pipe(item, frames)
            return
        try:
            # NOBLOCK: with ROUTER_MANDATORY a full peer makes a blocking send wait for
            # good, and one client that never reads would stall the whole server.
            item.sock.send_multipart([item.ident, *frames], flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            log.warning("client is not reading its replies; reply dropped after HWM")
        except zmq.ZMQError as exc:  # EHOSTUNREACH: the client is gone
            log.info("reply not delivered: %s", exc)

    def _reply_pipe(self, item: _Incoming, frames: list[Any]) -> None:
        session = item.session
        channel = session.channel if session is not None else None
        pipe = channel.pipe if channel is not None else None
        if session is None or pipe is None:
            return  # the session ended while the request waited: its client is gone
        try:
            pipe.send(pack_message(frames), PIPE_REPLY_TIMEOUT)
        except ChannelError as exc:
            self._end_session(session, str(exc))



def _released(session: Session, meta: dict[str, Any]) -> None:
    """What the client piggybacked: arena blocks ("fr"), handles ("fh") and CUDA IPC
    storages ("fi") it dropped, the replies it got ("ak") and the exported CUDA results it
    opened ("xa")."""
    if "fr" in meta and session.channel is not None:
        session.channel.release(meta["fr"])
    if "fh" in meta:
        session.store.free(meta["fh"])
    if "ak" in meta:
        session.replies.drop(meta["ak"])
    if "fi" in meta and session.ipc is not None:
        session.ipc.release(meta["fi"])
    if "xa" in meta and session.exports is not None:
        session.exports.acknowledged(meta["xa"])


def _user(item: _Incoming) -> str | None:
    """The authenticated CurveZMQ key of a request's sender (None without auth)."""
    if item.sock is None or not item.frames:
        return None
    try:
        user = item.frames[0].get("User-Id")
    except (zmq.ZMQError, AttributeError):
        return None
    return user if isinstance(user, str) else None


def _reply_policy(wire: Any) -> str | None:
    """The client's wire policy for the reply (its request's "w"), checked; None: none."""
    if wire is None:
        return None
    policy = validate_wire_dtype(wire) if isinstance(wire, str) else None
    if policy is None:
        raise ProtocolError(f"unknown wire dtype {wire!r}")
    return policy


def _narrowing(policy: str, path: str) -> Callable[[int], str | None]:
    """What `_caster` would narrow a float32 result of n bytes to, asked ahead of it."""
    return lambda nbytes: choose(policy, transport_path=path, nbytes=nbytes)


def _caster(policy: str, path: str, pool: BufferPool, arena: Allocator | None) -> Caster:
    """Narrow results the way the client narrowed its request (its wire policy); into a
    block of the reply's arena when `arena` gives one (the placer then copies nothing)."""

    def cast(arr: Any) -> tuple[np.ndarray, str | None]:
        wire = choose(policy, transport_path=path, nbytes=arr.nbytes)
        out = None
        if arena is not None and wire is not None and castable(arr):
            out = arena(arr.shape, wire_numpy_dtype(wire))  # None: small, or no room
        return to_wire(arr, wire, out=out, pool=pool)

    return cast


def _connection(item: _Incoming) -> Any:
    """Who a queued request came from: its zmq routing id, ucx peer, or session's pipe."""
    if item.ucx is not None:
        return ("ucx", id(item.ucx), item.ident)
    if item.sock is None and item.session is not None:
        return item.session.sid
    # The routing id by value: zmq.Frame objects hash by identity, one per message.
    return bytes(item.ident.buffer) if isinstance(item.ident, zmq.Frame) else item.ident


def _header_bytes(frames: list[Any]) -> int:
    return memoryview(frames[0]).nbytes if frames else 0


def _from_cache(rid: int, cached: Any) -> list[Any]:
    if cached is TOO_LARGE:
        raise ProtocolError(
            f"request {rid} already ran; its reply was too large to keep for a retry"
        )
    frames: list[Any] = cached
    return frames
