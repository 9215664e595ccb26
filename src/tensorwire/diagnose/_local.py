"""Start a local `tensorwire serve` child process for measurements, and always stop it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def local_server(transports: list[str], *extra: str) -> Iterator[dict[str, str]]:
    """Yield {transport: url} for a fresh server process listening on each transport."""
    tmpdir = tempfile.mkdtemp(prefix="tensorwire-diag-")
    cmd = [sys.executable, "-m", "tensorwire", "serve", *extra]
    for transport in transports:
        cmd += ["--listen", _url_for(transport, tmpdir)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        urls = {}
        assert proc.stdout is not None
        for transport in transports:
            line = proc.stdout.readline()
            if not line.startswith("tensorwire: listening on "):
                raise RuntimeError(f"local server failed to start (exit {proc.poll()})")
            urls[transport] = line.split("listening on ", 1)[1].strip()
        yield urls
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        shutil.rmtree(tmpdir, ignore_errors=True)


def _url_for(transport: str, tmpdir: str) -> str:
    if transport == "ipc":
        return f"ipc://{os.path.join(tmpdir, 'tw.sock')}"
    if transport == "tcp":
        return "tcp://127.0.0.1:0"
    raise ValueError(f"unknown transport {transport!r}; known: ipc, tcp")
