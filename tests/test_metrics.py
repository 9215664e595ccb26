"""Server metrics: Prometheus text (parsed back by prometheus_client), a real scrape of
`tensorwire serve --metrics-port 0`, the `stats` request and `tensorwire top --once`."""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

import tensorwire as tw
from conftest import ServerProcess, listen_url
from tensorwire.server import make_backend
from tensorwire.server._exposition import quantile, render, server_state, short_id
from tensorwire.server._metrics import BUCKETS, Metrics, Observation
from tensorwire.server._sessions import Sessions
from tensorwire.trace import SERVER_STAGES

pytestmark = pytest.mark.timeout(60)

NASTY = 'we"ird\\op\nname'  # a quote, a backslash and a newline: all must be escaped


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition, parsed by the reference parser."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


@pytest.fixture
def sessions() -> Iterator[Sessions]:
    s = Sessions(make_backend("numpy", "cpu"), enabled=False)
    yield s
    s.close_all()


def _observe(
    metrics: Metrics,
    client: str,
    op: str = "add",
    *,
    error: str = "",
    stages: tuple[float, ...] = (2e-5, 5e-5, 2e-3, 20.0),
) -> None:
    metrics.observe(Observation("call", op, client, not error, error, list(stages), 100, 40))


def test_exposition_parses_back_with_cumulative_buckets(sessions):
    sid = sessions.hello({"pid": 0, "shm": 0})["session"]
    sessions.live()[0].store.add(np.ones(10))  # 80 resident bytes
    metrics = Metrics()
    for _ in range(3):
        _observe(metrics, sid)
    _observe(metrics, sid, NASTY, error='Bad"Type')
    _observe(metrics, "-", stages=(1e-6, 0.5, 0.5, 0.5))
    text = render(server_state(metrics, sessions, {"version": "9", "backend": "numpy"}))
    samples = _samples(text)

    assert _value(samples, "tensorwire_requests_total", kind="call", op="add") == 4
    assert _value(samples, "tensorwire_requests_total", kind="call", op=NASTY) == 1
    assert _value(samples, "tensorwire_errors_total", type='Bad"Type') == 1
    assert _value(samples, "tensorwire_bytes_total", direction="in") == 500
    assert _value(samples, "tensorwire_bytes_total", direction="out") == 200
    assert _value(samples, "tensorwire_client_requests_total", client=short_id(sid)) == 4
    assert _value(samples, "tensorwire_client_requests_total", client="-") == 1
    assert _value(samples, "tensorwire_resident_bytes", client=short_id(sid)) == 80
    assert _value(samples, "tensorwire_resident_tensors", client=short_id(sid)) == 1
    assert _value(samples, "tensorwire_sessions") == 1
    assert _value(samples, "tensorwire_launched_behind_total") == 0  # served one at a time
    assert _value(samples, "tensorwire_uptime_seconds") >= 0
    assert _value(samples, "tensorwire_info", version="9", backend="numpy", device="") == 1
    assert sid not in text and sid[:16] not in text

    for stage in SERVER_STAGES:
        les = [*(repr(b) for b in BUCKETS), "+Inf"]
        buckets = [
            _value(samples, "tensorwire_stage_seconds_bucket", stage=stage, le=le) for le in les
        ]
        assert buckets == sorted(buckets), f"{stage}: buckets are not cumulative"
        assert buckets[-1] == _value(samples, "tensorwire_stage_seconds_count", stage=stage) == 5
    compute = {
        le: _value(samples, "tensorwire_stage_seconds_bucket", stage="compute", le=le)
        for le in ("0.001", "0.003", "0.3", "1.0")
    }
    assert compute == {"0.001": 0, "0.003": 4, "0.3": 4, "1.0": 5}
    below_10s = _value(
        samples, "tensorwire_stage_seconds_bucket", stage="server_serialize", le="10.0"
    )
    assert below_10s == 1  # the four 20 s samples sit only in +Inf
    assert _value(samples, "tensorwire_stage_seconds_sum", stage="compute") == pytest.approx(
        4 * 2e-3 + 0.5
    )


def test_label_values_and_help_are_escaped():
    metrics = Metrics()
    _observe(metrics, "-", NASTY)
    text = render(server_state(metrics, Sessions(make_backend("numpy", "cpu"), enabled=False)))
    assert 'op="we\\"ird\\\\op\\nname"' in text
    assert all(
        line.startswith(("# HELP ", "# TYPE ", "tensorwire_")) for line in text.splitlines()
    ), "a raw newline split a line"
    assert text.endswith("\n")


def test_quantile_interpolates_inside_its_bucket():
    counts = [0] * (len(BUCKETS) + 1)
    assert quantile(counts, 0.5) is None
    counts[3] = 4  # four samples in (1e-4, 3e-4]
    assert quantile(counts, 0.5) == pytest.approx(2e-4)
    assert quantile(counts, 1.0) == pytest.approx(3e-4)
    counts[-1] = 96  # most samples beyond the last bound: the last finite bound
    assert quantile(counts, 0.99) == BUCKETS[-1]


def test_short_id_is_stable_and_reveals_no_part_of_the_session_id():
    sid = "0123456789abcdef" * 2
    assert short_id(sid) == short_id(sid) and len(short_id(sid)) == 8
    assert short_id(sid) not in sid and short_id("-") == "-"


def test_state_can_be_read_while_the_core_thread_changes_it(sessions):
    """A scrape runs on another thread while the core adds keys and sessions."""
    metrics, stop, failures = Metrics(), threading.Event(), []

    def scrape() -> None:
        while not stop.is_set():
            try:
                server_state(metrics, sessions)
            except Exception as exc:  # noqa: BLE001 - reported below
                failures.append(exc)
                return

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    reader = threading.Thread(target=scrape)
    reader.start()
    until = time.monotonic() + 0.5
    try:
        for i in itertools.count():
            if time.monotonic() > until or failures:
                break
            _observe(metrics, f"client{i}", f"op{i}", error=f"E{i % 50}")
            if i % 50 == 0:
                sessions.hello({"pid": 0, "shm": 0})
    finally:
        stop.set()
        reader.join(10)
        sys.setswitchinterval(old)
    assert not failures, failures


def test_top_rates_and_latencies_come_from_successive_snapshots(sessions):
    from tensorwire.cli._top import plain, view

    metrics = Metrics()
    _observe(metrics, "-", stages=(0.5, 0.5, 0.5, 0.5))  # slow, and before the interval
    first = server_state(metrics, sessions)
    for _ in range(10):
        _observe(metrics, "-")  # compute 2 ms each
    second = server_state(metrics, sessions)
    second["uptime"] = first["uptime"] + 2.0
    text = plain(view(second, first))
    assert "5.0 req/s |" in text
    compute = next(line for line in text.splitlines() if line.startswith("compute"))
    assert compute.split()[1:] == ["10", "2.00", "ms", "2.98", "ms", "2.00", "ms"]
    assert "(average)" in plain(view(second, None))
    assert "launched behind" not in text  # a server that serves one request at a time
    metrics.launched_behind = 7
    assert "| 7 launched behind others" in plain(view(server_state(metrics, sessions), second))


# -- a real server -----------------------------------------------------------------------


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[ServerProcess, str]]:
    """`tensorwire serve --metrics-port 0` and its metrics URL."""
    server = ServerProcess(
        [listen_url("ipc", tmp_path)], "--backend", "numpy", "--metrics-port", "0"
    )
    try:
        line = server.proc.stdout.readline()
        assert line.startswith("tensorwire: metrics on http://127.0.0.1:"), line
        yield server, line.split("metrics on ", 1)[1].strip()
    finally:
        assert server.stop() == 0


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return response.read().decode()


def test_scrape_of_a_real_server_counts_what_was_sent(served):
    server, url = served
    with tw.Client(server.url, transport="zmq") as client:
        for _ in range(7):
            client.call("add", np.ones(1000), np.ones(1000))
        kept = client.put(np.ones((64, 64), np.float32))
        with pytest.raises(tw.TensorwireError):
            client.call("no_such_op", 1)
        samples = _samples(text := _scrape(url))
        mine = short_id(client._session)
        assert client._session not in text

        assert _value(samples, "tensorwire_requests_total", kind="call", op="add") == 7
        assert _value(samples, "tensorwire_requests_total", kind="put", op="") == 1
        assert sum(v for (n, _), v in samples.items() if n == "tensorwire_errors_total") == 1
        assert _value(samples, "tensorwire_client_requests_total", client=mine) == 9
        assert _value(samples, "tensorwire_resident_bytes", client=mine) == 64 * 64 * 4
        assert _value(samples, "tensorwire_sessions") == 1
        assert _value(samples, "tensorwire_bytes_total", direction="in") > 7 * 2 * 8000
        for stage in SERVER_STAGES:
            assert _value(samples, "tensorwire_stage_seconds_count", stage=stage) >= 9
        assert _value(samples, "tensorwire_stage_seconds_sum", stage="compute") > 0
        del kept
    with pytest.raises(urllib.error.HTTPError, match="404") as missing:
        urllib.request.urlopen(url.replace("/metrics", "/secrets"), timeout=10)
    missing.value.close()


def test_stats_request_names_clients_by_short_id(served):
    server, _ = served
    with tw.Client(server.url, transport="zmq") as client:
        client.call("identity", 1)
        stats = client._request("stats", "", (), {})
        assert stats["you"] == short_id(client._session)
    (row,) = stats["sessions"]
    assert row["client"] == stats["you"] and row["pid"] == os.getpid() and row["requests"] == 1
    assert stats["requests"]["call:identity"] == 1
    assert stats["stages"]["compute"]["p50"] is not None


def test_top_once_shows_the_clients(served):
    server, _ = served
    with tw.Client(server.url, transport="zmq") as client:
        client.call("add", np.ones(10), np.ones(10))
        out = subprocess.run(
            [sys.executable, "-m", "tensorwire", "top", server.url, "--once"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stderr
        assert short_id(client._session) in out.stdout
        assert "(this top)" in out.stdout
        for word in ("req/s", "resident", "compute", "p99"):
            assert word in out.stdout
        assert client._session not in out.stdout


def test_top_names_an_unreachable_server(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "tensorwire",
            "top",
            f"ipc://{tmp_path}/none.sock",
            "--once",
            "--timeout",
            "0.5",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2 and "cannot reach" in out.stderr


def test_serve_refuses_a_metrics_port_in_use(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "tensorwire",
                "serve",
                "--listen",
                listen_url("ipc", tmp_path),
                "--backend",
                "numpy",
                "--metrics-port",
                str(port),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert out.returncode == 2
    assert f"metrics on 127.0.0.1:{port}" in out.stderr
