"""The seed's optimisation ladder, measured step by step on the seed workload.

Each step is measured in this run or shown as "not available" with the reason; the seed's
predicted latency is carried beside it, labelled as the seed's prediction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

from ..client import Client
from ._seed_client import SeedClient
from ._workload import ResidentSeed, measure_workload, run_fused, run_once, seed_inputs

Tick = Callable[[str], None]


@dataclass(frozen=True)
class Step:
    key: str
    title: str
    how: str
    predicted_ms: float | None  # the seed's prediction for its own setup


STEPS = (
    Step("seed", "seed baseline", "msgpack of tolist() over ZeroMQ ipc, seed-style server", 332),
    Step(
        "seed_binary",
        "binary buffers (the seed's snippet)",
        "msgpack of tobytes() over ZeroMQ ipc, seed-style server",
        250,
    ),
    Step("frames", "binary frames", "tensorwire, transport='zmq': header + raw frames", 250),
    Step("bf16", "+ bf16 wire", "tensorwire, transport='zmq', wire_dtype='bfloat16'", 180),
    Step("shm", "+ shared memory", "tensorwire, transport='auto': same-host shm arena", 50),
    Step(
        "resident",
        "+ resident weights and fusion",
        "weights kept on the server (put) and linear+gelu fused into one call",
        10,
    ),
    Step("cuda_ipc", "+ pinned memory / CUDA IPC", "GPU-direct transfer from pinned buffers", None),
)


def step_count() -> int:
    return len(STEPS)


def measure_ladder(
    tw_url: str, seed_url: str, repeats: int, max_seconds: float, tick: Tick
) -> list[dict[str, Any]]:
    """Every step of the ladder: measured where it exists, else with the reason it does not."""
    rows = []
    for step in STEPS:
        tick(f"ladder: {step.title}")
        opener, reason = _opener(step, tw_url, seed_url)
        row: dict[str, Any] = {
            "key": step.key,
            "step": step.title,
            "how": step.how,
            "predicted_ms": step.predicted_ms,
            "status": "not available",
            "reason": reason,
            "measured": None,
        }
        if opener is not None:
            run = run_fused if step.key == "resident" else run_once
            with opener() as client:
                row["measured"] = measure_workload(client, repeats, max_seconds, run=run)
            row.update(status="measured", reason="")
        rows.append(row)
    _speedups(rows)
    return rows


Opener = Callable[[], AbstractContextManager[Any]]


def _opener(step: Step, tw_url: str, seed_url: str) -> tuple[Opener | None, str]:
    """How to open a client for the step, or None and why the step is not available."""
    if step.key in ("seed", "seed_binary"):
        encoding = "tolist" if step.key == "seed" else "binary"
        return (lambda: SeedClient(seed_url, encoding)), ""
    if step.key == "frames":
        return (lambda: Client(tw_url, transport="zmq")), ""
    if step.key == "shm":
        return _shm_opener(tw_url)
    if step.key == "bf16":
        return _bf16_opener(tw_url)
    if step.key == "resident":
        return _resident_opener(tw_url)
    return None, _cuda_reason()


def _shm_opener(url: str) -> tuple[Opener | None, str]:
    if not url.startswith("ipc://"):
        return None, "shared memory needs a same-host ipc:// server"
    return (lambda: Client(url, transport="auto", require="shm", shm_size=128 << 20)), ""


def _resident_opener(url: str) -> tuple[Opener | None, str]:
    shm, reason = _shm_opener(url)
    if shm is None:
        return None, reason

    @contextmanager
    def open_resident() -> Iterator[ResidentSeed]:
        with Client(url, transport="auto", require="shm", shm_size=128 << 20) as client:
            _, w, b = seed_inputs()
            yield ResidentSeed(client, (client.put(w, cache=True), client.put(b, cache=True)))

    return open_resident, ""


def _bf16_opener(url: str) -> tuple[Opener | None, str]:
    try:
        Client(url, transport="zmq", wire_dtype="bfloat16", timeout=5).close()
    except ValueError as exc:
        return None, f"tw.Client rejects wire_dtype='bfloat16' ({exc})"
    return (lambda: Client(url, transport="zmq", wire_dtype="bfloat16")), ""


def _cuda_reason() -> str:
    try:
        import torch
    except ImportError:
        return "no GPU visible (torch not installed)"
    if not torch.cuda.is_available():
        return "no CUDA GPU on this machine"
    return "measured by benchmarks/gpu_check.py, not by this report"


def _speedups(rows: list[dict[str, Any]]) -> None:
    base = rows[0]["measured"]
    for row in rows:
        m = row["measured"]
        row["speedup"] = base["total_ms"] / m["total_ms"] if m and base else None
