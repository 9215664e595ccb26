"""Same-host sessions: the shared-memory arenas of each client, and their reclaiming.

A session exists only where shared memory was negotiated (same host token). It
ends when its client says goodbye, or when the client's process is found dead
(checked every REAP_INTERVAL), so a SIGKILLed client leaves nothing behind.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any

from ..channel import DEFAULT_DIRECTORY, ServerChannel, host_token, pid_alive, sweep_stale
from ..channel._errors import ChannelError
from ..codec import Resolver
from ..errors import ProtocolError

log = logging.getLogger("tensorwire.server")

REAP_INTERVAL = 1.0  # seconds between checks for dead client processes
MIN_ARENA = 1 << 20


@dataclass
class Session:
    sid: str
    pid: int
    channel: ServerChannel


class Sessions:
    def __init__(self, *, enabled: bool = True, directory: str = DEFAULT_DIRECTORY,
                 max_arena: int = 1 << 30) -> None:
        self.enabled = enabled
        self.directory = directory
        self.max_arena = max_arena
        self._sessions: dict[str, Session] = {}
        self._next_reap = 0.0
        self.version = 0  # bumped whenever the set of sessions (and their pipes) changes
        if enabled:
            removed = sweep_stale(directory)
            if removed:
                log.info("removed %d stale shared-memory segments", removed)

    def hello(self, meta: dict[str, Any]) -> dict[str, Any]:
        """Offer shared memory to a client on this host; say why not otherwise."""
        want, pid = meta.get("shm", 0), meta.get("pid")
        if not want:
            return {"shm": None, "shm_reason": "not requested"}
        if not self.enabled:
            return {"shm": None, "shm_reason": "shared memory is disabled on this server"}
        if type(want) is not int or type(pid) is not int or want < 0 or pid <= 0:
            raise ProtocolError("hello: shm size and pid must be positive integers")
        if not meta.get("host") or meta.get("host") != host_token():
            return {"shm": None, "shm_reason": "client is on another host"}
        size = min(max(want, MIN_ARENA), self.max_arena)
        try:
            channel = ServerChannel(size, directory=self.directory)
        except ChannelError as exc:
            return {"shm": None, "shm_reason": f"cannot create the arena: {exc}"}
        except OSError as exc:  # directory gone or unwritable, no fds, mmap refused
            # strerror only: str(exc) would name the segment's path.
            log.warning("cannot create a shared-memory arena: %s", exc)
            reason = exc.strerror or type(exc).__name__
            return {"shm": None, "shm_reason": f"cannot create the arena: {reason}"}
        sid = secrets.token_hex(16)
        self._sessions[sid] = Session(sid, pid, channel)
        self.version += 1
        return {"shm": channel.offer(), "session": sid}

    def get(self, meta: dict[str, Any]) -> Session | None:
        sid = meta.get("s")
        if sid is None:
            return None
        session = self._sessions.get(sid) if isinstance(sid, str) else None
        if session is None:
            raise ProtocolError("unknown or expired session; reconnect")
        return session

    def resolver_for(self, meta: dict[str, Any]) -> Resolver | None:
        session = self.get(meta)
        return session.channel.resolve if session is not None else None

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
            if not pid_alive(session.pid):
                log.info("client process %d is gone; reclaiming its session", session.pid)
                self._end(sid)

    def close_all(self) -> None:
        for sid in list(self._sessions):
            self._end(sid)

    def __len__(self) -> int:
        return len(self._sessions)

    def pipes(self) -> dict[int, Session]:
        """The read end of every session's message pipe."""
        return {
            s.channel.pipe.recv_fd: s for s in self._sessions.values() if s.channel.pipe is not None
        }

    def end(self, session: Session, why: str) -> None:
        log.info("ending session of client process %d: %s", session.pid, why)
        self._end(session.sid)

    def _end(self, sid: str) -> None:
        session = self._sessions.pop(sid, None)
        if session is not None:
            session.channel.close()
            self.version += 1
