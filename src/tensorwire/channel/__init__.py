"""Channel: moves tensor bytes between processes on one host through shared memory.

Lifetime rules
--------------
- The server creates segments (:meth:`Segment.create`, :meth:`Arena.create`) and is the
  only process that unlinks them: on ``close()``, when its Segment is garbage-collected,
  or at interpreter exit. Keep a reference for as long as clients may attach.
  A forked child of the creator never unlinks.
- A client only attaches (:meth:`Segment.attach`) to a name the server gave it; attaching
  validates the name (prefix, pid, 24 hex digits, no path separators), file type, owner
  and size. An attacher's ``close()`` only unmaps; its exit removes nothing.
- Names are unguessable (96 random bits), files are mode 0600, and space is reserved at
  creation (a full /dev/shm raises :class:`ShmFullError` instead of a later SIGBUS).
- Closing while arrays still view a segment is safe: the unmap waits for the last view.
- Segment names never appear in error messages, which may be sent to a client.
- :func:`sweep_stale` removes segments left by creators that died without cleaning up.
- A :class:`Doorbell` (two FIFOs in a private directory) follows the same rules: the
  server creates and removes it, the client attaches by name.
- An :class:`Arena` has a fixed capacity; ``alloc`` returns ``None`` when nothing fits
  and the caller sends that tensor as a frame instead.
"""

from ._arena import ALIGNMENT, Arena
from ._client_side import ClientChannel, take_all
from ._cuda import CudaIpcRefused
from ._doorbell import Doorbell
from ._errors import ChannelError, SegmentRefused, ShmFullError
from ._host import host_token, pid_alive
from ._pipe import (
    DEFAULT_SPIN_US,
    MessagePipe,
    pack_message,
    small_message,
    spin_seconds,
    unpack_message,
)
from ._regions import SHM_ALIAS, SHM_COPY, SHM_ZERO_COPY, copy_into
from ._segment import DEFAULT_DIRECTORY, DEFAULT_PREFIX, Segment, sweep_stale
from ._server_side import ReplyBlocks, ServerChannel
from ._spin import Spin

__all__ = [
    "ALIGNMENT",
    "DEFAULT_DIRECTORY",
    "DEFAULT_PREFIX",
    "DEFAULT_SPIN_US",
    "Arena",
    "ChannelError",
    "ClientChannel",
    "CudaIpcRefused",
    "Doorbell",
    "MessagePipe",
    "ReplyBlocks",
    "SHM_ALIAS",
    "SHM_COPY",
    "SHM_ZERO_COPY",
    "Segment",
    "SegmentRefused",
    "ServerChannel",
    "ShmFullError",
    "Spin",
    "copy_into",
    "host_token",
    "pack_message",
    "pid_alive",
    "small_message",
    "spin_seconds",
    "sweep_stale",
    "take_all",
    "unpack_message",
]
