"""Helpers shared by the chaos scenarios: server processes, RSS, shm directories, stats."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SRC = str(HERE.parents[1] / "src")
OPS_SERVER = str(HERE / "_ops_server.py")

# Every process a scenario starts is registered here and killed by `cleanup()`.
STARTED: list[subprocess.Popen[Any]] = []


def child_env(**extra: str) -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    parts = [SRC, str(HERE.parent)] + ([path] if path else [])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(parts), "PYTHONUNBUFFERED": "1",
            **extra}


def spawn(cmd: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
    kwargs.setdefault("env", child_env())
    proc = subprocess.Popen(cmd, **kwargs)
    STARTED.append(proc)
    return proc


def reap(proc: subprocess.Popen[Any], timeout: float = 5.0) -> int:
    """Stop one process we started (SIGTERM, then SIGKILL) and wait for it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
    return proc.returncode


def kill(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL one process we started and wait for it (no zombie left to look alive)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def cleanup() -> None:
    while STARTED:
        reap(STARTED.pop(), timeout=3.0)


SERVER_FLAGS: list[str] = []  # `python -m chaos --server-flags`: added to every server


class Server:
    """The chaos ops server (tensorwire serve + custom ops) in a child process."""

    def __init__(self, listen: str, *flags: str, rlimit_as_extra: int | None = None,
                 wrapper: list[str] | None = None, log_dir: str | None = None) -> None:
        cmd = [*(wrapper or []), sys.executable, OPS_SERVER, "serve", "--listen", listen,
               "--backend", "numpy", *flags, *SERVER_FLAGS]
        if listen.startswith("tcp://") and "--auth-dir" not in flags and "--insecure" not in flags:
            cmd.append("--insecure")
        env = child_env(**({"CHAOS_RLIMIT_AS_EXTRA": str(rlimit_as_extra)}
                           if rlimit_as_extra else {}))
        # stderr to a file: a server that logs a lot must never block on a full pipe.
        self.log = tempfile.NamedTemporaryFile("w+", prefix="chaos-server-", suffix=".log",
                                               dir=log_dir, delete=False)
        self.proc = spawn(cmd, stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("tensorwire: listening on "):
            self.stop()
            raise RuntimeError(f"server did not start: {line!r} {self.stderr()[-2000:]!r}")
        self.url = line.split("listening on ", 1)[1].strip()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def stderr(self) -> str:
        try:
            return Path(self.log.name).read_text(errors="replace")
        except OSError:
            return ""

    def kill(self) -> None:
        kill(self.proc)

    def stop(self) -> int:
        code = reap(self.proc, timeout=10.0)
        with contextlib.suppress(ValueError):
            STARTED.remove(self.proc)
        self.log.close()
        return code

    def discard_log(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.log.name)


def rss_bytes(pid: int) -> int:
    """VmRSS of a process, in bytes (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@contextlib.contextmanager
def private_shm_dir() -> Iterator[Path]:
    """A fresh directory on /dev/shm for one scenario's segments (removed afterwards)."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    directory = Path(tempfile.mkdtemp(prefix="twchaos-", dir=base))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def entries(directory: Path) -> list[str]:
    try:
        return sorted(os.listdir(directory))
    except FileNotFoundError:
        return []


def global_segments(pids: set[int]) -> list[str]:
    """Segments in /dev/shm itself created by one of `pids` (should be none)."""
    found = []
    for name in entries(Path("/dev/shm")):
        parts = name.split("-")
        if name.startswith("tensorwire-") and len(parts) >= 3:
            pid = parts[2] if parts[1] == "pipe" else parts[1]
            if pid.isdigit() and int(pid) in pids:
                found.append(name)
    return found


def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, int(round(q / 100 * (len(ordered) - 1)))))
    return ordered[k]


def scaled(full: int, scale: float, minimum: int) -> int:
    return max(minimum, int(round(full * scale)))


def mb(nbytes: float) -> float:
    return round(nbytes / 1e6, 1)


def ms(seconds: float) -> float:
    return round(seconds * 1e3, 3)
