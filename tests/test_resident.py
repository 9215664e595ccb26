"""Resident tensors: lifetime (free, GC, disconnect, session timeout), isolation, upload dedup."""

from __future__ import annotations

import gc
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import tensorwire as tw

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def server() -> Iterator[tw.Server]:
    with tw.Server(backend="numpy") as srv:
        yield srv


def _store(server: tw.Server, gpu: tw.Client) -> Any:
    return server._core.sessions._sessions[gpu._session].store


def _kinds(server: tw.Server) -> Counter[str]:
    """Count requests by kind from now on."""
    counts: Counter[str] = Counter()
    handler = server._core.handler
    handle = handler.handle

    def counting(req: Any, session: Any, handles: int) -> Any:
        counts[req.kind] += 1
        return handle(req, session, handles)

    handler.handle = counting  # type: ignore[method-assign]
    return counts


def test_free_then_use_is_unknown(server: tw.Server) -> None:
    with tw.Client(server.url) as gpu:
        h = gpu.put(np.arange(4.0))
        assert h.shape == (4,) and h.dtype == "float64" and h.device == "cpu"
        np.testing.assert_array_equal(np.asarray(h), np.arange(4.0))
        h.free()
        assert len(_store(server, gpu)) == 0
        with pytest.raises(tw.RemoteError, match="unknown tensor handle") as info:
            gpu.fetch(h)
        assert info.value.remote_type == "UnknownHandle"


def test_garbage_collected_handle_is_freed_with_the_next_request(server: tw.Server) -> None:
    with tw.Client(server.url) as gpu:
        h = gpu.put(np.ones(1000, np.float32))
        store = _store(server, gpu)
        assert len(store) == 1 and store.nbytes == 4000
        del h
        gc.collect()
        gpu.identity(np.ones(1))  # carries the dropped handle's id
        assert len(store) == 0 and store.nbytes == 0


def test_garbage_collected_handle_is_freed(server: tw.Server) -> None:
    with tw.Client(server.url) as gpu:
        h = gpu.put(np.ones(1000, np.float32))
        store = _store(server, gpu)
        gpu.identity(np.ones(1))  # the put's reply is no longer the last one
        del h
        gc.collect()
        gpu.identity(np.ones(1))  # carries the dropped handle's id
        assert len(store) == 0 and store.nbytes == 0


def test_disconnect_frees_the_sessions_tensors(server: tw.Server) -> None:
    sessions, cache = server._core.sessions, server._core.sessions.cache
    gpu = tw.Client(server.url)
    gpu.put(np.ones(8)), gpu.put(np.arange(8.0), cache=True)
    assert len(sessions) == 1 and len(cache) == 1
    gpu.close()
    assert len(sessions) == 0 and len(cache) == 0


def test_idle_session_times_out(server: tw.Server) -> None:
    sessions = server._core.sessions
    with tw.Client(server.url) as gpu:
        h = gpu.put(np.ones(8))
        session = sessions._sessions[gpu._session]
        session.local = False  # as if the client were on another host
        sessions.idle_timeout = 0.05
        deadline = time.monotonic() + 10
        while len(sessions) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(sessions) == 0 and len(session.store) == 0
        old_session = gpu._session
        with pytest.raises(tw.RemoteError, match="unknown tensor handle"):
            gpu.fetch(h)  # the client opens a new session by itself; the handle is gone
        assert gpu._session != old_session


def test_handles_of_another_session_look_unknown(server: tw.Server) -> None:
    with tw.Client(server.url) as a, tw.Client(server.url) as b:
        mine = a.put(np.ones(3))
        gone = a.put(np.ones(3))
        gone.free()
        with pytest.raises(tw.RemoteError) as foreign:
            b.fetch(mine)
        with pytest.raises(tw.RemoteError) as freed:
            a.fetch(gone)
        assert foreign.value.remote_type == freed.value.remote_type == "UnknownHandle"
        def strip(e: Any) -> str:
            return str(e.value).replace(str(mine.hid), "N").replace(str(gone.hid), "N")

        assert strip(foreign) == strip(freed)
        with pytest.raises(tw.RemoteError, match="unknown tensor handle"):
            b.neg(mine)
        np.testing.assert_array_equal(a.neg(mine), -np.ones(3))


def test_dedup_hit_skips_the_bytes(server: tw.Server) -> None:
    w = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    counts = _kinds(server)
    with tw.Client(server.url) as a, tw.Client(server.url) as b:
        ha = a.put(w, cache=True)
        assert counts["has"] == 1 and counts["put"] == 1
        hb = b.put(w.copy(), cache=True)
        assert counts["has"] == 2 and counts["put"] == 1  # no bytes the second time
        np.testing.assert_array_equal(b.fetch(hb), w)
        assert len(server._core.sessions.cache) == 1
        ha.free()
        np.testing.assert_array_equal(b.fetch(hb), w)  # still held by b's session


@pytest.mark.parametrize("variant", ["dtype", "shape"])
def test_same_bytes_with_another_dtype_or_shape_is_a_miss(server: tw.Server, variant: str) -> None:
    w = np.arange(16, dtype=np.float32)
    other = w.view(np.int32) if variant == "dtype" else w.reshape(4, 4)
    counts = _kinds(server)
    with tw.Client(server.url) as gpu:
        first, second = gpu.put(w, cache=True), gpu.put(other, cache=True)
        assert counts["put"] == 2
        assert len(server._core.sessions.cache) == 2
        np.testing.assert_array_equal(gpu.fetch(second), other)
        assert gpu.fetch(second).dtype == other.dtype
        np.testing.assert_array_equal(gpu.fetch(first), w)


def test_resent_hello_gets_the_same_session(server: tw.Server) -> None:
    """A hello whose reply was lost is resent; it must not open a second session."""
    with tw.Client(server.url) as gpu:
        sessions = server._core.sessions
        before = len(sessions)
        again = gpu._request("hello", "", (), {})  # same hello token: a resend
        assert again["session"] == gpu._session and len(sessions) == before
