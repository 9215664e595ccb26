"""Sessions: what the server keeps for each client, and its reclaiming.

Every client gets a session at hello: its resident tensors, and where shared
memory was negotiated (same host token) its arenas and message pipe. A session
ends when its client says goodbye; a same-host client's session also ends when
its process is found dead (checked every REAP_INTERVAL), a remote one's after
IDLE_TIMEOUT without a request, so a SIGKILLed client leaves nothing behind.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..channel import DEFAULT_DIRECTORY, ServerChannel, host_token, pid_alive, sweep_stale
from ..channel._cuda import IpcImports
from ..channel._errors import ChannelError, ShmFullError
from ..channel._pipe import sweep_stale_pipes
from ..errors import ProtocolError, SessionExpired
from ._ipc import IpcExports, ipc_refusal, session_imports
from ._replies import ReplyCache
from ._resident import ContentCache, Quotas, ResidentStore
from .ops import Backend

log = logging.getLogger("tensorwire.server")

REAP_INTERVAL = 1.0  # seconds between checks for dead client processes
IDLE_TIMEOUT = 600.0  # seconds; a remote client's session ends after this long unheard
MIN_ARENA = 1 << 20


@dataclass
class Session:
    sid: str
    pid: int
    local: bool  # same host: reaped when its process dies, else when idle too long
    store: ResidentStore
    channel: ServerChannel | None = None
    last_seen: float = 0.0
    user: str | None = None  # the CurveZMQ key that opened it; only it may use the session
    replies: ReplyCache = field(default_factory=ReplyCache)
    hello_token: str = ""  # the client's hello id: a resent hello gets this session again
    hello_reply: dict[str, Any] = field(default_factory=dict)
    ipc: IpcImports | None = None  # CUDA IPC storages opened for a local client
    ipc_refusal: str = "not negotiated"  # why CUDA IPC arguments are refused ("": accepted)
    exports: IpcExports | None = None  # results exported to it by CUDA IPC, not yet opened


class Sessions:
    def __init__(self, backend: Backend, *, enabled: bool = True,
                 directory: str = DEFAULT_DIRECTORY, max_arena: int = 1 << 30,
                 idle_timeout: float = IDLE_TIMEOUT, quotas: Quotas | None = None) -> None:
        self.backend = backend
        self.quotas = quotas or Quotas()
        self.cache = ContentCache()
        self.idle_timeout = idle_timeout
        self.enabled = enabled
        self.directory = directory
        self.max_arena = max_arena
        self._sessions: dict[str, Session] = {}
        self._by_token: dict[str, Session] = {}
        self._next_reap = 0.0
        self.version = 0  # bumped whenever the set of sessions (and their pipes) changes
        self.on_end: Callable[[str], None] | None = None  # told each ended session id
        if enabled:
            removed = sweep_stale(directory) + sweep_stale_pipes(directory)
            if removed:
                log.info("removed %d stale shared-memory segments", removed)

    def hello(self, meta: dict[str, Any]) -> dict[str, Any]:
        """Open a session; offer shared memory to a client on this host, or say why not."""
        want, pid = meta.get("shm", 0), meta.get("pid", 0)
        if type(want) is not int or type(pid) is not int or want < 0 or pid < 0:
            raise ProtocolError("hello: shm size and pid must be non-negative integers")
        token = meta.get("ht")
        again = self._by_token.get(token) if isinstance(token, str) else None
        if again is not None and again.user == meta.get("user"):
            return again.hello_reply  # a resent hello (the first reply was lost): same session
        local = bool(pid) and bool(meta.get("host")) and meta.get("host") == host_token()
        store = ResidentStore(self.backend, self.cache, self.quotas)
        session = Session(secrets.token_hex(16), pid, local, store,
                          last_seen=time.monotonic(), user=meta.get("user"))
        reply: dict[str, Any] = {"session": session.sid, "shm": None}
        session.ipc = session_imports(local, pid)
        session.ipc_refusal = ipc_refusal(local, pid, self.backend.device)
        reply["ipc"], reply["ipc_reason"] = not session.ipc_refusal, session.ipc_refusal
        if not session.ipc_refusal and meta.get("xr") is True:  # Client(cuda_results="map")
            session.exports = IpcExports()
            reply["pid"] = os.getpid()  # who exports results: the client checks their origin
        if not want:
            reply["shm_reason"] = "not requested"
        elif not self.enabled:
            reply["shm_reason"] = "shared memory is disabled on this server"
        elif not local:
            reply["shm_reason"] = "client is on another host"
        else:
            session.channel, reply["shm_reason"] = self._channel(want)
            reply["shm"] = session.channel.offer() if session.channel is not None else None
        self._sessions[session.sid] = session
        if isinstance(token, str) and len(token) <= 64:
            session.hello_token, session.hello_reply = token, reply
            self._by_token[token] = session
        self.version += 1
        return reply

    def _channel(self, want: int) -> tuple[ServerChannel | None, str]:
        size = min(max(want, MIN_ARENA), self.max_arena)
        try:
            pin = self.backend.device.startswith("cuda")  # page-locked arenas for fast H2D
            return ServerChannel(size, directory=self.directory, pin=pin), ""
        except ShmFullError as exc:  # the client hears why, never the directory's path
            log.warning("cannot create a shared-memory arena: %s", exc)
            return None, (
                "cannot create the arena: the shared-memory directory is full "
                f"(a {exc.size}-byte segment did not fit)"
            )
        except ChannelError as exc:
            return None, f"cannot create the arena: {exc}"
        except OSError as exc:  # directory gone or unwritable, no fds, mmap refused
            # strerror only: str(exc) would name the segment's path.
            log.warning("cannot create a shared-memory arena: %s", exc)
            return None, f"cannot create the arena: {exc.strerror or type(exc).__name__}"

    def get(self, meta: dict[str, Any]) -> Session | None:
        sid = meta.get("s")
        if sid is None:
            return None
        session = self._sessions.get(sid) if isinstance(sid, str) else None
        if session is None:
            raise SessionExpired("unknown or expired session; reconnect")
        session.last_seen = time.monotonic()
        return session

    def bye(self, meta: dict[str, Any]) -> None:
        session = self.get(meta)
        if session is not None:
            self._end(session.sid)

    def reap(self) -> None:
        """End sessions whose client process has died (at most once per interval)."""
        now = time.monotonic()
        if now < self._next_reap:
            return
        self._next_reap = now + REAP_INTERVAL
        for sid, session in list(self._sessions.items()):
            if session.ipc is not None and len(session.ipc.leases):
                session.ipc.leases.reap()  # imports the client neither used nor released
            if session.exports is not None and len(session.exports):
                session.exports.reap()  # exports the client did not acknowledge in time
            if session.local and not pid_alive(session.pid):
                log.info("client process %d is gone; reclaiming its session", session.pid)
                self._end(sid)
            elif not session.local and now - session.last_seen > self.idle_timeout:
                log.info("remote client silent for %.0f s; reclaiming its session",
                         now - session.last_seen)
                self._end(sid)

    def close_all(self) -> None:
        for sid in list(self._sessions):
            self._end(sid)

    def __len__(self) -> int:
        return len(self._sessions)

    def live(self) -> list[Session]:
        """Every open session; one C-level copy, so another thread may call it."""
        return list(self._sessions.values())

    def pipes(self) -> dict[int, Session]:
        """The read end of every session's message pipe."""
        return {
            s.channel.pipe.recv_fd: s
            for s in self._sessions.values()
            if s.channel is not None and s.channel.pipe is not None
        }

    def end(self, session: Session, why: str) -> None:
        log.info("ending session of client process %d: %s", session.pid, why)
        self._end(session.sid)

    def _end(self, sid: str) -> None:
        session = self._sessions.pop(sid, None)
        if session is not None:
            self._by_token.pop(session.hello_token, None)
            session.store.clear()
            if session.channel is not None:
                session.channel.close()
            if session.ipc is not None:
                session.ipc.close()  # the client's CUDA memory is unmapped here
            if session.exports is not None:
                session.exports.close()
            self.version += 1
            if self.on_end is not None:
                self.on_end(sid)
