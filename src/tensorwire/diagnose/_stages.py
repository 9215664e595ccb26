"""Measure the seed's stage table (serialize, send, receive, deserialize) from real traces."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..client import Client

# The seed's four stages, each the sum of our finer trace stages (both directions).
SEED_STAGES = {
    "serialize": ("client_serialize", "server_serialize"),
    "send": ("send",),
    "receive": ("receive", "server_queue"),
    "deserialize": ("server_deserialize", "client_deserialize"),
}


@dataclass
class StageRow:
    transport: str
    nbytes: int
    serialize_ms: float
    send_ms: float
    receive_ms: float
    deserialize_ms: float
    total_ms: float
    mb_per_s: float
    paths: dict[str, list[str]]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure(client: Client, transport: str, nbytes: int, repeats: int) -> StageRow:
    """Round trips of `identity` on a float32 array of nbytes; medians of each stage."""
    x = np.random.default_rng(0).standard_normal(max(nbytes // 4, 1)).astype(np.float32)
    client.call("identity", x)  # warm-up: connection, allocator, caches
    totals, stages = [], {name: [] for name in SEED_STAGES}
    for _ in range(repeats):
        start = time.perf_counter()
        client.call("identity", x)
        totals.append(time.perf_counter() - start)
        trace = client.last_trace
        for name, parts in SEED_STAGES.items():
            stages[name].append(sum(trace[p] for p in parts))
    total = statistics.median(totals)
    ms = {name: statistics.median(v) * 1e3 for name, v in stages.items()}
    return StageRow(
        transport=transport,
        nbytes=x.nbytes,
        serialize_ms=ms["serialize"],
        send_ms=ms["send"],
        receive_ms=ms["receive"],
        deserialize_ms=ms["deserialize"],
        total_ms=total * 1e3,
        mb_per_s=2 * x.nbytes / total / 1e6,  # bytes moved both ways per round trip
        paths=client.last_trace["paths"],
    )
