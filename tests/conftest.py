"""Shared fixtures: real servers (thread or child process), always stopped; no /dev/shm leftovers.

The leak check counts segments and pipe directories created by this run's processes.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

SHM_DIR = Path("/dev/shm")
SRC = Path(__file__).resolve().parents[1] / "src"


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a child interpreter: this checkout's src first on PYTHONPATH,
    ahead of (not instead of) what is there, where packages may have been put by hand."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": str(SRC) + (os.pathsep + path if path else ""),
            "PYTHONUNBUFFERED": "1", **extra}


# ucx:// is tested only where the optional ucxx imports, on one machine: over UCX's tcp and
# shared-memory transports (set before any process of this run loads UCX).
HAVE_UCX = importlib.util.find_spec("ucxx") is not None
if HAVE_UCX:
    os.environ.setdefault("UCX_TLS", "tcp,sm,self")
    os.environ.setdefault("UCX_WARN_UNUSED_ENV_VARS", "n")


# Processes this test run started; only their segments (and ours) count as our leaks,
# so other runs on the same machine cannot make the check flaky.
def run_in_threads(fn: Callable[[int], None], n: int, timeout: float = 60.0
                   ) -> list[BaseException]:
    """Run fn(0), ..., fn(n - 1) in n threads at once; what they raised ([]: nothing)."""
    errors: list[BaseException] = []

    def guarded(i: int) -> None:
        try:
            fn(i)
        except BaseException as exc:  # handed to the test, which shows it
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), f"a thread still ran after {timeout} s"
    return errors


OUR_PIDS: set[int] = {os.getpid()}


def _our_segments() -> set[str]:
    if not SHM_DIR.is_dir():
        return set()
    ours = set()
    for p in SHM_DIR.iterdir():
        # tensorwire-<pid>-<token> (segments), tensorwire-pipe-<pid>-<token> (pipe dirs)
        parts = p.name.removeprefix("tensorwire-").removeprefix("pipe-").split("-")
        if p.name.startswith("tensorwire-") and parts[0].isdigit() and int(parts[0]) in OUR_PIDS:
            ours.add(p.name)
    return ours


@pytest.fixture(autouse=True, scope="session")
def no_shm_leftovers() -> Iterator[None]:
    before = _our_segments()
    yield
    leaked = _our_segments() - before
    assert not leaked, f"test run left shared-memory segments behind: {sorted(leaked)}"


def listen_url(transport: str, tmp_path: Path) -> str:
    if transport == "ipc":
        return f"ipc://{tmp_path / 'tw.sock'}"
    if transport == "ucx":
        return "ucx://127.0.0.1:0"
    return "tcp://127.0.0.1:0"


class ServerProcess:
    """`tensorwire serve` in a child process; knows its bound URLs."""

    def __init__(self, listen: list[str], *extra: str) -> None:
        cmd = [sys.executable, "-m", "tensorwire", "serve"]
        for url in listen:
            cmd += ["--listen", url]
        unauthenticated = any(u.startswith("ucx://") for u in listen)
        if any(u.startswith("tcp://") for u in listen) and "--auth-dir" not in extra:
            unauthenticated = True  # loopback only; the auth tests pass --auth-dir
        if unauthenticated and "--insecure" not in extra:
            cmd.append("--insecure")
        self.proc = subprocess.Popen(
            [*cmd, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        OUR_PIDS.add(self.proc.pid)
        self.urls: list[str] = []
        assert self.proc.stdout is not None
        for _ in listen:
            line = self.proc.stdout.readline()
            if not line.startswith("tensorwire: listening on "):
                self.stop()
                raise RuntimeError(f"server did not start: {line!r} {self.proc.stderr.read()!r}")
            self.urls.append(line.split("listening on ", 1)[1].strip())

    @property
    def url(self) -> str:
        return self.urls[0]

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        return self.proc.returncode


# Every way bytes can travel: (listen transport, client transport).
PATHS = {"ipc": ("ipc", "zmq"), "tcp": ("tcp", "zmq"), "shm": ("ipc", "auto")}
if HAVE_UCX:
    PATHS["ucx"] = ("ucx", "auto")


class Connection:
    """A server process and how to reach it over one path."""

    def __init__(self, server: ServerProcess, transport: str, path: str) -> None:
        self.server, self.url, self.transport, self.path = server, server.url, transport, path

    def client(self, **kwargs: object):  # noqa: ANN201 - tensorwire.Client
        import tensorwire as tw

        kwargs.setdefault("transport", self.transport)
        if self.path == "shm":
            kwargs.setdefault("require", "shm")
        return tw.Client(self.url, **kwargs)


@pytest.fixture(params=list(PATHS))
def conn(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Connection]:
    """A real server process (numpy backend), reached over ipc, tcp and shared memory."""
    listen, transport = PATHS[request.param]
    server = ServerProcess([listen_url(listen, tmp_path)], "--backend", "numpy")
    try:
        yield Connection(server, transport, request.param)
    finally:
        server.stop()
