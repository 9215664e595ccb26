"""`tw.AsyncClient`: the Client's surface for asyncio, many requests in flight.

    async with tw.AsyncClient(url) as gpu:
        ys = await asyncio.gather(*(gpu.gelu(x) for x in xs))   # pipelined on one socket
        w = await gpu.put(weights, cache=True)
        with gpu.graph() as g:
            y = g.gelu(g.linear(x, w, b))
        out = await g.run(y)

Ops go through the sync Client's `submit` (one pump thread keeps them all in
flight) and come back as asyncio futures. put, fetch, free, ops and graph runs
use the sync path on the event loop's default executor, so they never block the
loop. Cancelling an await abandons the result; the request itself still completes.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import Future
from types import TracebackType
from typing import Any

from ..codec import HandleRef
from ._client import Client
from ._graph import CLIENT_POLICY, Graph, Node, traced
from ._remote import RemoteTensor


class AsyncClient:
    """A connection to a tensorwire server for asyncio code (same options as Client)."""

    def __init__(self, url: str, **options: Any) -> None:
        self._client = Client(url, **options)

    @property
    def client(self) -> Client:
        """The synchronous Client underneath (same session, same handles)."""
        return self._client

    @property
    def url(self) -> str:
        return self._client.url

    @property
    def last_trace(self) -> dict[str, Any]:
        """The trace of the last completed request (see Client.last_trace)."""
        return self._client.last_trace

    @property
    def path(self) -> str:
        return self._client.path

    async def call(self, op: str, /, *args: Any, **kwargs: Any) -> Any:
        """Run `op` on the server; `out="remote"` returns a RemoteTensor."""
        return await self.submit(op, *args, **kwargs)

    def submit(self, op: str, /, *args: Any, **kwargs: Any) -> asyncio.Future[Any]:
        """Start `op` now and return an asyncio future for its result."""
        return _adopt(self._client.submit(op, *args, **kwargs))

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_"):
            raise AttributeError(name)
        return functools.partial(self.call, name)

    async def put(self, x: Any, *, cache: bool = False) -> RemoteTensor:
        """Keep `x` on the server and return a handle (see Client.put)."""
        handle: RemoteTensor = await self._in_thread(self._client.put, x, cache=cache)
        return handle

    async def fetch(self, handle: HandleRef) -> Any:
        return await self._in_thread(self._client.fetch, handle)

    async def free(self, *handles: HandleRef) -> None:
        await self._in_thread(self._client.free, *handles)

    async def ops(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self._in_thread(self._client.ops)
        return result

    def graph(self) -> AsyncGraph:
        """Record ops lazily; `await g.run(...)` executes the graph in one request."""
        return AsyncGraph(self._client)

    def function(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Decorator: trace `fn` into a graph once; each call is one awaited request."""
        tracer = traced(self._client, fn)

        @functools.wraps(fn)
        async def run(*args: Any, **kwargs: Any) -> Any:
            return await self._in_thread(tracer, *args, **kwargs)

        run.traced = tracer  # type: ignore[attr-defined]
        return run

    async def close(self) -> None:
        """Close the connection; requests still in flight fail with ConnectionClosed."""
        await self._in_thread(self._client.close)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return repr(self._client).replace("tensorwire.Client", "tensorwire.AsyncClient")

    async def _in_thread(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, functools.partial(fn, *args, **kwargs))


class AsyncGraph(Graph):
    """A Graph whose `run` is awaited (recording is the same as Graph's)."""

    async def run(self, *outputs: Node, out: str | None = None,
                  wire_dtype: Any = CLIENT_POLICY, **inputs: Any) -> Any:
        request, finish = self._request(outputs, out, inputs, wire_dtype)
        loop = asyncio.get_running_loop()
        reply = await loop.run_in_executor(None, self._client._request, *request)
        return finish(reply)


def _adopt(future: Future[Any]) -> asyncio.Future[Any]:
    """An asyncio future settled by `future`; cancelling it never touches `future`."""
    loop = asyncio.get_running_loop()
    result: asyncio.Future[Any] = loop.create_future()

    def settle(done: Future[Any]) -> None:
        if result.done():
            return  # cancelled by its awaiter: the result is abandoned
        exc = done.exception()
        if exc is not None:
            result.set_exception(exc)
        else:
            result.set_result(done.result())

    def wake(done: Future[Any]) -> None:
        if not loop.is_closed():  # a loop that is gone has nobody left to tell
            loop.call_soon_threadsafe(settle, done)

    future.add_done_callback(wake)
    return result


__all__ = ["AsyncClient", "AsyncGraph"]
