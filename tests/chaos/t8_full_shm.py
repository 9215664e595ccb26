"""T8: a full shared-memory filesystem (a 4 MiB tmpfs in a private mount namespace).

Extends tests/test_shm_integration.py::test_full_shm_gives_clear_error (arena creation
on a full tmpfs): here the tmpfs fills up *after* a client has its arenas. Claims: that
client keeps working (arenas are fallocated, so no SIGBUS), a new auto client falls
back to zmq and says why, require="shm" is a clear TransportError, the server survives,
and once space is free a new client gets shared memory again.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._common import HERE, child_env, scaled


def can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None:
        return False
    with tempfile.TemporaryDirectory() as where:
        probe = ["unshare", "-rm", "sh", "-c", 'mount -t tmpfs -o size=64k tmpfs "$0"', where]
        try:
            return subprocess.run(probe, capture_output=True, timeout=10).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False


def run(scale: float = 1.0, log: Callable[[str], None] = print) -> dict[str, Any]:
    calls = scaled(500, scale, 20)
    if not can_mount_tmpfs():
        out = {"skipped": "cannot mount a small tmpfs here (unshare -rm)", "problems": []}
        log(f"T8 {out}")
        return out
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="twchaos-t8-") as tmp:
        target = Path(tmp) / "tiny"
        target.mkdir()
        cmd = ["unshare", "-rm", "sh", "-c", 'mount -t tmpfs -o size=4m tmpfs "$0" && exec "$@"',
               str(target), sys.executable, str(HERE / "_full_shm_child.py"), str(target),
               str(Path(tmp) / "tw.sock"), str(calls)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=child_env())
    if done.returncode != 0:
        out: dict[str, Any] = {"problems": [f"child failed: {done.stderr[-2000:]}"]}
        log(f"T8 {out}")
        return out
    out = json.loads(done.stdout.strip().splitlines()[-1])
    if out.get("early_ok") != f"{calls}/{calls}":
        problems.append(f"the client with arenas failed on a full tmpfs: {out.get('early_ok')}")
    if out.get("early_paths") != ["shm", "shm"]:
        problems.append(f"it did not use its arenas: {out.get('early_paths')}")
    late = out.get("late", ["", ""])
    if late[0] != "zmq" or "full" not in late[1] or not out.get("late_ok"):
        problems.append(f"a new client did not fall back clearly: {late}")
    if not str(out.get("required", "")).startswith("TransportError") or \
            "full" not in str(out.get("required")):
        problems.append(f"require='shm' gave: {out.get('required')}")
    if not out.get("after_free_ok"):
        problems.append("no shared memory again after space was freed")
    if not out.get("server_alive") or out.get("server_rc") != 0 or out.get("traceback"):
        problems.append(f"server: alive={out.get('server_alive')} rc={out.get('server_rc')} "
                        f"traceback={out.get('traceback')}")
    if out.get("left"):
        problems.append(f"left on the tmpfs: {out['left']}")
    out["calls_on_full_tmpfs"] = calls
    out["problems"] = problems
    log(f"T8 {out}")
    return out
