"""Messages over a pair of FIFOs: the same-host fast path for small calls.

ZeroMQ hands every message to an I/O thread on each side; a pipe is one kernel
hop each way (measured here: 1-byte round trip ~45 us through a pipe against
~96 us through zmq ipc). Bulk tensor bytes still go through the arena; what
crosses the pipe is the header plus small inline tensors.

Framing: u32 frame count, u32 length per frame, then the frames' bytes. A
message is written with one write() into a pipe sized to hold it, so a reader
never waits on a half-written message from a live peer.

Spinning: a process that sleeps in select() gives its CPU back and wakes slowly on
VMs like the 2-vCPU one here (with 200 us sleeps between requests, a server's work
per request grew from 33 to 95 us). So a waiter first polls for up to
`spin_us` microseconds (client: for its reply, on the pipe or its zmq socket;
server: after each request, for the next one), and only then sleeps. That spends
at most that much CPU per call.
"""

from __future__ import annotations

import fcntl
import functools
import os
import re
import select
import shutil
import stat
import struct
import tempfile
import time
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

from ..errors import ProtocolError
from ._errors import ChannelError, SegmentRefused
from ._host import pid_alive

MAX_PIPE_MESSAGE = 1 << 20  # bytes; larger messages go through ZeroMQ
MAX_PIPE_FRAMES = 64
# Bytes asked for per read: below malloc's mmap threshold, so a read costs no fresh 1 MiB
# mapping (and its page faults) when the message is small, as most are.
READ_CHUNK = 64 << 10
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_PREFIX = "tensorwire-pipe-"
# The creator's pid is part of the name, so a restarted server can sweep what a dead one left.
_NAME_RE = re.compile(re.escape(_PREFIX) + r"([0-9]{1,10})-[A-Za-z0-9_]{1,32}")
TO_SERVER, TO_CLIENT = "c2s", "s2c"
DEFAULT_SPIN_US = 200  # covers a warm turnaround on both sides of a 1 KB call here
MAX_SPIN_US = 100_000
_COUNT = struct.Struct("<I")
_MAX_POLL_MS = float(2**31 - 2)


def spin_seconds(spin_us: object) -> float:
    """Validate a spin budget given in microseconds; seconds."""
    if isinstance(spin_us, bool) or not isinstance(spin_us, int | float):
        raise ValueError(f"spin_us must be a number of microseconds, got {spin_us!r}")
    if not 0 <= spin_us <= MAX_SPIN_US:
        raise ValueError(f"spin_us must be between 0 and {MAX_SPIN_US}, got {spin_us!r}")
    return float(spin_us) * 1e-6


@functools.cache
def _sizes(count: int) -> struct.Struct:
    """The frame-size table of a `count`-frame message (compiled once per count)."""
    return struct.Struct(f"<{count}I")


@functools.cache
def _head(count: int) -> struct.Struct:
    """The frame count and size table of a `count`-frame message, packed in one go."""
    return struct.Struct(f"<{count + 1}I")


def _pack(frames: Sequence[Any], sizes: list[int]) -> bytes:
    return b"".join([_head(len(sizes)).pack(len(sizes), *sizes), *frames])


def pack_message(frames: Sequence[Any]) -> bytes:
    """The frames as one framed pipe message."""
    return _pack(frames, [memoryview(f).nbytes for f in frames])


def unpack_message(buf: memoryview, max_frames: int = MAX_PIPE_FRAMES) -> list[memoryview]:
    """The frames of one whole framed message (views of `buf`); ProtocolError if the
    count or sizes do not add up to exactly `buf`."""
    if buf.nbytes < 4:
        raise ProtocolError(f"message of {buf.nbytes} bytes has no frame count")
    (count,) = _COUNT.unpack_from(buf)
    if not 1 <= count <= max_frames:
        raise ProtocolError(f"message claims {count} frames; 1..{max_frames} allowed")
    head = 4 + 4 * count
    if buf.nbytes < head:
        raise ProtocolError(f"message of {buf.nbytes} bytes is shorter than its {count} sizes")
    sizes = _sizes(count).unpack_from(buf, 4)
    if head + sum(sizes) != buf.nbytes:
        raise ProtocolError(
            f"message framing says {head + sum(sizes)} bytes, message has {buf.nbytes}"
        )
    frames, at = [], head
    for size in sizes:
        frames.append(buf[at : at + size])
        at += size
    return frames


def small_message(frames: Sequence[Any]) -> bytes | None:
    """A pipe message for a request small enough for the pipe, else None (use ZeroMQ)."""
    if len(frames) > MAX_PIPE_FRAMES:
        return None
    sizes = [memoryview(f).nbytes for f in frames]
    if sum(sizes) + 4 * (len(frames) + 1) > MAX_PIPE_MESSAGE:
        return None
    return _pack(frames, sizes)


class MessageReader:
    """Accumulates bytes from a non-blocking pipe and yields complete messages."""

    def __init__(self, fd: int, max_message: int) -> None:
        self.fd = fd
        self.max_message = max_message
        self._buf = bytearray()

    def read_available(self) -> None:
        while True:
            try:
                chunk = os.read(self.fd, READ_CHUNK)
            except BlockingIOError:
                return
            if not chunk:
                return
            self._buf += chunk
            if len(self._buf) > 2 * self.max_message:
                raise ProtocolError("peer wrote more than it may have in flight on its pipe")
            if len(chunk) < READ_CHUNK:
                # A pipe read comes back short only once the pipe is empty: skip the read
                # that would fail (an exception per message). Callers poll level-triggered,
                # so bytes written after this are seen on their next wait.
                return

    def messages(self) -> Iterator[list[memoryview]]:
        while True:
            message = self._take()
            if message is None:
                return
            yield message

    def _take(self) -> list[memoryview] | None:
        if len(self._buf) < 4:
            return None
        (count,) = _COUNT.unpack_from(self._buf)
        if not 1 <= count <= MAX_PIPE_FRAMES:
            raise ProtocolError(f"pipe message claims {count} frames; 1..{MAX_PIPE_FRAMES} allowed")
        head = 4 + 4 * count
        if len(self._buf) < head:
            return None
        sizes = _sizes(count).unpack_from(self._buf, 4)
        total = head + sum(sizes)
        if total > self.max_message:
            raise ProtocolError(f"pipe message of {total} bytes exceeds {self.max_message}")
        if len(self._buf) < total:
            return None
        if len(self._buf) == total:  # the usual case, one whole message: hand the buffer over
            body, self._buf = memoryview(self._buf)[head:], bytearray()
        else:
            body = memoryview(self._buf[head:total])  # a copy: writable, owned by the message
            del self._buf[:total]
        frames, at = [], 0
        for size in sizes:
            frames.append(body[at : at + size])
            at += size
        return frames


def sweep_stale_pipes(directory: str) -> int:
    """Remove pipe directories whose creating process is gone; return how many.

    Like `sweep_stale` for segments: only this user's directories, a live (or reused)
    pid keeps its pipes.
    """
    removed = 0
    for entry in os.scandir(directory):
        match = _NAME_RE.fullmatch(entry.name)
        if match is None or pid_alive(int(match.group(1))):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue  # swept concurrently
        if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid():
            shutil.rmtree(entry.path, ignore_errors=True)
            removed += 1
    return removed


def remove_if_creator(path: str, creator_pid: int) -> None:
    """A finalizer: only the process that made the FIFO directory removes it (not forks)."""
    if os.getpid() == creator_pid:
        shutil.rmtree(path, ignore_errors=True)


def make_fifo_pair(directory: str, prefix: str) -> str:
    """A new mode-0700 directory with an unguessable name holding the two 0600 FIFOs."""
    path = tempfile.mkdtemp(prefix=prefix, dir=directory)
    try:
        for fifo in (TO_SERVER, TO_CLIENT):
            os.mkfifo(os.path.join(path, fifo), 0o600)
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
    return path


class MessagePipe:
    """Two FIFOs in a private 0700 directory: the server creates, the client attaches.

    Both ends open each FIFO read-write, so opening never blocks and a dead peer
    never shows as EOF: liveness stays with the session reaper and timeouts.
    """

    def __init__(self, directory: str, name: str, creator: bool, max_message: int) -> None:
        path = os.path.join(directory, name)
        send, recv = (TO_CLIENT, TO_SERVER) if creator else (TO_SERVER, TO_CLIENT)
        self.name, self.is_creator = name, creator
        self._finalizer = weakref.finalize(self, remove_if_creator, path, os.getpid())
        if not creator:
            self._finalizer.detach()
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        self.recv_fd = os.open(os.path.join(path, recv), flags)
        self.send_fd = os.open(os.path.join(path, send), flags)
        for fd in (self.recv_fd, self.send_fd):
            try:
                fcntl.fcntl(fd, _F_SETPIPE_SZ, MAX_PIPE_MESSAGE)
            except OSError:
                pass  # a smaller pipe still works; writes may then wait for the reader
        self.reader = MessageReader(self.recv_fd, max_message)
        self._poller = select.poll()  # for wait_readable: made once, not per wait
        self._poller.register(self.recv_fd, select.POLLIN)

    @classmethod
    def create(cls, directory: str, max_message: int = MAX_PIPE_MESSAGE) -> MessagePipe:
        """The server's end; it reads messages of at most `max_message` bytes."""
        path = make_fifo_pair(directory, f"{_PREFIX}{os.getpid()}-")
        try:
            return cls(directory, os.path.basename(path), True, max_message)
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise

    @classmethod
    def attach(cls, name: Any, directory: str, max_message: int) -> MessagePipe:
        """The client's end; replies may be as large as any message."""
        if not isinstance(name, str) or not name.startswith(_PREFIX) or "/" in name:
            raise SegmentRefused("pipe name refused")
        try:
            return cls(directory, name, False, max_message)
        except OSError as exc:
            raise SegmentRefused(f"cannot open the message pipe: {exc.strerror}") from None

    def send(self, message: bytes, timeout: float) -> None:
        """Write a whole message; ChannelError if the reader has not taken it in time.

        A message that was only partly written leaves the stream unframed: the
        caller must stop using the pipe after an error.
        """
        try:  # the usual case: the pipe has room, one write
            written = os.write(self.send_fd, message)
        except BlockingIOError:
            written = 0
        if written == len(message):
            return
        view, deadline = memoryview(message)[written:], time.monotonic() + timeout
        while view.nbytes:
            try:
                view = view[os.write(self.send_fd, view) :]
            except BlockingIOError:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ChannelError("the peer is not reading its message pipe") from None
                select.select([], [self.send_fd], [], remaining)

    def wait_readable(self, timeout: float, spin: float = 0.0) -> bool:
        """Whether a message arrived within `timeout` seconds, polling the first `spin`.

        A poll object (made once) rather than select(), which builds and scans its lists on
        every one of the spin's polls (~0.9 us). One waiting thread at a time (the client
        holds its pipe lock)."""
        poller = self._poller
        if spin > 0:
            clock = time.perf_counter
            until = clock() + min(spin, timeout)
            while clock() < until:
                if poller.poll(0):
                    return True
        # poll() takes milliseconds (rounded up), as a C int, and waits forever when given
        # a negative number; select() takes longer waits.
        ms = max(timeout, 0.0) * 1000.0
        if ms < _MAX_POLL_MS:
            return bool(poller.poll(ms))
        return bool(select.select([self.recv_fd], [], [], timeout)[0])

    def close(self) -> None:
        if self.recv_fd >= 0:  # a reused fd number must not look readable to a late wait
            self._poller.unregister(self.recv_fd)
        for fd in (self.recv_fd, self.send_fd):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError as exc:
                    raise ChannelError(f"closing the message pipe: {exc.strerror}") from None
        self.recv_fd = self.send_fd = -1
        self._finalizer()
