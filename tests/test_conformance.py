"""One conformance suite, run over every transport against a real server process."""

from __future__ import annotations

import threading

import ml_dtypes
import numpy as np
import pytest
import zmq

import tensorwire as tw
from conftest import run_in_threads
from tensorwire.codec import PROTOCOL_VERSION, decode, encode

DTYPES = [
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64", "complex64", "complex128", ml_dtypes.bfloat16,
]  # fmt: skip


def sample(dtype: object, shape: tuple[int, ...] = (3, 5)) -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.standard_normal(shape) * 10).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_identity_round_trips_every_dtype(conn, dtype):
    x = sample(dtype)
    with conn.client() as gpu:
        y = gpu.call("identity", x)
    assert y.dtype == x.dtype and y.shape == x.shape
    assert np.array_equal(y.view(np.uint8), x.view(np.uint8))


@pytest.mark.parametrize(
    "x",
    [
        np.array(2.5, np.float32),
        np.zeros((0, 4), np.float32),
        np.asfortranarray(np.arange(12.0).reshape(3, 4)),
        np.arange(40.0).reshape(5, 8)[::2, 1::3],
    ],
    ids=["0-d", "empty", "fortran", "strided"],
)
def test_identity_round_trips_layouts(conn, x):
    with conn.client() as gpu:
        y = gpu.identity(x)
    np.testing.assert_array_equal(y, x)
    assert y.shape == x.shape


def test_large_tensor_and_trace(conn):
    x = np.random.default_rng(1).standard_normal(10 * 2**20 // 4).astype(np.float32)
    with conn.client() as gpu:
        y = gpu.call("identity", x)
        trace = gpu.last_trace
    np.testing.assert_array_equal(y, x)
    for stage in ("client_serialize", "send", "server_queue", "server_deserialize", "compute",
                  "server_serialize", "receive", "client_deserialize", "total"):
        assert trace[stage] >= 0.0, stage
    assert trace["total"] > 0
    expected = {"shm": (["shm"], ["shm(alias)"], "pipe"), "ucx": (["frame"], ["frame"], "ucx")}.get(
        conn.path, (["frame"], ["frame"], "zmq")
    )
    assert trace["paths"] == {"request": expected[0], "reply": expected[1], "message": expected[2]}


def test_ops_compute_and_arguments(conn):
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((4, 3)), rng.standard_normal((3, 5))
    with conn.client() as gpu:
        np.testing.assert_allclose(gpu.matmul(a, b), a @ b)
        np.testing.assert_allclose(gpu.call("sum", a, axis=1, keepdims=True),
                                   a.sum(axis=1, keepdims=True))
        np.testing.assert_allclose(gpu.call("add", a, 2.0), a + 2.0)
        names = {op["name"] for op in gpu.ops()}
    assert {"identity", "matmul", "linear", "gelu", "softmax", "concat"} <= names


def test_failing_op_answers_that_caller_and_server_keeps_serving(conn):
    with conn.client() as gpu:
        with pytest.raises(tw.RemoteError) as info:
            gpu.matmul(np.ones((2, 3)), np.ones((4, 5)))
        assert info.value.remote_type
        with pytest.raises(tw.RemoteError, match="no_such_op"):
            gpu.call("no_such_op", np.ones(2))
        with pytest.raises(tw.RemoteError):
            gpu.call("add", np.ones(2))  # wrong arity
        np.testing.assert_array_equal(gpu.neg(np.ones(2)), -np.ones(2))


def test_submit_many_in_flight(conn):
    xs = [np.full((64,), i, np.float32) for i in range(200)]
    with conn.client() as gpu:
        futures = [gpu.submit("mul", x, 2.0) for x in xs]
        results = [f.result(timeout=30) for f in futures]
    for x, y in zip(xs, results, strict=True):
        np.testing.assert_array_equal(y, x * 2)


def test_concurrent_clients_in_threads(conn):
    def worker(seed: int) -> None:
        with conn.client() as gpu:
            for i in range(30):
                x = np.full((100,), seed * 1000 + i, np.float64)
                np.testing.assert_array_equal(gpu.identity(x), x)

    assert run_in_threads(worker, 6, timeout=30) == []


def test_one_client_shared_by_threads(conn):
    with conn.client() as gpu:
        out: dict[int, np.ndarray] = {}

        def worker(i: int) -> None:
            out[i] = gpu.mul(np.full(10, i, np.int64), 3)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    for i in range(8):
        np.testing.assert_array_equal(out[i], np.full(10, 3 * i))


def _raw_request(url: str, frames: list[bytes]) -> list[bytes]:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(url)
        sock.send_multipart(frames)
        assert sock.poll(10_000), "server did not answer a bad request"
        return sock.recv_multipart()
    finally:
        sock.close()
        ctx.term()


def _bad_requests() -> dict[str, list[bytes]]:
    good = encode({"k": "call", "id": 7, "op": "identity"}, {"a": [np.ones(4, np.float32)]})
    header = bytes(good[0])
    return {
        "not msgpack": [b"\xc1\xc1\xc1"],
        "truncated header": [header[:-3], bytes(good[1])],
        "short frame": [header, bytes(good[1])[:4]],
        "missing frame": [header],
        "extra frame": [header, bytes(good[1]), b"junk"],
        "other version": [b"\x93" + bytes([PROTOCOL_VERSION + 1]) + header[2:], bytes(good[1])],
        "unknown kind": encode({"k": "launch", "id": 7}),
        "bad op type": encode({"k": "call", "id": 7, "op": 5}),
    }


@pytest.mark.parametrize("case", list(_bad_requests()))
def test_bad_requests_get_clear_errors_and_server_keeps_serving(conn, case):
    if conn.path == "ucx":
        pytest.skip("a raw zmq request; ucx framing errors are tested in test_ucx.py")
    reply = decode(_raw_request(conn.url, _bad_requests()[case]))
    assert reply.meta["ok"] is False
    assert reply.meta["err"]["code"] in ("protocol", "version")
    assert reply.meta["err"]["msg"]
    if case not in ("not msgpack",):
        assert reply.meta["id"] == 7
    if case == "other version":
        assert str(PROTOCOL_VERSION + 1) in reply.meta["err"]["msg"]
        assert str(PROTOCOL_VERSION) in reply.meta["err"]["msg"]
    with conn.client() as gpu:
        np.testing.assert_array_equal(gpu.identity(np.arange(3)), np.arange(3))
