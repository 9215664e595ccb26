"""AsyncClient: the Client's surface for asyncio, many requests in flight at once."""

from __future__ import annotations

import asyncio
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


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_hundred_concurrent_calls_are_correct(server: tw.Server) -> None:
    xs = [np.full((8, 8), i, np.float32) for i in range(100)]

    async def main() -> list[Any]:
        async with tw.AsyncClient(server.url) as gpu:
            return await asyncio.gather(*(gpu.mul(x, 2.0) for x in xs))

    results = run(main())
    for i, out in enumerate(results):
        np.testing.assert_array_equal(out, np.full((8, 8), 2.0 * i, np.float32))


def test_same_surface_as_client(server: tw.Server) -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)

    async def main() -> None:
        async with tw.AsyncClient(server.url) as gpu:
            np.testing.assert_array_equal(await gpu.call("transpose", x), x.T)
            np.testing.assert_array_equal(await gpu.submit("neg", x), -x)
            assert gpu.last_trace["total"] > 0
            assert "gelu" in {op["name"] for op in await gpu.ops()}
            h = await gpu.put(x, cache=True)
            np.testing.assert_array_equal(await gpu.fetch(h), x)
            kept = await gpu.relu(h, out="remote")
            assert isinstance(kept, tw.client._remote.RemoteTensor)
            await gpu.free(h)
            with pytest.raises(tw.RemoteError, match="unknown tensor handle"):
                await gpu.fetch(h)
            with pytest.raises(tw.RemoteError, match="unknown op"):
                await gpu.no_such_op(x)

    run(main())


def test_graph_and_function(server: tw.Server) -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    w = np.ones((4, 2), np.float32)

    async def main() -> None:
        async with tw.AsyncClient(server.url) as gpu:
            with gpu.graph() as g:
                y = g.relu(g.matmul(g.input("x"), w) - 10.0)
            outs = await asyncio.gather(*(g.run(y, x=x + i) for i in range(10)))
            for i, out in enumerate(outs):
                np.testing.assert_array_equal(out, np.maximum((x + i) @ w - 10.0, 0))

            @gpu.function
            def layer(x: Any) -> Any:
                return -(x @ w)

            np.testing.assert_array_equal(await layer(x), -(x @ w))
            np.testing.assert_array_equal(await layer(x + 1), -((x + 1) @ w))
            assert layer.traced.traces == 1

    run(main())


def test_context_manager_closes_and_frees_the_session(server: tw.Server) -> None:
    sessions = server._core.sessions

    async def main() -> tw.AsyncClient:
        async with tw.AsyncClient(server.url) as gpu:
            await gpu.put(np.ones(4, np.float32))
            assert len(sessions) == 1
        return gpu

    gpu = run(main())
    assert len(sessions) == 0
    with pytest.raises(tw.ConnectionClosed):
        gpu.client.identity(np.ones(1))


def test_cancelled_await_leaves_the_client_usable(server: tw.Server) -> None:
    x = np.ones((256, 256), np.float32)

    async def main() -> None:
        async with tw.AsyncClient(server.url) as gpu:
            tasks = [asyncio.ensure_future(gpu.matmul(x, x)) for _ in range(20)]
            await asyncio.sleep(0)
            for t in tasks[::2]:
                t.cancel()
            done = await asyncio.gather(*tasks, return_exceptions=True)
            assert sum(isinstance(d, asyncio.CancelledError) for d in done) >= 1
            np.testing.assert_array_equal(await gpu.add(x, x), 2 * x)

    run(main())


def test_errors_in_flight_go_to_their_own_awaiter(server: tw.Server) -> None:
    async def main() -> list[Any]:
        async with tw.AsyncClient(server.url) as gpu:
            good = gpu.neg(np.ones(3))
            bad = gpu.matmul(np.ones((2, 3)), np.ones((2, 3)))
            return await asyncio.gather(good, bad, return_exceptions=True)

    good, bad = run(main())
    np.testing.assert_array_equal(good, -np.ones(3))
    assert isinstance(bad, tw.RemoteError) and "matmul" in str(bad)
