"""Server metrics: what happened to each request, kept as counters and histograms.

The core calls `observe` once per reply; exposition (Prometheus text, `tensorwire
top`) reads `snapshot`. Everything here is in-process and cheap: no locks on the
hot path beyond the GIL, no allocation per request beyond a few dict lookups.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from ..trace import SERVER_STAGES

# Histogram bucket upper bounds in seconds (Prometheus style, cumulative at exposition).
BUCKETS = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0)


@dataclass
class Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    total: float = 0.0
    n: int = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(BUCKETS, seconds)] += 1  # the first bound >= seconds, or +Inf
        self.total += seconds
        self.n += 1


@dataclass
class Observation:
    """One answered request, as the core saw it."""

    kind: str
    op: str
    client: str  # the session id (or "-" before a session exists)
    ok: bool
    error: str  # the error type name, "" when ok
    stages: list[float]  # SERVER_STAGES order
    bytes_in: int
    bytes_out: int
    rid: int | None = None


class Metrics:
    def __init__(self) -> None:
        self.started = time.time()
        self.requests: dict[tuple[str, str], int] = defaultdict(int)  # (kind, op)
        self.errors: dict[str, int] = defaultdict(int)  # error type
        self.bytes_in = 0
        self.bytes_out = 0
        self.stages = {name: Histogram() for name in SERVER_STAGES}
        self._hists = list(self.stages.values())  # SERVER_STAGES order, as observations are
        self.per_client: dict[str, int] = defaultdict(int)
        self.launched_behind = 0  # requests launched while others still ran (pipelined)

    def observe(self, obs: Observation) -> None:
        self.requests[(obs.kind, obs.op)] += 1
        if not obs.ok:
            self.errors[obs.error] += 1
        self.bytes_in += obs.bytes_in
        self.bytes_out += obs.bytes_out
        for hist, seconds in zip(self._hists, obs.stages, strict=False):
            hist.observe(seconds)
        self.per_client[obs.client] += 1

    def forget_client(self, client: str) -> None:
        self.per_client.pop(client, None)

    def snapshot(self) -> dict[str, Any]:
        """Plain data; safe from another thread: each dict is copied (one C call, atomic
        under the GIL) before anything iterates over it."""
        requests = dict(self.requests)
        return {
            "uptime": time.time() - self.started,
            "requests": {f"{k}:{op}" if op else k: n for (k, op), n in requests.items()},
            "errors": dict(self.errors),
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "stages": {
                name: {"count": h.n, "sum": h.total, "buckets": list(h.counts)}
                for name, h in self.stages.items()
            },
            "per_client": dict(self.per_client),
            "launched_behind": self.launched_behind,
        }
