"""Wire precision end to end: bfloat16/float16 on the wire, original dtypes at both ends."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import tensorwire as tw
from tensorwire.codec import unit_roundoff


@pytest.fixture(scope="module")
def tcp_server():
    with tw.Server(listen=["tcp://127.0.0.1:0"], backend="numpy", insecure=True) as server:
        yield server


@pytest.mark.parametrize("wire", ["bfloat16", "float16"])
def test_float32_round_trip_within_the_bound(tcp_server, wire):
    x = np.random.default_rng(0).standard_normal((256, 64)).astype(np.float32)
    with tw.Client(tcp_server.url, transport="zmq", wire_dtype=wire) as gpu:
        y = gpu.identity(x)
        paths = gpu.last_trace["paths"]
    assert y.dtype == np.float32 and y.shape == x.shape
    # cast twice (there and back): each is a round-to-nearest with relative error <= u
    u = unit_roundoff(wire)
    assert np.all(np.abs(y - x) <= 2.01 * u * np.abs(x) + 1e-30)
    assert not np.array_equal(y, x)  # it really went narrow
    assert paths["request"] == [f"frame+{wire}"] and paths["reply"] == [f"frame+{wire}"]


def test_bfloat16_is_true_bfloat16(tcp_server):
    x = np.array([1.0 + 2**-8, 1.0 + 3 * 2**-8, 3.0e38], np.float32)  # ties round to even
    with tw.Client(tcp_server.url, transport="zmq", wire_dtype="bfloat16") as gpu:
        y = gpu.call("identity", x, wire_dtype=None)  # request narrowed? no: per-call override
        assert np.array_equal(y, x)
        y = gpu.identity(x)
    expected = x.astype(ml_dtypes.bfloat16).astype(np.float32)
    np.testing.assert_array_equal(y, expected)


def test_nan_and_inf_survive(tcp_server):
    x = np.array([np.nan, np.inf, -np.inf, -0.0, 1e6], np.float32)
    with tw.Client(tcp_server.url, transport="zmq", wire_dtype="float16") as gpu:
        y = gpu.identity(x)
    assert np.isnan(y[0]) and y[1] == np.inf and y[2] == -np.inf
    assert y[3] == 0 and np.signbit(y[3])
    assert y[4] == np.inf  # documented: float16 overflows to inf beyond 65504


def test_integers_bools_and_exact_are_never_cast(tcp_server):
    ints, flags = np.arange(-5, 5, dtype=np.int64), np.array([True, False])
    x = np.linspace(0, 1, 1000, dtype=np.float32)
    with tw.Client(tcp_server.url, transport="zmq", wire_dtype="bfloat16") as gpu:
        np.testing.assert_array_equal(gpu.identity(ints), ints)
        np.testing.assert_array_equal(gpu.identity(flags), flags)
        gpu.neg(tw.exact(x), wire_dtype=None)
        assert gpu.last_trace["paths"]["request"] == ["frame"]
        np.testing.assert_array_equal(gpu.neg(tw.exact(x), wire_dtype=None), -x)


@pytest.mark.parametrize("wire", ["bfloat16", "float16"])
def test_cached_put_over_a_narrow_wire(wire):
    # The server widens what it receives and checks the content hash on that, so the
    # client hashes the tensor as it will arrive, not as it left.
    w = np.random.default_rng(3).standard_normal((64, 32)).astype(np.float32)
    held = w.astype(ml_dtypes.bfloat16 if wire == "bfloat16" else np.float16).astype(np.float32)
    with tw.Server(listen=["tcp://127.0.0.1:0"], backend="numpy", insecure=True) as server:
        kinds = []
        handle = server._core.handler.handle

        def counting(req, session, handles):
            if req.kind != "hello":
                kinds.append(req.kind)
            return handle(req, session, handles)

        server._core.handler.handle = counting
        with tw.Client(server.url, transport="zmq", wire_dtype=wire) as gpu:
            first = gpu.put(w, cache=True)
            np.testing.assert_array_equal(gpu.fetch(first), held)
            assert kinds == ["has", "put", "fetch"]
            again = gpu.put(w.copy(), cache=True)  # found by its hash: no bytes this time
            assert kinds[3:] == ["has"]
            np.testing.assert_array_equal(gpu.fetch(again), held)


def test_server_computes_in_the_original_dtype(tcp_server):
    x = np.full(4, 1.0 + 2**-20, np.float64)
    with tw.Client(tcp_server.url, transport="zmq", wire_dtype="bfloat16") as gpu:
        y = gpu.mul(tw.exact(x), 3.0)
    assert y.dtype == np.float64


def test_auto_casts_only_large_tensors_across_hosts(tcp_server, monkeypatch):
    big = np.ones((1024, 512), np.float32)  # 2 MB
    with tw.Client(tcp_server.url, transport="zmq", wire_dtype="auto") as gpu:
        gpu.identity(big)  # loopback tcp: bytes are cheap here, nothing is narrowed
        assert gpu.last_trace["paths"]["request"] == ["frame"]
        # as if the server were on another host (the decision is the client's own)
        monkeypatch.setattr("tensorwire.client._client.wire_path", lambda url: "tcp")
        gpu.identity(big)
        assert gpu.last_trace["paths"]["request"] == ["frame+bfloat16"]
        gpu.identity(big[:4])
        assert gpu.last_trace["paths"]["request"] == ["frame"]


@pytest.mark.parametrize(
    ("url", "path"),
    [("tcp://10.0.0.7:5555", "tcp"), ("tcp://gpu-box:5555", "tcp"),
     ("tcp://127.0.0.1:5555", "local"), ("tcp://localhost:1", "local"),
     ("tcp://[::1]:5555", "local"), ("ipc:///tmp/x.sock", "local")],
)  # fmt: skip
def test_wire_path_rules(url, path):
    from tensorwire.transport import wire_path

    assert wire_path(url) == path


def test_auto_never_casts_over_shared_memory():
    big = np.ones((1024, 512), np.float32)
    with tw.Server(backend="numpy") as server, tw.Client(server.url, wire_dtype="auto") as gpu:
        assert gpu.path == "shm"
        y = gpu.identity(big)
        assert "+" not in "".join(gpu.last_trace["paths"]["request"])
    np.testing.assert_array_equal(y, big)


def test_casts_over_shared_memory_go_straight_into_the_arenas():
    # An explicit narrow wire over shared memory: the client casts into its arena and the
    # server casts its result into the reply's arena, so neither copies after the cast.
    # Arena blocks all come back; a full arena falls back to a frame, still cast.
    x = np.random.default_rng(3).standard_normal((512, 256)).astype(np.float32)
    with tw.Server(backend="numpy") as server:
        with tw.Client(server.url, wire_dtype="bfloat16") as gpu:
            arena = gpu._channel.c2s_alloc
            assert arena.used == 0
            y = gpu.neg(x)
            assert gpu.last_trace["paths"]["request"] == ["shm(zero-copy)+bfloat16"]
            assert gpu.last_trace["paths"]["reply"] == ["shm(direct)+bfloat16"]
            np.testing.assert_array_equal(y, -_bf16(x))
            z = gpu.add(x, x.astype(np.float64)[:1], wire_dtype="float16")  # float64 too
            paths = gpu.last_trace["paths"]["request"]  # a 1 KB row goes inline, as always
            assert paths == ["shm(zero-copy)+float16", "frame+float16"]
            ref = x.astype(np.float16).astype(np.float64) + x[:1].astype(np.float16)
            np.testing.assert_array_equal(z, ref.astype(np.float16).astype(np.float64))
            del y, z
            gpu.identity(np.zeros(4))  # the server hears of the released reply blocks
            assert arena.used == 0  # every request block came back after its reply
        big = np.random.default_rng(4).standard_normal((1024, 1024)).astype(np.float32)
        with tw.Client(server.url, wire_dtype="bfloat16", shm_size=1 << 20) as small:
            y = small.neg(big)  # 2 MB of bfloat16 do not fit the smallest arena, 1 MB
            (request,) = small.last_trace["paths"]["request"]
            assert request.startswith("frame") and request.endswith("+bfloat16")
            np.testing.assert_array_equal(y, -_bf16(big))


@pytest.mark.parametrize("wire", ["int8", "float32", "bf16", 16])
def test_unknown_wire_dtype_is_refused(tcp_server, wire):
    with pytest.raises(ValueError, match="wire dtype"):
        tw.Client(tcp_server.url, wire_dtype=wire)
    with tw.Client(tcp_server.url, transport="zmq") as gpu, pytest.raises(ValueError):
        gpu.identity(np.ones(3), wire_dtype=wire)


# -- element-moving ops keep narrowed arguments narrow on the server ------------------------


def _server_casts(server: tw.Server) -> int:
    """Pooled cast buffers the server has asked for (each widening or narrowing of >= 1 MiB)."""
    pool = server._core._cast_buffers
    return pool.allocated + pool.reused


@pytest.mark.parametrize(
    ("op", "args", "kwargs", "reference"),
    [
        ("identity", 1, {}, lambda x: x),
        ("reshape", 1, {"shape": (512, 1024)}, lambda x: x.reshape(512, 1024)),
        ("transpose", 1, {}, lambda x: x.T),
        ("concat", 2, {"axis": 0}, lambda x: np.concatenate([x, x], axis=0)),
    ],
)
def test_element_moving_ops_stay_narrow_with_the_same_bits(tcp_server, op, args, kwargs, reference):
    x = np.random.default_rng(1).standard_normal((1024, 512)).astype(np.float32)  # 2 MB
    before = _server_casts(tcp_server)
    with tw.Client(tcp_server.url, transport="zmq", wire_dtype="bfloat16") as gpu:
        arg = [x, x] if args == 2 else x
        y = gpu.call(op, arg, **kwargs) if args == 2 else gpu.call(op, x, **kwargs)
        reply = gpu.last_trace["paths"]["reply"]
    # exactly what widening, computing and narrowing again gives
    expected = reference(x.astype(ml_dtypes.bfloat16).astype(np.float32))
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, expected)
    assert reply == ["frame+bfloat16"]
    assert _server_casts(tcp_server) == before  # no widening, no narrowing there


def test_computing_ops_widen_on_the_server(tcp_server):
    x = np.random.default_rng(2).standard_normal((1024, 512)).astype(np.float32)
    before = _server_casts(tcp_server)
    with tw.Client(tcp_server.url, transport="zmq", wire_dtype="bfloat16") as gpu:
        y = gpu.neg(x)
    np.testing.assert_array_equal(y, -x.astype(ml_dtypes.bfloat16).astype(np.float32))
    assert _server_casts(tcp_server) == before + 2  # the argument widened, the result narrowed


def test_mixed_arguments_are_widened_first(tcp_server):
    big = np.random.default_rng(3).standard_normal((1024, 512)).astype(np.float32)
    small = np.ones((2, 512), np.float32)  # "auto" leaves it float32
    with tw.Client(tcp_server.url, transport="zmq") as gpu:
        y = gpu.call("concat", [tw.exact(small), big], axis=0, wire_dtype="bfloat16")
    assert y.dtype == np.float32 and y.shape == (1026, 512)
    np.testing.assert_array_equal(y[:2], small)
    np.testing.assert_array_equal(y[2:], big.astype(ml_dtypes.bfloat16).astype(np.float32))


def test_a_reply_policy_of_another_format_widens():
    from tensorwire.codec import Narrowed, to_wire
    from tensorwire.server._handlers import Request
    from tensorwire.server._wire import settle_narrowed

    x = np.ones(1 << 19, np.float32)  # 2 MB
    narrow, original = to_wire(x, "bfloat16")

    def request(op="identity", w="bfloat16", **meta):
        args = [Narrowed.checked(narrow, original)]
        return Request("call", 1, op, args, {}, {"w": w, **meta})

    pool = tw.codec.BufferPool()
    kept = request()
    assert settle_narrowed(kept, "local", 0, pool) == (np.dtype(ml_dtypes.bfloat16), "float32")
    assert kept.args[0] is narrow
    for req, path, handles in [
        (request(w="float16"), "local", 0),  # the reply would go float16: widen
        (request(w="auto"), "local", 0),  # "auto" over loopback narrows nothing
        (request(), "shm", 0),
        (request(), "local", 1),  # resident arguments take the native path
        (request(out="remote"), "local", 0),
        (request(op="add"), "local", 0),
        (request(w="nonsense"), "local", 0),
    ]:
        assert settle_narrowed(req, path, handles, pool) is None
        assert req.args[0].dtype == np.float32
    bf16 = (np.dtype(ml_dtypes.bfloat16), "float32")
    assert settle_narrowed(request(w="auto"), "tcp", 0, pool) == bf16


def test_element_moving_ops_stay_narrow_on_the_torch_backend():
    pytest.importorskip("torch")
    x = np.random.default_rng(4).standard_normal((1024, 512)).astype(np.float32)
    expected = x.astype(ml_dtypes.bfloat16).astype(np.float32)
    with (
        tw.Server(listen=["tcp://127.0.0.1:0"], backend="torch", insecure=True) as server,
        tw.Client(server.url, transport="zmq", wire_dtype="bfloat16") as gpu,
    ):
        before = _server_casts(server)
        np.testing.assert_array_equal(gpu.call("permute", x, dims=(1, 0)), expected.T)
        both = gpu.call("concat", [x, x], axis=1)
        assert _server_casts(server) == before
    np.testing.assert_array_equal(both, np.concatenate([expected, expected], axis=1))


def test_only_results_still_in_the_wire_format_are_marked():
    from tensorwire.server._wire import mark_narrowed

    bf16 = np.dtype(ml_dtypes.bfloat16)
    narrow, other = np.ones(3, bf16), np.ones(3, np.float32)
    marked = mark_narrowed([narrow, other, 7], (bf16, "float32"))
    assert marked[0].value is narrow and marked[0].original == "float32"
    assert marked[1] is other and marked[2] == 7


def test_graph_runs_take_a_wire_dtype_of_their_own(tcp_server):
    x = np.random.default_rng(5).standard_normal((64, 32)).astype(np.float32)
    with tw.Client(tcp_server.url, transport="zmq") as gpu:  # the client casts nothing
        with gpu.graph() as g:
            out = g.neg(g.input("x"))
        np.testing.assert_array_equal(g.run(out, x=x), -x)
        assert gpu.last_trace["paths"]["request"] == ["frame"]
        y = g.run(out, x=x, wire_dtype="bfloat16")  # this run only
        assert gpu.last_trace["paths"]["request"] == ["frame+bfloat16"]
        assert gpu.last_trace["paths"]["reply"] == ["frame+bfloat16"]
        assert y.dtype == np.float32
        u = unit_roundoff("bfloat16")
        assert np.all(np.abs(y + x) <= 2.01 * u * np.abs(x) + 1e-30) and not np.array_equal(y, -x)
        np.testing.assert_array_equal(g.run(out, x=x), -x)  # the client's policy again
        with pytest.raises(ValueError, match="unknown wire dtype"):
            g.run(out, x=x, wire_dtype="int8")
        with pytest.raises(ValueError, match="other than 'out' or 'wire_dtype'"):
            g.input("wire_dtype")
    with tw.Client(tcp_server.url, transport="zmq", wire_dtype="bfloat16") as gpu:
        with gpu.graph() as g:
            out = g.neg(g.input("x"))
        np.testing.assert_array_equal(g.run(out, x=x, wire_dtype=None), -x)  # exact, here
        assert gpu.last_trace["paths"]["request"] == ["frame"]


async def _async_graph_run(url, x):
    async with tw.AsyncClient(url, transport="zmq") as gpu:
        g = gpu.graph()
        with g:
            out = g.neg(g.input("x"))
        y = await g.run(out, x=x, wire_dtype="float16")
        return y, gpu.client.last_trace["paths"]["request"]


def test_async_graph_runs_take_a_wire_dtype(tcp_server):
    import asyncio

    x = np.linspace(-1, 1, 64, dtype=np.float32)
    y, paths = asyncio.run(_async_graph_run(tcp_server.url, x))
    assert paths == ["frame+float16"]
    np.testing.assert_array_equal(y, -x.astype(np.float16).astype(np.float32))


def test_a_device_backend_widens_call_arguments_itself():
    # On CUDA the torch backend takes narrowed arguments (of calls; a graph's inputs and
    # constants) to the device narrow and widens them there (device_casts); here the same
    # path runs with the CPU as the device.
    pytest.importorskip("torch")
    x = np.random.default_rng(6).standard_normal((256, 64)).astype(np.float32)
    w = np.random.default_rng(7).standard_normal((64, 8)).astype(np.float32)
    narrow = x.astype(ml_dtypes.bfloat16).astype(np.float32)
    with tw.Server(listen=["tcp://127.0.0.1:0"], backend="torch", device="cpu",
                   insecure=True) as server:
        backend = server._core.handler.backend
        assert backend.device_casts is False  # on the CPU the codec's pooled casts win
        backend.device_casts = True
        widened = []
        widen = backend.widen

        def counting(value, original):
            out = widen(value, original)
            widened.append((type(out).__name__, str(out.dtype)))
            return out

        backend.widen = counting
        with tw.Client(server.url, transport="zmq", wire_dtype="bfloat16") as gpu:
            y = gpu.neg(x)
            assert widened == [("Tensor", "torch.float32")]
            np.testing.assert_array_equal(y, _bf16(-narrow))
            m = gpu.matmul(x, w, wire_dtype="float16")  # two arguments, both on the device
            assert len(widened) == 3
            ref = x.astype(np.float16).astype(np.float32) @ w.astype(np.float16).astype(np.float32)
            np.testing.assert_allclose(m, ref.astype(np.float16).astype(np.float32), rtol=1e-2,
                                       atol=1e-2)
            d = gpu.neg(x.astype(np.float64))
            assert widened[-1] == ("Tensor", "torch.float64") and d.dtype == np.float64
            h = gpu.put(np.ones(3, np.float32))
            np.testing.assert_array_equal(gpu.add(x[:1, :3], h), _bf16(narrow[:1, :3] + 1))
            assert len(widened) == 5  # the native path (a handle among the arguments) too
            with gpu.graph() as g:
                out = g.matmul(g.neg(g.input("x")), w)  # w goes as a constant
            z = g.run(out, x=x)
            assert len(widened) == 7  # a graph's input and constant too
            np.testing.assert_allclose(z, _bf16(-narrow @ _bf16(w)), rtol=1e-2, atol=1e-2)
            assert g.last_plan == "miss"
            g.run(out, x=x)
            assert g.last_plan == "hit" and len(widened) == 9  # the plan cache knows them


def test_a_device_backend_narrows_results_itself(tmp_path):
    # On CUDA the torch backend narrows float32 results the reply will narrow anyway on the
    # device, before they cross to the host (half the bytes over PCIe, none of the server's
    # CPU); here the same path runs with the CPU as the device, over tcp frames and over
    # shared memory (where the narrow result is placed in the client's arena).
    pytest.importorskip("torch")
    x = np.random.default_rng(8).standard_normal((128, 64)).astype(np.float32)
    narrow = _bf16(x)
    listen = ["tcp://127.0.0.1:0", f"ipc://{tmp_path}/tw.sock"]
    with tw.Server(listen=listen, backend="torch", device="cpu", insecure=True) as server:
        backend = server._core.handler.backend
        backend.device_casts = True
        made = []
        narrowed = backend._narrowed

        def counting(t, wire):
            out = narrowed(t, wire)
            made.append((wire, str(out.value.dtype)))
            return out

        backend._narrowed = counting
        tcp, ipc = server.urls
        with tw.Client(tcp, transport="zmq", wire_dtype="bfloat16") as gpu:
            y = gpu.neg(x)
            assert made == [("bfloat16", "bfloat16")]
            assert gpu.last_trace["paths"]["reply"] == ["frame+bfloat16"]
            np.testing.assert_array_equal(y, -narrow)  # torch rounds as the codec does
            h = gpu.matmul(x, x.T, wire_dtype="float16")
            assert made[-1] == ("float16", "float16") and h.dtype == np.float32
            x16 = x.astype(np.float16).astype(np.float32)
            np.testing.assert_allclose(h, (x16 @ x16.T).astype(np.float16), rtol=2e-3)
            d = gpu.neg(x.astype(np.float64))  # float64: left to the codec (no double rounding)
            assert len(made) == 2 and d.dtype == np.float64
            np.testing.assert_array_equal(d, -x.astype(np.float64).astype(ml_dtypes.bfloat16))
            a = gpu.neg(x, wire_dtype="auto")  # "auto" narrows nothing on loopback
            assert len(made) == 2 and gpu.last_trace["paths"]["reply"] == ["frame"]
            np.testing.assert_array_equal(a, -x)
            with gpu.graph() as g:
                out = g.relu(g.neg(g.input("x")))
            z = g.run(out, x=x)
            assert len(made) == 3
            np.testing.assert_array_equal(z, np.maximum(-narrow, 0))
            bad = np.array([np.nan, np.inf, -np.inf, 3.4e38, 1e-40], np.float32)
            back = gpu.neg(bad)  # NaN and Inf survive; overflow becomes Inf, as in the codec
            assert np.isnan(back[0]) and back[1] == -np.inf and back[2] == np.inf
            np.testing.assert_array_equal(back[3:], _bf16(-bad[3:]))
        big = np.random.default_rng(9).standard_normal((512, 256)).astype(np.float32)
        with tw.Client(ipc, wire_dtype="bfloat16") as gpu:  # shared memory
            y = gpu.neg(big)
            (reply,) = gpu.last_trace["paths"]["reply"]
            assert reply.startswith("shm") and "bfloat16" in reply
            assert made[-1] == ("bfloat16", "bfloat16") and len(made) == 5
            np.testing.assert_array_equal(y, -_bf16(big))


def _bf16(a):
    return a.astype(ml_dtypes.bfloat16).astype(np.float32)
