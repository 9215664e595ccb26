"""The seed workload (x: 2560x1024 float32 = 10 MB; linear 1024->1024 with bias; gelu) and
its latency budget, summed over the traces of the calls of one request sequence."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._stages import Traced, percentile, timed_samples

DESCRIPTION = (
    "x: 2560x1024 float32 (10 MB); y = gelu(linear(x, w[1024x1024], b[1024])); "
    "two calls (linear, then gelu on its result), weights sent with every request"
)
# Budget parts, in the order of the tree; each a sum of trace stages over the calls.
PARTS = {
    "serialize": ("client_serialize", "server_serialize"),
    "transport": ("send", "receive"),
    "deserialize": ("server_deserialize", "client_deserialize"),
    "queue": ("server_queue",),
    "host_to_device": ("host_to_device",),
    "compute": ("compute",),
    "device_to_host": ("device_to_host",),
}
DEVICE_PARTS = ("host_to_device", "device_to_host")  # only when the server reports them


def seed_inputs(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2560, 1024), dtype=np.float32)
    w = (rng.standard_normal((1024, 1024), dtype=np.float32) / 32).astype(np.float32)
    b = rng.standard_normal(1024, dtype=np.float32)
    return x, w, b


def run_once(client: Traced, inputs: tuple[np.ndarray, ...]) -> tuple[float, list[dict[str, Any]]]:
    """One request sequence: (wall seconds, the trace of each call)."""
    x, w, b = inputs
    start = time.perf_counter()
    y = client.call("linear", x, w, b)
    first = dict(client.last_trace)
    client.call("gelu", y)
    wall = time.perf_counter() - start
    return wall, [first, dict(client.last_trace)]


@dataclass
class ResidentSeed:
    """A client whose seed weights already live on the server."""

    client: Any
    weights: tuple[Any, Any]


def run_fused(
    seed: ResidentSeed, inputs: tuple[np.ndarray, ...]
) -> tuple[float, list[dict[str, Any]]]:
    """One fused request: weights resident on the server, linear+gelu as one graph."""
    x, _, _ = inputs
    w, b = seed.weights
    start = time.perf_counter()
    with seed.client.graph() as g:
        g.run(g.gelu(g.linear(x, w, b)))
    return time.perf_counter() - start, [dict(seed.client.last_trace)]


def measure_workload(
    client: Traced, repeats: int, max_seconds: float, warmup: bool = True, run: Any = run_once
) -> dict[str, Any]:
    """Medians of the seed workload on `client`, with the budget of its median run."""
    inputs = seed_inputs()
    if warmup:
        run(client, inputs)
    samples = timed_samples(lambda: run(client, inputs), repeats, max_seconds)
    walls = [wall for wall, _ in samples]
    median = statistics.median_low(walls)
    wall, traces = samples[walls.index(median)]
    return {
        "total_ms": statistics.median(walls) * 1e3,
        "p10_ms": percentile(walls, 10) * 1e3,
        "p90_ms": percentile(walls, 90) * 1e3,
        "samples": len(samples),
        "budget": budget(wall, traces),
        "paths": [t.get("paths", {}) for t in traces],
    }


def budget(wall: float, traces: list[dict[str, Any]]) -> dict[str, Any]:
    """Milliseconds per budget part over the calls of one run; 'other' is the wall time left
    (client code between calls, result wrapping). Device parts are None unless reported."""
    parts: dict[str, float | None] = {}
    for name, stages in PARTS.items():
        if name in DEVICE_PARTS and not any(s in t for t in traces for s in stages):
            parts[name] = None
            continue
        parts[name] = 1e3 * sum(float(t.get(s, 0.0)) for t in traces for s in stages)
    known = sum(v for v in parts.values() if v is not None)
    parts["other"] = max(wall * 1e3 - known, 0.0)
    return {"total_ms": wall * 1e3, "calls": len(traces), "parts": parts}
