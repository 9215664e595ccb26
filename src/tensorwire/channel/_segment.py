"""One shared-memory segment: a file under /dev/shm, mapped into each process that uses it.

Not ``multiprocessing.shared_memory``: before Python 3.13 its resource tracker unlinks a
segment when any process that merely attached to it exits (cpython#82300).
"""

from __future__ import annotations

import errno
import mmap
import os
import re
import secrets
import stat
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from ._errors import ChannelError, SegmentRefused, ShmFullError

__all__ = ["DEFAULT_DIRECTORY", "DEFAULT_PREFIX", "Segment", "sweep_stale"]

DEFAULT_DIRECTORY = "/dev/shm"
DEFAULT_PREFIX = "tensorwire-"

_PREFIX_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
_TOKEN_BYTES = 12  # 96 random bits: names cannot be guessed
_SPACE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_CREATE_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_ATTACH_FLAGS = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC


def _name_pattern(prefix: str) -> re.Pattern[str]:
    if not _PREFIX_RE.fullmatch(prefix):
        raise ValueError(f"segment prefix must match {_PREFIX_RE.pattern}, got {prefix!r}")
    return re.compile(re.escape(prefix) + rf"([0-9]{{1,10}})-[0-9a-f]{{{2 * _TOKEN_BYTES}}}")


def _unlink_if_creator(path: str, creator_pid: int) -> None:
    # A forked child inherits finalizers; only the creating process may remove the name.
    if os.getpid() == creator_pid:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


class Segment:
    """A mapped shared-memory file. Create with :meth:`create`, or :meth:`attach` to one.

    Lifetime: only the creator unlinks the file (on :meth:`close`, when the creator's
    Segment is garbage-collected, or at interpreter exit); an attacher's :meth:`close`
    only unmaps. Closing while numpy arrays or memoryviews of the segment are alive does
    not raise: the name is removed at once and the memory is unmapped when the last of
    those views is dropped.
    """

    def __init__(self, name: str, path: str, size: int, fd: int, creator: bool) -> None:
        # Private: use create() or attach(). Takes ownership of fd (mmap keeps its own dup).
        try:
            # MAP_POPULATE: fault the pages in once now, not on every first touch later.
            flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
            self._mm: mmap.mmap | None = mmap.mmap(fd, size, flags=flags)
        finally:
            os.close(fd)
        self._buf: memoryview | None = memoryview(self._mm)
        self.name = name
        self.size = size
        self.is_creator = creator
        self._finalizer = weakref.finalize(self, _unlink_if_creator, path, os.getpid())
        if not creator:
            self._finalizer.detach()

    @classmethod
    def create(
        cls, size: int, *, directory: str = DEFAULT_DIRECTORY, prefix: str = DEFAULT_PREFIX
    ) -> Segment:
        """Create a new segment of ``size`` bytes, its space reserved now (no SIGBUS later)."""
        _name_pattern(prefix)
        if size <= 0:
            raise ValueError(f"segment size must be positive, got {size}")
        name = f"{prefix}{os.getpid()}-{secrets.token_hex(_TOKEN_BYTES)}"
        path = os.path.join(directory, name)
        fd = os.open(path, _CREATE_FLAGS, 0o600)
        try:
            _reserve(fd, size, directory)
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        try:
            return cls(name, path, size, fd, creator=True)
        except BaseException:
            os.unlink(path)
            raise

    @classmethod
    def attach(
        cls,
        name: str,
        size: int,
        *,
        directory: str = DEFAULT_DIRECTORY,
        prefix: str = DEFAULT_PREFIX,
    ) -> Segment:
        """Map an existing segment after checking its name, file type and size."""
        if not isinstance(name, str) or not _name_pattern(prefix).fullmatch(name):
            raise SegmentRefused(
                f"segment name refused: expected {prefix!r} + pid + '-' + "
                f"{2 * _TOKEN_BYTES} hex digits, no path separators"
            )
        try:
            fd = os.open(os.path.join(directory, name), _ATTACH_FLAGS)
        except OSError as exc:
            raise SegmentRefused(f"cannot open segment in {directory}: {exc.strerror}") from None
        try:
            _check_file(fd, size)
        except BaseException:
            os.close(fd)
            raise
        return cls(name, os.path.join(directory, name), size, fd, creator=False)

    @property
    def closed(self) -> bool:
        return self._mm is None

    @property
    def buf(self) -> memoryview:
        """A writable, byte-format memoryview of the whole segment."""
        if self._buf is None:
            raise ChannelError("segment is closed")
        return self._buf

    def ndarray(self, offset: int, shape: Sequence[int] | int, dtype: npt.DTypeLike) -> Any:
        """A writable numpy array of ``shape``/``dtype`` viewing the bytes at ``offset``."""
        if self._mm is None:
            raise ChannelError("segment is closed")
        dt = np.dtype(dtype)
        dims = (shape,) if isinstance(shape, int) else tuple(shape)
        count = int(np.prod(dims, dtype=np.int64))
        if offset < 0 or count < 0 or offset + count * dt.itemsize > self.size:
            raise ChannelError(
                f"view of {count} x {dt} at offset {offset} exceeds segment of {self.size} bytes"
            )
        return np.frombuffer(self._mm, dtype=dt, count=count, offset=offset).reshape(dims)

    def close(self) -> None:
        """Unmap (deferred while views are alive); the creator also unlinks. Idempotent."""
        self._finalizer()  # creator: unlink now; the mapping stays valid
        mm, buf = self._mm, self._buf
        self._mm = self._buf = None
        if buf is not None:
            try:
                buf.release()
            except BufferError:
                pass  # arrays built on .buf still use it; dropped with them
        if mm is not None:
            try:
                mm.close()
            except BufferError:
                pass  # live exports hold mm; it unmaps when the last one is freed

    def __enter__(self) -> Segment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("creator" if self.is_creator else "attached")
        return f"<Segment {self.size} bytes, {state}>"


def _reserve(fd: int, size: int, directory: str) -> None:
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in _SPACE_ERRNOS:
            raise ShmFullError(directory, size, exc.strerror or str(exc)) from None
        raise


def _check_file(fd: int, size: int) -> None:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise SegmentRefused("segment refused: not a regular file")
    if st.st_uid != os.geteuid():
        raise SegmentRefused("segment refused: owned by another user")
    if st.st_size != size:
        raise SegmentRefused(f"segment refused: claimed {size} bytes, file has {st.st_size}")


def sweep_stale(directory: str = DEFAULT_DIRECTORY, prefix: str = DEFAULT_PREFIX) -> int:
    """Remove segments whose creating process is gone; return how many were removed.

    The creator's pid is part of the name. A pid reused by a new process keeps its segments
    (conservative), and only this user's regular files are touched. Processes in another pid
    namespace sharing this directory would look dead: sweep only a directory you own.
    """
    pattern = _name_pattern(prefix)
    removed = 0
    for entry in os.scandir(directory):
        match = pattern.fullmatch(entry.name)
        if match is None or _pid_alive(int(match.group(1))):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid():
                os.unlink(entry.path)
                removed += 1
        except FileNotFoundError:
            pass  # swept concurrently
    return removed


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, belongs to someone else
    return True
