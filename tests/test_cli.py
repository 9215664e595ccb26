"""The `tensorwire` command: serve's listening line and signals, refusals, --version, bench."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import tensorwire as tw
from conftest import ServerProcess, listen_url

CMD = [sys.executable, "-m", "tensorwire"]


def _run(*args: str, timeout: float = 50) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CMD, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def test_version():
    out = _run("--version")
    assert out.returncode == 0
    assert out.stdout.strip() == f"tensorwire {tw.__version__}"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("transport", ["ipc", "tcp"])
def test_serve_prints_listening_line_and_exits_0_on_signal(transport, sig, tmp_path):
    server = ServerProcess([listen_url(transport, tmp_path)], "--backend", "numpy")
    try:
        url = server.url
        if transport == "tcp":
            port = int(url.rsplit(":", 1)[1])
            assert url.startswith("tcp://127.0.0.1:") and port > 0  # the real port, not 0
        else:
            assert url == listen_url("ipc", tmp_path)
        with tw.Client(url, transport="zmq") as client:  # it really serves
            assert client.call("identity", 3) == 3
        server.proc.send_signal(sig)
        assert server.proc.wait(20) == 0
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--listen", "foo://x"], "unknown transport scheme 'foo'"),
        (["--listen", "tcp://127.0.0.1:0", "--backend", "bogus"], "invalid choice: 'bogus'"),
        (["--listen", "tcp://127.0.0.1:0"], "--insecure"),
        (["--listen", "tcp://127.0.0.1:0", "--auth-dir", "/nonexistent"], "no server keypair"),
        (["--listen", "ipc:///tmp/tw-spin.sock", "--spin-us", "-1"], "spin_us must be between"),
    ],
    ids=["bad-url", "bad-backend", "tcp-without-keys", "missing-keys", "bad-spin"],
)
def test_serve_refuses_bad_arguments_with_exit_2(args, needle):
    out = _run("serve", *args)
    assert out.returncode == 2
    assert needle in out.stderr
    assert "Traceback" not in out.stderr


def test_bench_quick_run_writes_json(tmp_path):
    path = tmp_path / "bench.json"
    out = _run(
        "bench",
        "--size",
        "1KB,64KB",
        "--count",
        "5",
        "--transport",
        "ipc",
        "--backend",
        "numpy",
        "--json",
        str(path),
    )
    assert out.returncode == 0, out.stderr
    assert "median µs" in out.stdout
    data = json.loads(path.read_text())
    assert data["transport"] == "ipc" and data["op"] == "identity"
    assert [r["nbytes"] for r in data["rows"]] == [1024, 64 << 10]
    for row in data["rows"]:
        assert row["count"] == 5
        assert 0 < row["p10_us"] <= row["median_us"] <= row["p90_us"]
        assert row["mb_per_s"] > 0
        assert row["paths"]["request"] == ["frame"]


def test_bench_refuses_bad_size():
    out = _run("bench", "--size", "12XB")
    assert out.returncode == 2
    assert "size '12XB'" in out.stderr


def _environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


@pytest.mark.parametrize("opt_out", [False, True], ids=["default", "opted-out"])
def test_serve_restarts_itself_with_huge_pages_where_glibc_can(opt_out, tmp_path, monkeypatch):
    from tensorwire.cli import _huge_pages

    if opt_out:
        monkeypatch.setenv(_huge_pages.OPT_OUT, "0")
    wanted = _huge_pages.wanted({k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"})
    if opt_out:
        assert not wanted
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    server = ServerProcess([listen_url("ipc", tmp_path)], "--backend", "numpy")
    try:
        with tw.Client(server.url, transport="zmq") as client:  # the restarted process serves
            assert client.call("identity", 3) == 3
        tunables = _environ_of(server.proc.pid).get("GLIBC_TUNABLES", "")  # the same pid
        assert ("glibc.malloc.hugetlb=1" in tunables) == wanted
    finally:
        server.stop()


def test_huge_pages_are_wanted_only_where_they_apply(monkeypatch):
    from tensorwire.cli import _huge_pages

    monkeypatch.setattr(_huge_pages.platform, "libc_ver", lambda: ("glibc", "2.36"))
    monkeypatch.setattr(_huge_pages.sys, "platform", "linux")
    setting = "always [madvise] never"
    monkeypatch.setattr(_huge_pages, "THP_SETTING", _Text(setting))
    assert _huge_pages.wanted({})
    assert not _huge_pages.wanted({"TENSORWIRE_HUGE_PAGES": "0"})
    assert not _huge_pages.wanted({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"})  # the user's
    monkeypatch.setattr(_huge_pages, "THP_SETTING", _Text("always madvise [never]"))
    assert not _huge_pages.wanted({})
    monkeypatch.setattr(_huge_pages, "THP_SETTING", _Text(setting))
    monkeypatch.setattr(_huge_pages.platform, "libc_ver", lambda: ("glibc", "2.31"))
    assert not _huge_pages.wanted({})  # the tunable came with glibc 2.35
    monkeypatch.setattr(_huge_pages.platform, "libc_ver", lambda: ("", ""))  # musl
    assert not _huge_pages.wanted({})
    monkeypatch.setattr(_huge_pages.platform, "libc_ver", lambda: ("glibc", "2.36"))
    monkeypatch.setattr(_huge_pages.sys, "platform", "darwin")
    assert not _huge_pages.wanted({})


class _Text:
    def __init__(self, text: str) -> None:
        self.text = text

    def read_text(self) -> str:
        return self.text
