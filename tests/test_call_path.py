"""The per-call machinery a small call runs through, kept lean: the codec's per-thread
packers, the message pipe's wait, and the client channel's block bookkeeping."""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Iterator
from typing import Any

import msgpack
import numpy as np
import pytest

import tensorwire as tw
from conftest import run_in_threads
from tensorwire.channel import Spin, pack_message, unpack_message
from tensorwire.channel._pipe import MessagePipe, MessageReader
from tensorwire.channel._spin import STRETCH, STRETCH_MAX_S, stretch_enabled
from tensorwire.codec import _message as message
from tensorwire.codec import decode, encode_payload
from tensorwire.errors import ProtocolError

N_256K = (256 << 10) // 4  # float32 elements in 256 KiB: above the inline threshold


def _round_trip(payload: Any) -> Any:
    enc = encode_payload(payload)
    return decode(enc.frames({"id": 1})).payload


# --- the codec's per-thread packers ---------------------------------------------------------


def test_a_hook_that_encodes_again_gets_its_own_packer() -> None:
    """A caster that itself encodes (nested on the same thread) leaves the outer call intact."""
    inner: list[bytes] = []

    def caster(arr: np.ndarray) -> tuple[np.ndarray, str | None]:
        inner.append(encode_payload({"nested": [1, 2, 3]}).payload)
        return arr, None

    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    enc = encode_payload({"a": [x, "text", 7]}, caster=caster)
    assert inner == [msgpack.packb({"nested": [1, 2, 3]})]
    out = decode(enc.frames({"id": 2})).payload
    np.testing.assert_array_equal(out["a"][0], x)
    assert out["a"][1:] == ["text", 7]


def test_a_failed_encode_leaves_the_packers_usable() -> None:
    with pytest.raises(ProtocolError, match="cannot send a value of type object"):
        encode_payload({"a": [1, object()]})
    with pytest.raises(ProtocolError, match="cannot encode message meta"):
        encode_payload(None).frames({"id": object()})
    payload = {"a": [1.5, "x", [None, True]], "kw": {"k": -3}}
    assert encode_payload(payload).payload == msgpack.packb(payload)
    assert encode_payload(None).frames({"id": 3})[0] == msgpack.packb([1, {"id": 3}, None])


def test_a_packer_grown_past_the_limit_is_not_kept() -> None:
    big = list(range(message.PACKER_KEEP_BYTES // 4))  # several bytes each: over the limit
    encode_payload(None)  # this thread's encoder exists and is free
    kept = list(message._local.encoders)
    assert _round_trip({"a": big}) == {"a": big}
    assert message._local.encoders == kept[:-1]  # taken, then dropped rather than kept
    assert _round_trip({"a": [1]}) == {"a": [1]}


def test_threads_encode_at_once_without_mixing() -> None:
    errors: list[str] = []

    def run(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for i in range(300):
            x = rng.standard_normal(int(rng.integers(1, 40))).astype(np.float32)
            payload = {"a": [x, seed, i, complex(i, seed)], "kw": {"s": str(seed)}}
            out = _round_trip(payload)
            if not (np.array_equal(out["a"][0], x) and out["a"][1:] == [seed, i, complex(i, seed)]
                    and out["kw"] == {"s": str(seed)}):  # fmt: skip
                errors.append(f"thread {seed}, call {i}")

    assert run_in_threads(run, 4, timeout=30) == []
    assert errors == []


def test_extension_records_are_msgpack_ext_types() -> None:
    ext = message._ext(message.EXT_TENSOR, b"abc")
    assert ext == msgpack.ExtType(message.EXT_TENSOR, b"abc")
    assert type(ext) is msgpack.ExtType and (ext.code, ext.data) == (message.EXT_TENSOR, b"abc")


@pytest.mark.parametrize(
    "x",
    [
        np.arange(5, dtype=np.int16),
        np.arange(10, dtype=np.float32)[::5][:1],  # one element, an odd stride: still contiguous
        np.zeros(0, np.complex64),
        np.arange(12, dtype=np.float64).reshape(3, 4),
        np.asfortranarray(np.arange(12, dtype=np.uint8).reshape(3, 4)),
    ],
)
def test_tensors_keep_shape_order_and_values(x: np.ndarray) -> None:
    out = _round_trip({"a": [x]})["a"][0]
    assert out.shape == x.shape and out.dtype == x.dtype
    np.testing.assert_array_equal(out, x)


# --- the message pipe ------------------------------------------------------------------------


@pytest.fixture
def pipes(tmp_path: Any) -> Iterator[tuple[MessagePipe, MessagePipe]]:
    server = MessagePipe.create(str(tmp_path))
    client = MessagePipe.attach(server.name, str(tmp_path), max_message=1 << 20)
    try:
        yield server, client
    finally:
        client.close()
        server.close()


def test_wait_readable_times_out_and_sees_messages(
    pipes: tuple[MessagePipe, MessagePipe],
) -> None:
    server, client = pipes
    t0 = time.monotonic()
    assert client.wait_readable(0.05) is False
    assert client.wait_readable(0.02, spin=0.01) is False
    assert time.monotonic() - t0 >= 0.06
    t0 = time.monotonic()
    assert client.wait_readable(-1.0) is False  # a negative wait is none, never forever
    assert time.monotonic() - t0 < 1.0
    server.send(pack_message([b"hello", b"x" * 1000]), 1.0)
    assert client.wait_readable(0.0) is True
    assert client.wait_readable(1e9) is True  # beyond what poll() takes: select() waits
    assert client.wait_readable(1.0, spin=0.01) is True
    client.reader.read_available()
    assert [[bytes(f) for f in m] for m in client.reader.messages()] == [[b"hello", b"x" * 1000]]
    assert client.wait_readable(0.01, spin=0.005) is False  # read: nothing left to see


def test_a_closed_pipe_waits_and_sees_nothing(tmp_path: Any) -> None:
    """The pipe's poll object outlives close(): a wait after it must not watch whatever file
    took over the old descriptor number."""
    server = MessagePipe.create(str(tmp_path))
    client = MessagePipe.attach(server.name, str(tmp_path), max_message=1 << 20)
    fd = client.recv_fd
    client.close()
    server.send(pack_message([b"late"]), 1.0)
    r, w = os.pipe()
    try:
        os.write(w, b"x")
        os.dup2(r, fd)  # the old number now names a readable pipe
        assert client.wait_readable(0.02, spin=0.005) is False
    finally:
        for closing in {r, w, fd}:  # (the pipe may have taken the old number itself)
            os.close(closing)
        server.close()


def test_pipe_framing_is_a_count_then_sizes() -> None:
    frames = [b"ab", b"", b"c" * 300]
    packed = pack_message(frames)
    assert packed[:16] == (3).to_bytes(4, "little") + b"".join(
        len(f).to_bytes(4, "little") for f in frames)  # fmt: skip
    assert [bytes(f) for f in unpack_message(memoryview(packed))] == frames
    r, w = os.pipe()
    try:
        os.set_blocking(r, False)
        os.write(w, packed)
        reader = MessageReader(r, 1 << 20)
        reader.read_available()
        assert [[bytes(f) for f in m] for m in reader.messages()] == [frames]
    finally:
        os.close(r)
        os.close(w)


# --- the client channel's blocks ------------------------------------------------------------


@pytest.fixture(scope="module")
def gpu() -> Iterator[tw.Client]:
    with tw.Server(backend="numpy") as server, tw.Client(server.url, require="shm") as client:
        yield client


def test_arena_blocks_return_when_their_last_view_goes(gpu: tw.Client) -> None:
    channel = gpu._channel
    assert channel is not None
    used = channel.c2s_alloc.used
    a = gpu.empty(N_256K, np.float32)
    view = a[10:]
    assert channel.c2s_alloc.used > used
    del a
    gc.collect()
    assert channel.c2s_alloc.used > used  # a view still holds the block
    del view
    assert channel.c2s_alloc.used == used  # at once, without a collection
    assert not channel._block_refs or all(r() is not None for r in channel._block_refs.values())


def test_fresh_results_are_handed_back_once_dropped(gpu: tw.Client) -> None:
    channel = gpu._channel
    assert channel is not None
    x = gpu.asarray(np.arange(N_256K, dtype=np.float32))
    r = gpu.call("neg", x)
    assert gpu.last_trace["paths"]["reply"][0].startswith("shm")
    before = len(channel._released)
    del r
    assert len(channel._released) == before + 1
    gpu.call("identity", np.zeros(4, np.float32))  # the next request tells the server
    assert len(channel._released) == 0


def test_aliases_of_whole_blocks_and_of_parts(gpu: tw.Client) -> None:
    a = gpu.asarray(np.arange(N_256K, dtype=np.float32))
    whole = gpu.call("identity", a)
    assert gpu.last_trace["paths"]["reply"] == ["shm(alias)"]
    assert np.shares_memory(whole, a)
    part = gpu.call("identity", a[N_256K // 2 :])  # starts inside the block
    assert gpu.last_trace["paths"]["reply"] == ["shm(alias)"]
    assert np.shares_memory(part, a)
    np.testing.assert_array_equal(part, np.arange(N_256K // 2, N_256K, dtype=np.float32))


# --- polling budgets ------------------------------------------------------------------------


def test_spin_stretches_to_short_waits_and_not_to_long_ones() -> None:
    base = 200e-6
    spin = Spin(base, stretch=True)
    assert spin.budget == base  # nothing seen yet: the fixed budget
    for _ in range(20):
        spin.waited(1e-3)  # the other side answers in about a millisecond
    assert spin.budget == pytest.approx(STRETCH * 1e-3, rel=0.02)
    for _ in range(20):
        spin.waited(STRETCH_MAX_S * 0.9)  # close to the cap: polled for up to the cap
    assert spin.budget == STRETCH_MAX_S
    for _ in range(20):
        spin.waited(10.0)  # long waits are not chased
    assert spin.budget == base
    for _ in range(20):
        spin.waited(10e-6)  # very short ones: the fixed budget is the floor
    assert spin.budget == base


def test_spin_stays_fixed_when_off_or_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    for spin in (Spin(200e-6, stretch=False), Spin(0.0, stretch=True)):
        before = spin.budget
        for _ in range(20):
            spin.waited(1e-3)
        assert spin.budget == before
    monkeypatch.setenv("TENSORWIRE_STRETCH_SPIN", "1")
    assert stretch_enabled() and Spin(200e-6)._stretch
    monkeypatch.setenv("TENSORWIRE_STRETCH_SPIN", "0")
    assert not stretch_enabled() and not Spin(200e-6)._stretch
    monkeypatch.setenv("TENSORWIRE_STRETCH_SPIN", "yes")
    with pytest.raises(ValueError, match="must be 0 or 1"):
        Spin(200e-6)
    monkeypatch.delenv("TENSORWIRE_STRETCH_SPIN")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert not stretch_enabled()  # two CPUs: polling would take the work's cores
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    assert stretch_enabled()


def test_spin_decided_by_cpus_gives_way_to_a_full_machine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Stretching chosen by the CPU count stops while the load average says every CPU is
    taken (polling would take cores the work needs); forced on, it keeps stretching."""
    from tensorwire.channel import _spin

    monkeypatch.delenv("TENSORWIRE_STRETCH_SPIN", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    load = [20.0]
    monkeypatch.setattr(os, "getloadavg", lambda: (load[0], 0.0, 0.0))
    monkeypatch.setattr(_spin, "_LOAD_EVERY_S", 0.0)  # look at the load on every wait
    monkeypatch.setattr(_spin, "_LOAD", _spin._Load())
    auto, forced_on = Spin(200e-6), Spin(200e-6, stretch=True)
    for _ in range(20):
        auto.waited(1e-3)
        forced_on.waited(1e-3)
    assert auto.budget == 200e-6 and forced_on.budget > 1e-3  # 20 runnable on 16 CPUs
    load[0] = 3.0
    auto.waited(1e-3)
    assert auto.budget > 1e-3  # CPUs to spare again


def test_stretched_spins_serve_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stretching on both sides changes only when they sleep: calls are answered as ever, and
    each side's running mean follows its waits (down from its start above the cap)."""
    monkeypatch.setenv("TENSORWIRE_STRETCH_SPIN", "1")
    with tw.Server(backend="numpy") as server:
        assert not server._core._spin._stretch  # in-process: its thread would hold the GIL
    with tw.Server(backend="numpy", stretch_spin=True) as server, tw.Client(server.url) as c:
        assert server._core._spin._stretch and c._spin._stretch
        x = np.arange(256, dtype=np.float32)
        for _ in range(20):
            np.testing.assert_array_equal(c.call("neg", x), -x)
        assert c._spin._mean < 2 * STRETCH_MAX_S and server._core._spin._mean < 2 * STRETCH_MAX_S
