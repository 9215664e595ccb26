"""Shared fixtures: real servers (thread or child process), always stopped; no /dev/shm leftovers."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

SHM_DIR = Path("/dev/shm")
TRANSPORTS = ["ipc", "tcp"]


def _tensorwire_segments() -> set[str]:
    if not SHM_DIR.is_dir():
        return set()
    return {p.name for p in SHM_DIR.iterdir() if p.name.startswith("tensorwire")}


@pytest.fixture(autouse=True, scope="session")
def no_shm_leftovers() -> Iterator[None]:
    before = _tensorwire_segments()
    yield
    leaked = _tensorwire_segments() - before
    assert not leaked, f"test run left shared-memory segments behind: {sorted(leaked)}"


def listen_url(transport: str, tmp_path: Path) -> str:
    if transport == "ipc":
        return f"ipc://{tmp_path / 'tw.sock'}"
    return "tcp://127.0.0.1:0"


class ServerProcess:
    """`tensorwire serve` in a child process; knows its bound URLs."""

    def __init__(self, listen: list[str], *extra: str) -> None:
        cmd = [sys.executable, "-m", "tensorwire", "serve"]
        for url in listen:
            cmd += ["--listen", url]
        self.proc = subprocess.Popen(
            [*cmd, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
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


@pytest.fixture(params=TRANSPORTS)
def server_proc(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerProcess]:
    """A real server process on each transport (ipc and tcp), numpy backend."""
    server = ServerProcess([listen_url(request.param, tmp_path)], "--backend", "numpy")
    try:
        yield server
    finally:
        server.stop()
