"""Client and in-process Server: kinds, custom ops, timeouts, busy, closing, handshake."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import msgpack
import numpy as np
import pytest
import zmq

import tensorwire as tw
from tensorwire.codec import PROTOCOL_VERSION


@pytest.fixture
def server():
    with tw.Server(backend="numpy") as srv:
        yield srv


def test_numpy_in_numpy_out_and_attribute_sugar(server):
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    with tw.Client(server.url) as gpu:
        out = gpu.transpose(a)
        assert isinstance(out, np.ndarray)
        np.testing.assert_array_equal(out, a.T)
        np.testing.assert_array_equal(gpu.call("transpose", a), a.T)


def test_torch_in_torch_out():
    torch = pytest.importorskip("torch")
    with tw.Server(backend="torch", device="cpu") as srv, tw.Client(srv.url) as gpu:
        x = torch.randn(4, 8)
        y = gpu.relu(x)
        assert isinstance(y, torch.Tensor)
        torch.testing.assert_close(y, torch.relu(x))
        xb = torch.randn(3, 3).to(torch.bfloat16)
        yb = gpu.identity(xb)
        assert yb.dtype == torch.bfloat16 and torch.equal(yb, xb)


def test_dlpack_object_is_accepted(server):
    class OnlyDLPack:
        def __init__(self, arr: np.ndarray) -> None:
            self._arr = arr

        def __dlpack__(self, **kwargs):
            return self._arr.__dlpack__(**kwargs)

        def __dlpack_device__(self):
            return self._arr.__dlpack_device__()

    x = np.arange(5, dtype=np.int32)
    with tw.Client(server.url) as gpu:
        np.testing.assert_array_equal(gpu.identity(OnlyDLPack(x)), x)


def test_scalars_strings_and_nested_arguments(server):
    with tw.Client(server.url) as gpu:
        parts = [np.ones((1, 2)), np.zeros((2, 2))]
        np.testing.assert_array_equal(gpu.concat(parts, axis=0), np.concatenate(parts))
        np.testing.assert_array_equal(gpu.cast(np.arange(3), "float16"),
                                      np.arange(3).astype(np.float16))


def test_register_op_serves_custom_op():
    name = "test_scale_custom"

    @tw.register_op(name)
    def scale(x, factor: float = 2.0):
        """Multiply by a factor."""
        return x * factor

    with tw.Server(backend="numpy") as srv, tw.Client(srv.url) as gpu:
        np.testing.assert_array_equal(gpu.call(name, np.arange(3.0), factor=3.0),
                                      np.arange(3.0) * 3)
        listed = {op["name"]: op for op in gpu.ops()}
        assert listed[name]["doc"] == "Multiply by a factor."


def _register_sleep() -> str:
    name = "test_sleep_custom"
    if name not in {op["name"] for op in tw.server.default_registry().list()}:

        @tw.register_op(name)
        def sleep(x, seconds: float):
            time.sleep(seconds)
            return x

    return name


def test_timeout_raises_and_late_reply_is_dropped():
    sleep = _register_sleep()
    with tw.Server(backend="numpy") as srv, tw.Client(srv.url, timeout=0.3) as gpu:
        with pytest.raises(tw.TimeoutError) as info:
            gpu.call(sleep, np.ones(2), 1.0)
        assert isinstance(info.value, TimeoutError)  # the builtin too
        time.sleep(0.8)  # the late reply arrives and must not answer the next call
        np.testing.assert_array_equal(gpu.identity(np.arange(4)), np.arange(4))


def test_submit_timeout_fails_the_future():
    sleep = _register_sleep()
    with tw.Server(backend="numpy") as srv, tw.Client(srv.url, timeout=0.3) as gpu:
        future = gpu.submit(sleep, np.ones(2), 1.0)
        with pytest.raises(tw.TimeoutError):
            future.result(timeout=5)


@pytest.mark.parametrize("depth", [1, 4])
def test_submit_resends_after_silence_and_the_op_runs_once(depth):
    """Lazy Pirate for futures: the first reply goes to a connection the pump has dropped
    (the op outlasts the first attempt's share of the timeout); the resend, on a new
    connection, is answered from the server's reply cache; served one at a time or
    pipelined (requests launched before the oldest replies)."""
    name, runs = f"test_slow_first_count_{depth}", []

    @tw.register_op(name)
    def slow_first(x):
        runs.append(1)
        if len(runs) == 1:
            time.sleep(1.2)
        return x + len(runs)

    with tw.Server(backend="numpy", pipeline_depth=depth) as srv, \
            tw.Client(srv.url, timeout=3.0) as gpu:
        future = gpu.submit(name, np.zeros(2))  # resent after 1 s (3 s over 3 attempts)
        others = [gpu.submit("neg", np.ones(2)) for _ in range(5)]
        np.testing.assert_array_equal(future.result(timeout=10), np.ones(2))
        for other in others:
            np.testing.assert_array_equal(other.result(timeout=10), -np.ones(2))
        assert runs == [1]  # executed once ...
        received = srv._core.metrics.requests  # ... though received twice (counted just
        deadline = time.monotonic() + 5  # after the reply went out: wait for the count)
        while received[("call", name)] < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert received[("call", name)] == 2
        np.testing.assert_array_equal(gpu.submit(name, np.zeros(2)).result(timeout=10), [2, 2])


def test_submit_without_retries_times_out_instead():
    sleep = _register_sleep()
    with tw.Server(backend="numpy") as srv, tw.Client(srv.url, timeout=0.5, retries=0) as gpu:
        with pytest.raises(tw.TimeoutError):
            gpu.submit(sleep, np.ones(2), 1.0).result(timeout=5)


def test_full_queue_answers_busy():
    sleep = _register_sleep()
    with tw.Server(backend="numpy", max_queue=1) as srv, tw.Client(srv.url) as gpu:
        futures = [gpu.submit(sleep, np.ones(1), 0.2) for _ in range(6)]
        outcomes = []
        for f in futures:
            try:
                f.result(timeout=10)
                outcomes.append("ok")
            except tw.ServerBusy:
                outcomes.append("busy")
    assert "ok" in outcomes and "busy" in outcomes


def test_closed_client_raises_connection_closed(server):
    gpu = tw.Client(server.url)
    gpu.close()
    with pytest.raises(tw.ConnectionClosed):
        gpu.identity(np.ones(1))
    gpu.close()  # idempotent


def test_close_fails_futures_in_flight():
    sleep = _register_sleep()
    with tw.Server(backend="numpy") as srv:
        gpu = tw.Client(srv.url)
        future = gpu.submit(sleep, np.ones(1), 0.5)
        gpu.close()
        with pytest.raises(tw.ConnectionClosed):
            future.result(timeout=5)


def test_no_server_times_out_clearly(tmp_path):
    with pytest.raises(tw.TimeoutError, match="no reply"):
        tw.Client(f"ipc://{tmp_path / 'nobody.sock'}", timeout=0.3)


def test_unknown_scheme_names_known_ones():
    with pytest.raises(tw.TransportError, match="ipc, tcp"):
        tw.Client("udp://127.0.0.1:5555")


def test_ucx_without_ucxx_names_the_extra(monkeypatch):
    import tensorwire.transport._ucx as ucx

    real = ucx.importlib.util.find_spec
    monkeypatch.setattr(ucx.importlib.util, "find_spec",
                        lambda name, *a: None if name == "ucxx" else real(name, *a))
    with pytest.raises(tw.TransportError, match=r"pip install tensorwire\[ucx\]"):
        tw.Client("ucx://127.0.0.1:13337")
    with pytest.raises(tw.TransportError, match=r"pip install tensorwire\[ucx\]"):
        tw.Server(listen=["ucx://127.0.0.1:0"], insecure=True)


def test_importing_tensorwire_does_not_import_ucxx():
    code = "import sys, tensorwire; assert 'ucxx' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.parametrize("kwargs", [{"transport": "carrier-pigeon"}, {"timeout": 0}])
def test_bad_client_arguments(kwargs):
    with pytest.raises(ValueError):
        tw.Client("ipc:///nonexistent/tw.sock", **kwargs)


def test_version_mismatch_names_both_versions(tmp_path):
    """A server speaking another protocol version: the handshake fails clearly."""
    url = f"ipc://{tmp_path / 'future.sock'}"
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(url)
    other = PROTOCOL_VERSION + 1

    def fake_server() -> None:
        if router.poll(5000):
            ident, header, *_ = router.recv_multipart()
            rid = msgpack.unpackb(header)[1]["id"]
            router.send_multipart([ident, msgpack.packb([other, {"id": rid, "ok": True}, None])])

    thread = threading.Thread(target=fake_server)
    thread.start()
    try:
        with pytest.raises(tw.VersionMismatch) as info:
            tw.Client(url, timeout=5)
        assert str(other) in str(info.value) and str(PROTOCOL_VERSION) in str(info.value)
    finally:
        thread.join()
        router.close()
        ctx.term()


def test_ipc_socket_is_private(tmp_path):
    sock_dir = tmp_path / "private"
    with tw.Server(listen=[f"ipc://{sock_dir / 'tw.sock'}"], backend="numpy"):
        assert (sock_dir / "tw.sock").stat().st_mode & 0o777 == 0o600
        assert sock_dir.stat().st_mode & 0o777 == 0o700  # created for it
