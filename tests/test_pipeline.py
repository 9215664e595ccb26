"""A pipelined server (`pipeline_depth` > 1) keeps every guarantee of the serial one.

On the CPU nothing overlaps (a kernel has finished when its launch returns), so these
tests check the bookkeeping a pipelined server adds: replies made after later requests
were launched, each reply's own arena blocks, exactly-once retries (and
tests/test_client_server.py's resend test, pipelined too), and sessions that end while
requests run. The overlap itself, on CUDA streams, is checked in tests/test_gpu.py.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tensorwire as tw
from conftest import ServerProcess, child_env, run_in_threads
from tensorwire.codec import encode
from tensorwire.server._core import _Incoming, _Running
from tensorwire.server._metrics import Observation
from tensorwire.server.ops import make_backend
from tensorwire.server.ops._backend import NO_FENCE

DEPTH = 4
BIG = 300_000  # float32 elements: results go through the arena's blocks, not frames
BACKENDS = ["numpy", pytest.param("torch", marks=pytest.mark.skipif(
    importlib.util.find_spec("torch") is None, reason="torch is not installed"))]


def _arena_used(server: tw.Server, gpu: tw.Client) -> int:
    """Bytes of the client's result arena the server holds blocks in."""
    (session,) = [s for s in server._core.sessions.live() if s.sid == gpu._session]
    return session.channel.s2c.used


def _burst(gpu: tw.Client, seed: int, n: int) -> list[tuple[Any, np.ndarray]]:
    """n calls in flight at once, of every size and a few kinds; (future, expected)."""
    rng = np.random.default_rng(seed)
    sent = []
    for i in range(n):
        x = rng.standard_normal(BIG if i % 3 == 0 else 256).astype(np.float32)
        if i % 4 == 0:
            sent.append((gpu.submit("neg", x), -x))
        elif i % 4 == 1:
            sent.append((gpu.submit("add", x, x), x + x))
        elif i % 4 == 2:
            xa = gpu.asarray(x) if x.size == BIG else x  # an argument in the arena
            sent.append((gpu.submit("identity", xa), x.copy()))
        else:
            sent.append((gpu.submit("mul", x, 3.0), x * 3))
    return sent


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("depth", [1, DEPTH])
def test_clients_in_threads_get_every_result(backend: str, depth: int) -> None:
    """Serial and pipelined alike: every result right, and each reply's unused or dropped
    blocks back in the arena once the clients let go of them."""
    with tw.Server(backend=backend, device="cpu", pipeline_depth=depth) as server:
        core, launched_behind = server._core, []  # how many ran when each one launched
        launch = core._launch
        core._launch = lambda item: (launched_behind.append(len(core._running)),
                                     launch(item))[1]

        def work(seed: int) -> None:
            with tw.Client(server.url, require="shm", shm_size=32 << 20) as gpu:
                for rnd in range(3):
                    sent = _burst(gpu, seed * 10 + rnd, 24)
                    for future, want in sent:
                        np.testing.assert_array_equal(future.result(timeout=30), want)
                    del sent, future
                gpu.identity(np.ones(2))  # carries the last releases
                assert _arena_used(server, gpu) == 0

        assert run_in_threads(work, 3, timeout=120) == []
        assert not core._running  # every launched request was answered
        assert max(launched_behind) == depth - 1  # serial: none; pipelined: up to the depth
        behind = sum(n > 0 for n in launched_behind)
        assert core.metrics.launched_behind == behind and (behind > 0) == (depth > 1)
        with tw.Client(server.url) as gpu:  # what `tensorwire top` and a scrape see
            assert gpu._request("stats", "", (), {})["launched_behind"] == behind


@pytest.mark.parametrize("transport", ["tcp", "ipc"])
def test_zmq_clients_of_a_pipelined_server_process(transport: str, tmp_path: Path) -> None:
    """Over ZeroMQ sockets (tcp, and ipc without shared memory): replies leave through the
    socket of the connection each request came on, whatever was launched in between."""
    url = "tcp://127.0.0.1:0" if transport == "tcp" else f"ipc://{tmp_path}/tw.sock"
    server = ServerProcess([url], "--backend", "numpy", "--pipeline-depth", str(DEPTH))
    try:
        def work(seed: int) -> None:
            with tw.Client(server.url, transport="zmq") as gpu:
                for rnd in range(2):
                    sent = _burst(gpu, seed * 10 + rnd, 16)
                    for future, want in sent:
                        np.testing.assert_array_equal(future.result(timeout=30), want)

        assert run_in_threads(work, 3, timeout=120) == []
    finally:
        assert server.stop() == 0


def test_a_failing_call_fails_only_its_own_future() -> None:
    with tw.Server(backend="numpy", pipeline_depth=DEPTH) as server, \
            tw.Client(server.url) as gpu:
        x = np.arange(6, dtype=np.float32)
        futures = [gpu.submit("neg", x), gpu.submit("matmul", x, np.ones(5, np.float32)),
                   gpu.submit("no_such_op", x), gpu.submit("add", x, x)]
        np.testing.assert_array_equal(futures[0].result(timeout=10), -x)
        with pytest.raises(tw.RemoteError):
            futures[1].result(timeout=10)
        with pytest.raises(tw.TensorwireError, match="no_such_op"):
            futures[2].result(timeout=10)
        np.testing.assert_array_equal(futures[3].result(timeout=10), x + x)


def test_resident_tensors_and_graphs_between_pipelined_calls() -> None:
    """put/fetch/free wait for the running calls; graphs and calls on handles run in order."""
    x = np.arange(1000, dtype=np.float32)
    with tw.Server(backend="numpy", pipeline_depth=DEPTH) as server, \
            tw.Client(server.url) as gpu:
        with gpu.graph() as g:
            out = g.relu(g.neg(g.input("x")))
        for i in range(20):
            calls = [gpu.submit("add", x, float(k)) for k in range(6)]
            handle = gpu.put(x + i)
            np.testing.assert_array_equal(gpu.call("neg", handle), -(x + i))
            np.testing.assert_array_equal(g.run(out, x=-x), np.maximum(x, 0))
            np.testing.assert_array_equal(gpu.fetch(handle), x + i)
            gpu.free(handle)
            for k, future in enumerate(calls):
                np.testing.assert_array_equal(future.result(timeout=10), x + k)


def _incoming(meta: dict[str, Any]) -> _Incoming:
    return _Incoming(None, None, encode(meta), 0.0)


def test_what_may_launch_while_others_run() -> None:
    """Only op calls and graphs, never a request already running (a resend), nor one that
    releases CUDA memory the running ones may still read."""
    with tw.Server(backend="numpy", pipeline_depth=DEPTH) as server:
        core = server._core
        running = _Running(_incoming({"k": "call", "id": 7, "s": "abc"}),
                           Observation("?", "", "-", True, "", [0.0] * 4, 0, 0), 0.0,
                           rid=7, sid="abc")
        core._running.append(running)
        try:
            assert core._overlappable(_incoming({"k": "call", "id": 8, "s": "abc"}))
            assert core._overlappable(_incoming({"k": "graph", "id": 8, "s": "abc"}))
            assert core._overlappable(_incoming({"k": "call", "id": 7, "s": "other"}))
            assert not core._overlappable(_incoming({"k": "call", "id": 7, "s": "abc"}))
            for kind in ("put", "fetch", "free", "has", "hello", "bye", "ops", "stats"):
                assert not core._overlappable(_incoming({"k": kind, "id": 9, "s": "abc"}))
            for key in ("fi", "xa"):
                assert not core._overlappable(_incoming({"k": "call", "id": 9, key: [1]}))
            assert not core._overlappable(_Incoming(None, None, [b"\x00garbage"], 0.0))
        finally:
            core._running.clear()


@pytest.mark.parametrize("depth", [0, 65, 2.0, True, "4"])
def test_bad_depths_are_refused(depth: Any) -> None:
    with pytest.raises(ValueError, match="pipeline_depth"):
        tw.Server(backend="numpy", pipeline_depth=depth)


def test_cli_refuses_a_bad_depth(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tensorwire", "serve", "--listen", f"ipc://{tmp_path}/s",
         "--pipeline-depth", "0"],
        capture_output=True, text=True, timeout=60, env=child_env())
    assert proc.returncode == 2 and "pipeline_depth must be" in proc.stderr


KILLED_CLIENT = """
import os, sys
import numpy as np
import tensorwire as tw
gpu = tw.Client(sys.argv[1], require="shm")
x = np.ones(300_000, np.float32)
futures = [gpu.submit("neg", x) for _ in range(64)]
futures[0].result(timeout=30)
os._exit(0)  # with requests still in flight, and without a goodbye
"""


def test_client_gone_mid_burst_leaves_the_server_serving(tmp_path: Path) -> None:
    server = ServerProcess([f"ipc://{tmp_path}/tw.sock"], "--backend", "numpy",
                           "--pipeline-depth", str(DEPTH))
    try:
        for _ in range(3):
            proc = subprocess.run([sys.executable, "-c", KILLED_CLIENT, server.url],
                                  capture_output=True, text=True, timeout=120,
                                  env=child_env())
            assert proc.returncode == 0, proc.stderr
        with tw.Client(server.url, require="shm") as gpu:
            x = np.arange(BIG, dtype=np.float32)
            np.testing.assert_array_equal(gpu.neg(x), -x)
            deadline = time.monotonic() + 20  # the dead clients' sessions are reaped
            while time.monotonic() < deadline:
                stats = gpu._request("stats", "", (), {})
                if len(stats["sessions"]) == 1:
                    break
                time.sleep(0.2)
            assert len(stats["sessions"]) == 1, stats["sessions"]
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_fences_on_the_cpu(backend: str) -> None:
    """No device: nothing to fence or time, serial or pipelined."""
    impl = make_backend(backend, "cpu")
    impl.begin_request("client")
    assert impl.fence() is NO_FENCE and impl.fence().wait() == {}
    assert impl.take_timings() == {}
    impl.pipelined = True
    impl.begin_request("client")
    impl.settle()
    assert impl.fence() is NO_FENCE
    impl.forget_client("client")
