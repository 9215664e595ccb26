"""The per-request stage record both sides fill in.

The server reports its own stages in the reply meta (seconds, in SERVER_STAGES
order); the client adds its stages and derives the time spent on the wire as
the remainder of the round trip. No clock alignment is needed for this split:
every stage is a difference of timestamps taken on one side.
"""

from __future__ import annotations

from typing import Any

CLIENT_STAGES = ("client_serialize", "send", "receive", "client_deserialize")
SERVER_STAGES = ("server_queue", "server_deserialize", "compute", "server_serialize")
STAGES = (
    "client_serialize", "send", "server_queue", "server_deserialize",
    "compute", "server_serialize", "receive", "client_deserialize",
)  # fmt: skip

__all__ = ["CLIENT_STAGES", "SERVER_STAGES", "STAGES", "build_trace", "server_stages"]


def server_stages(queue: float, deserialize: float, compute: float, serialize: float) -> list[float]:
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
    if graph_mode is not None:
        trace["graph_mode"] = graph_mode
    return trace


def _server_values(server: Any) -> list[float]:
    if isinstance(server, list) and len(server) == len(SERVER_STAGES):
        return [float(v) if isinstance(v, (int, float)) else 0.0 for v in server]
    return [0.0] * len(SERVER_STAGES)
