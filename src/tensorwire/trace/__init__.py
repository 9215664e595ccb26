"""The per-request stage record both sides fill in.

The server reports its own stages in the reply meta (seconds, in SERVER_STAGES
order); the client adds its stages and derives the time spent on the wire as
the remainder of the round trip. No clock alignment is needed for this split:
every stage is a difference of timestamps taken on one side.

A server on a GPU appends a fifth element to its stage list: a map of DEVICE_STAGES
(seconds, measured with CUDA events on the device) and "h2d", how inputs reached the device
("pinned", "pageable" or "mixed"). These break "compute" down further; they are not added
to the total, and a server without them sends the four stages alone.
"""

from __future__ import annotations

from typing import Any

CLIENT_STAGES = ("client_serialize", "send", "receive", "client_deserialize")
SERVER_STAGES = ("server_queue", "server_deserialize", "compute", "server_serialize")
STAGES = (
    "client_serialize", "send", "server_queue", "server_deserialize",
    "compute", "server_serialize", "receive", "client_deserialize",
)  # fmt: skip

DEVICE_STAGES = ("host_to_device", "device_compute", "device_to_host")  # parts of "compute"
H2D_PATHS = ("pinned", "pageable", "mixed")

__all__ = [
    "CLIENT_STAGES", "DEVICE_STAGES", "SERVER_STAGES", "STAGES", "build_trace", "server_stages",
]  # fmt: skip


def server_stages(
    queue: float, deserialize: float, compute: float, serialize: float
) -> list[float]:
    """The server's part of the trace, as it travels in the reply meta."""
    return [queue, deserialize, compute, serialize]


def build_trace(
    *,
    serialize: float,
    send: float,
    wait: float,
    deserialize: float,
    server: Any,
    request_paths: list[str],
    reply_paths: list[str],
    carrier: str = "zmq",
    graph_mode: str | None = None,
) -> dict[str, Any]:
    """Assemble the trace dict exposed as `Client.last_trace`.

    `carrier` names how the messages themselves travelled ("zmq", or "pipe" for the
    same-host fast path). `wait` is the client's time from the end of send to the reply in hand;
    `receive` is what remains of it once the server's own stages are removed.
    """
    stages = dict(zip(SERVER_STAGES, _server_values(server), strict=True))
    server_total = sum(stages.values())
    trace: dict[str, Any] = {
        "client_serialize": serialize,
        "send": send,
        **stages,
        "receive": max(wait - server_total, 0.0),
        "client_deserialize": deserialize,
    }
    trace["total"] = serialize + send + wait + deserialize
    trace["paths"] = {"request": request_paths, "reply": reply_paths, "message": carrier}
    device = _device_values(server)
    if device:
        h2d = device.pop("h2d", None)
        trace.update(device)
        if h2d is not None:
            trace["paths"]["h2d"] = h2d
    if graph_mode is not None:
        trace["graph_mode"] = graph_mode
    return trace


def _server_values(server: Any) -> list[float]:
    if isinstance(server, list) and len(server) in (len(SERVER_STAGES), len(SERVER_STAGES) + 1):
        return [_seconds(v) for v in server[: len(SERVER_STAGES)]]
    return [0.0] * len(SERVER_STAGES)


def _seconds(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else 0.0


def _device_values(server: Any) -> dict[str, Any]:
    """The optional fifth element: known device stages and the h2d path, nothing else."""
    if not (isinstance(server, list) and len(server) == len(SERVER_STAGES) + 1):
        return {}
    extra = server[-1]
    if not isinstance(extra, dict):
        return {}
    out: dict[str, Any] = {k: max(_seconds(extra[k]), 0.0) for k in DEVICE_STAGES if k in extra}
    if extra.get("h2d") in H2D_PATHS:
        out["h2d"] = extra["h2d"]
    return out
