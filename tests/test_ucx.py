"""ucx:// against a real server process, on one machine over UCX's tcp and shared memory.

Skipped where the optional ucxx does not import (`pip install tensorwire[ucx]`);
conftest.py sets UCX_TLS=tcp,sm,self for every process of the run. The same
server also passes the conformance suite (tests/test_conformance.py, path "ucx").
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import ml_dtypes
import numpy as np
import pytest

pytest.importorskip("ucxx", reason="ucx:// needs the optional ucxx (pip install tensorwire[ucx])")

import tensorwire as tw  # noqa: E402
from conftest import ServerProcess  # noqa: E402
from tensorwire.channel import pack_message  # noqa: E402
from tensorwire.codec import encode  # noqa: E402
from tensorwire.transport import _ucx  # noqa: E402

SIZES = {"1KB": 1 << 10, "1MB": 1 << 20, "10MB": 10 << 20}


@pytest.fixture
def server() -> Iterator[ServerProcess]:
    proc = ServerProcess(["ucx://127.0.0.1:0"], "--backend", "numpy")
    try:
        yield proc
    finally:
        assert proc.stop() == 0  # SIGTERM: a clean exit, nothing left running


def test_serve_prints_the_bound_port(server):
    host, _, port = server.url.removeprefix("ucx://").rpartition(":")
    assert host == "127.0.0.1" and int(port) > 0


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("dtype", ["float32", "int64", "uint8", ml_dtypes.bfloat16], ids=str)
def test_round_trips(server, dtype, size):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(SIZES[size] // np.dtype(dtype).itemsize) * 50).astype(dtype)
    with tw.Client(server.url) as gpu:
        y = gpu.identity(x)
        assert gpu.last_trace["paths"] == {"request": ["frame"], "reply": ["frame"],
                                           "message": "ucx"}
        assert gpu.path == "ucx" and "no shared memory" in gpu.shm_reason
    assert y.dtype == x.dtype and np.array_equal(y.view(np.uint8), x.view(np.uint8))


def test_op_error_then_keeps_serving(server):
    with tw.Client(server.url) as gpu:
        with pytest.raises(tw.RemoteError, match="matmul"):
            gpu.matmul(np.ones((2, 3)), np.ones((4, 5)))
        future = gpu.submit("no_such_op", np.ones(2))
        with pytest.raises(tw.RemoteError, match="no_such_op"):
            future.result(timeout=10)
        np.testing.assert_array_equal(gpu.neg(np.ones(2)), -np.ones(2))


def _raw(url: str, messages: list[np.ndarray]) -> BaseException | None:
    """Send `messages` on a fresh endpoint; what receiving 8 bytes back then raises."""
    host, port = _ucx.host_port(url)

    async def exchange() -> BaseException | None:
        import ucxx

        ep = await ucxx.create_endpoint(host, port)
        try:
            for message in messages:
                await ep.send(message)
            await asyncio.wait_for(ep.recv(np.empty(1, "<u8")), 10)
        except Exception as exc:  # what the server's reaction looks like from here
            return exc
        finally:
            await _ucx._close(ep)
        return None

    return _ucx._run(exchange(), 30)


def _u64(n: int) -> np.ndarray:
    return np.array([n], "<u8")


def _bad_messages() -> dict[str, list[np.ndarray]]:
    good = np.frombuffer(pack_message(encode({"k": "call", "id": 7, "op": "identity"})), np.uint8)
    zero_frames = np.zeros(8, np.uint8)
    sizes_too_big = np.frombuffer(pack_message([b"abcd"]), np.uint8).copy()
    sizes_too_big[4] = 200  # the frame claims 200 bytes, the message holds 4
    return {
        "oversized header": [_u64(1 << 40)],
        "length below framing": [_u64(2)],
        "zero frames": [_u64(8), zero_frames],
        "sizes past the end": [_u64(sizes_too_big.nbytes), sizes_too_big],
        "body shorter than said": [_u64(good.nbytes + 100), good],
    }


@pytest.mark.parametrize("case", list(_bad_messages()))
def test_malformed_messages_close_that_endpoint_only(server, case):
    outcome: Any = _raw(server.url, _bad_messages()[case])
    if case == "body shorter than said":
        # UCX receives into a buffer of the announced size; the short send is taken
        # (truncated) or leaves the receive waiting: either way no reply comes.
        assert outcome is not None
    else:
        assert outcome is not None and not isinstance(outcome, TimeoutError), outcome
    with tw.Client(server.url) as gpu:
        np.testing.assert_array_equal(gpu.identity(np.arange(5)), np.arange(5))


def test_a_vanished_client_does_not_take_the_server_down(server):
    code = (
        "import os, numpy as np, tensorwire as tw\n"
        f"gpu = tw.Client({server.url!r})\n"
        "gpu.submit('identity', np.ones(1 << 20))\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    with tw.Client(server.url) as gpu:
        np.testing.assert_array_equal(gpu.identity(np.arange(5)), np.arange(5))


def test_ucx_without_insecure_is_refused():
    done = subprocess.run(
        [sys.executable, "-m", "tensorwire", "serve", "--listen", "ucx://127.0.0.1:0"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2 and "--insecure" in done.stderr
    with pytest.raises(tw.AuthError, match="insecure"):
        tw.Server(listen=["ucx://127.0.0.1:0"])


def test_in_process_server_and_timeout():
    with tw.Server(listen=["ucx://127.0.0.1:0"], insecure=True, backend="numpy") as server:
        assert server.url.startswith("ucx://127.0.0.1:")
        with tw.Client(server.url, timeout=5) as gpu:
            futures = [gpu.submit("mul", np.full(8, i), 2) for i in range(50)]
            for i, future in enumerate(futures):
                np.testing.assert_array_equal(future.result(timeout=10), np.full(8, 2 * i))
    with pytest.raises((tw.ConnectionClosed, tw.TimeoutError)):
        tw.Client(server.url, timeout=1)  # nobody listens there any more
