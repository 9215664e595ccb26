"""Local child processes for measurements — a `tensorwire serve` and the seed-style server —
each started on fresh ipc paths or tcp port 0 and always stopped."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

from ._seed_server import READY as SEED_READY

TW_READY = "tensorwire: listening on "


@contextmanager
def local_server(listens: list[str], *extra: str) -> Iterator[dict[str, str]]:
    """Yield {scheme: url} for a fresh `tensorwire serve` listening on each scheme (ipc, tcp)."""
    with tempfile.TemporaryDirectory(prefix="tensorwire-diag-") as tmpdir:
        cmd = [sys.executable, "-m", "tensorwire", "serve", *extra]
        for scheme in listens:
            cmd += ["--listen", url_for(scheme, tmpdir, "tw")]
        if "tcp" in listens:
            cmd.append("--insecure")  # a private loopback server for this measurement
        with _child(cmd, TW_READY, len(listens)) as urls:
            yield dict(zip(listens, urls, strict=True))


@contextmanager
def seed_server(backend: str = "auto", device: str = "auto") -> Iterator[str]:
    """Yield the ipc URL of a fresh seed-style msgpack server (the baseline)."""
    with tempfile.TemporaryDirectory(prefix="tensorwire-seed-") as tmpdir:
        cmd = [
            sys.executable,
            "-m",
            "tensorwire.diagnose._seed_server",
            "--listen",
            url_for("ipc", tmpdir, "seed"),
            "--backend",
            backend,
            "--device",
            device,
        ]
        with _child(cmd, SEED_READY, 1) as urls:
            yield urls[0]


def url_for(scheme: str, tmpdir: str, name: str) -> str:
    if scheme == "ipc":
        return f"ipc://{os.path.join(tmpdir, name + '.sock')}"
    if scheme == "tcp":
        return "tcp://127.0.0.1:0"
    raise ValueError(f"unknown transport {scheme!r}; known: ipc, tcp")


@contextmanager
def _child(cmd: list[str], ready: str, lines: int) -> Iterator[list[str]]:
    """Run cmd; yield the URLs from its first `lines` ready lines; stop it on the way out."""
    with tempfile.TemporaryFile("w+") as errors:  # a file: a chatty child never blocks on it
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            yield [_ready_url(proc, ready, errors) for _ in range(lines)]
        finally:
            _stop(proc)


def _ready_url(proc: subprocess.Popen[str], ready: str, errors: IO[str]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith(ready):
        _stop(proc)
        errors.seek(0)
        err = errors.read()
        raise RuntimeError(
            f"{_name(proc)} failed to start (exit {proc.returncode}): {err.strip()[-500:]}"
        )
    return line[len(ready) :].strip()


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def _name(proc: subprocess.Popen[str]) -> str:
    args = proc.args
    return " ".join(map(str, args[1:3])) if isinstance(args, list) else str(args)
