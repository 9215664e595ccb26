"""Raw latency/throughput sweeps in the spirit of pyzmq's perf tools: one op, many round trips."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from ..client import Client
from ._local import local_server
from ._stages import percentile

BENCH_TRANSPORTS = ("ipc", "tcp", "shm")


def sweep(client: Client, op: str, sizes: list[int], count: int) -> list[dict[str, Any]]:
    """For each size: `count` round trips of `op` on a float32 array; latency percentiles."""
    return [_one_size(client, op, nbytes, count) for nbytes in sizes]


def _one_size(client: Client, op: str, nbytes: int, count: int) -> dict[str, Any]:
    x = np.random.default_rng(0).standard_normal(max(nbytes // 4, 1)).astype(np.float32)
    for _ in range(min(count, 10)):
        client.call(op, x)  # warm-up
    lat = []
    start = time.perf_counter()
    for _ in range(count):
        t0 = time.perf_counter()
        client.call(op, x)
        lat.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - start
    median = statistics.median(lat)
    return {
        "nbytes": x.nbytes,
        "count": count,
        "median_us": median * 1e6,
        "p10_us": percentile(lat, 10) * 1e6,
        "p90_us": percentile(lat, 90) * 1e6,
        "mb_per_s": 2 * x.nbytes * count / elapsed / 1e6,  # both directions
        "calls_per_s": count / elapsed,
        "paths": client.last_trace.get("paths", {}),
    }


@contextmanager
def bench_client(transport: str, connect: str | None, backend: str) -> Iterator[Client]:
    """A client for the transport: to `connect`, or to a fresh local server."""
    if transport not in BENCH_TRANSPORTS:
        raise ValueError(f"transport {transport!r}: known are {', '.join(BENCH_TRANSPORTS)}")
    kwargs: dict[str, Any] = (
        {"transport": "auto", "require": "shm", "shm_size": 256 << 20}
        if transport == "shm"
        else {"transport": "zmq"}
    )
    if connect:
        with Client(connect, **kwargs) as client:
            yield client
        return
    scheme = "tcp" if transport == "tcp" else "ipc"
    with (
        local_server([scheme], "--backend", backend) as urls,
        Client(urls[scheme], **kwargs) as client,
    ):
        yield client
