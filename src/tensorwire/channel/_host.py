"""Whether two processes can share memory: same boot, same /dev/shm, same pid namespace."""

from __future__ import annotations

import functools
import hashlib
import os
import socket


@functools.cache
def host_token(directory: str = "/dev/shm") -> str:
    """An opaque token equal for processes that can share segments in `directory`.

    Includes the pid namespace because the server reclaims a session when its
    client's pid dies, which only means something inside one namespace.
    """
    parts = [socket.gethostname()]
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            parts.append(f.read().strip())
        st = os.stat(directory)
        parts += [str(st.st_dev), str(st.st_ino), str(os.stat("/proc/self/ns/pid").st_ino)]
    except OSError:
        return ""  # cannot tell: never negotiate shared memory
    return hashlib.blake2b("|".join(parts).encode(), digest_size=16).hexdigest()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
