"""The seed's stage table (serialize, send, receive, deserialize), measured from real traces.

Works with any client that has `call(op, *args)` and a `last_trace` dict in the format of
`tensorwire.Client.last_trace` (the seed-style `SeedClient` has one too).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

# The seed's four stages, each the sum of our finer trace stages (both directions).
SEED_STAGES = {
    "serialize": ("client_serialize", "server_serialize"),
    "send": ("send",),
    "receive": ("receive", "server_queue"),
    "deserialize": ("server_deserialize", "client_deserialize"),
}


class Traced(Protocol):
    last_trace: Any

    def call(self, op: str, /, *args: Any) -> Any: ...


@dataclass
class StageRow:
    transport: str
    nbytes: int
    serialize_ms: float
    send_ms: float
    receive_ms: float
    deserialize_ms: float
    total_ms: float
    p10_ms: float
    p90_ms: float
    mb_per_s: float
    samples: int
    paths: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def timed_samples(once: Any, repeats: int, max_seconds: float) -> list[Any]:
    """Results of `once()` called `repeats` times, or fewer once `max_seconds` have passed
    (never fewer than one)."""
    results: list[Any] = []
    deadline = time.perf_counter() + max_seconds
    while len(results) < repeats and (not results or time.perf_counter() < deadline):
        results.append(once())
    return results


def measure(
    client: Traced,
    transport: str,
    nbytes: int,
    repeats: int,
    max_seconds: float = 2.0,
    warmup: bool = True,
) -> StageRow:
    """Round trips of `identity` on a float32 array of nbytes; medians of each stage."""
    x = np.random.default_rng(0).standard_normal(max(nbytes // 4, 1)).astype(np.float32)
    if warmup:
        client.call("identity", x)  # connection, allocator, caches

    def once() -> tuple[float, dict[str, Any]]:
        start = time.perf_counter()
        client.call("identity", x)
        return time.perf_counter() - start, client.last_trace

    samples = timed_samples(once, repeats, max_seconds)
    return _row(transport, x.nbytes, samples)


def _row(transport: str, nbytes: int, samples: list[tuple[float, dict[str, Any]]]) -> StageRow:
    totals = [t for t, _ in samples]
    ms = {
        name: 1e3 * statistics.median(sum(tr[p] for p in parts) for _, tr in samples)
        for name, parts in SEED_STAGES.items()
    }
    total = statistics.median(totals)
    return StageRow(
        transport=transport,
        nbytes=nbytes,
        serialize_ms=ms["serialize"],
        send_ms=ms["send"],
        receive_ms=ms["receive"],
        deserialize_ms=ms["deserialize"],
        total_ms=total * 1e3,
        p10_ms=percentile(totals, 10) * 1e3,
        p90_ms=percentile(totals, 90) * 1e3,
        mb_per_s=2 * nbytes / total / 1e6,  # bytes moved both ways per round trip
        samples=len(samples),
        paths=dict(samples[-1][1].get("paths", {})),
    )


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile, linear between order statistics (numpy's default)."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))
