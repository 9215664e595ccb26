"""What a running server reports about itself: one plain view, and its Prometheus text.

`server_state` reads the metrics and the open sessions into JSON-able data: the
`stats` request returns it (`tensorwire top`), and `render` writes it in the
Prometheus text format 0.0.4 for `tensorwire serve --metrics-port`.

Reading from another thread: the core thread changes metrics and sessions without
a lock. Every dict is copied in one C-level call (`dict(d)`, `list(d.values())`),
which the GIL makes atomic, before anything iterates over it, and scalars are read
once. A scrape may see a request's counter before its histogram samples, never a
dict that changed while it was read. (A free-threaded build would need a lock in
`Metrics`.)

Clients are named by `short_id`, a hash of the session id: the session id is a
bearer secret and never leaves the server.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Sequence
from typing import Any

from ._metrics import BUCKETS, Metrics
from ._sessions import Session, Sessions

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
QUANTILES = {"p50": 0.5, "p99": 0.99}


def short_id(sid: str) -> str:
    """8 hex digits naming a session; reveals nothing of the id ("-": no session)."""
    if sid == "-":
        return sid
    return hashlib.blake2s(sid.encode(), digest_size=4).hexdigest()


def server_state(
    metrics: Metrics,
    sessions: Sessions,
    info: dict[str, Any] | None = None,
    asking: Session | None = None,
) -> dict[str, Any]:
    """Counters, stage histograms with p50/p99, and one row per open session.

    `asking` is the session of whoever asked (`stats`), named in "you".
    """
    state = metrics.snapshot()
    per_client: dict[str, int] = {}
    for sid, n in state.pop("per_client").items():
        per_client[short_id(sid)] = per_client.get(short_id(sid), 0) + n
    state["per_client"] = per_client
    state["sessions"] = [_session_row(s, per_client) for s in sessions.live()]
    state["buckets"] = list(BUCKETS)
    for hist in state["stages"].values():
        hist.update({name: quantile(hist["buckets"], q) for name, q in QUANTILES.items()})
    state["info"] = {k: (info or {}).get(k, "") for k in ("version", "backend", "device")}
    state["you"] = short_id(asking.sid) if asking is not None else None
    return state


def _session_row(session: Session, per_client: dict[str, int]) -> dict[str, Any]:
    client = short_id(session.sid)
    return {
        "client": client,
        "pid": session.pid,
        "local": session.local,
        "shm": session.channel is not None,
        "resident_bytes": session.store.nbytes,
        "handles": len(session.store),
        "requests": per_client.get(client, 0),
        "idle_s": max(time.monotonic() - session.last_seen, 0.0),
    }


def quantile(counts: list[int], q: float, bounds: Sequence[float] = BUCKETS) -> float | None:
    """The q-quantile of a histogram (per-bucket counts, +Inf last), interpolated
    linearly inside its bucket as Prometheus' histogram_quantile does; None if empty."""
    rank, seen, lower = q * sum(counts), 0, 0.0
    if rank == 0:
        return None
    for bound, count in zip(bounds, counts, strict=False):
        if count and seen + count >= rank:
            return lower + (bound - lower) * (rank - seen) / count
        seen, lower = seen + count, bound
    return bounds[-1]  # in the +Inf bucket: the highest finite bound, as Prometheus says


# -- Prometheus text format ---------------------------------------------------------------

Sample = tuple[str, dict[str, str], float]  # name suffix, labels, value


def render(state: dict[str, Any]) -> str:
    """The Prometheus text exposition of a `server_state`."""
    out: list[str] = []
    requests = [
        ("", {"kind": kind, "op": op}, n)
        for key, n in sorted(state["requests"].items())
        for kind, _, op in [key.partition(":")]  # kinds never contain ':'
    ]
    _family(out, "requests_total", "counter", "Requests answered, by kind and op.", requests)
    errors = [("", {"type": t}, n) for t, n in sorted(state["errors"].items())]
    _family(out, "errors_total", "counter", "Requests answered with an error, by type.", errors)
    traffic = [
        ("", {"direction": "in"}, state["bytes_in"]),
        ("", {"direction": "out"}, state["bytes_out"]),
    ]
    _family(out, "bytes_total", "counter", "Message bytes received and sent.", traffic)
    stages = [s for name, h in state["stages"].items() for s in _histogram(name, h)]
    _family(out, "stage_seconds", "histogram", "Seconds per server stage of a request.", stages)
    clients = [("", {"client": c}, n) for c, n in sorted(state["per_client"].items())]
    _family(
        out,
        "client_requests_total",
        "counter",
        "Requests answered, by client (a hash of its session id).",
        clients,
    )
    rows = state["sessions"]
    resident = [("", {"client": r["client"]}, r["resident_bytes"]) for r in rows]
    _family(out, "resident_bytes", "gauge", "Bytes of tensors kept on the server.", resident)
    handles = [("", {"client": r["client"]}, r["handles"]) for r in rows]
    _family(out, "resident_tensors", "gauge", "Tensors kept on the server.", handles)
    _family(out, "sessions", "gauge", "Open client sessions.", [("", {}, len(rows))])
    _family(
        out,
        "launched_behind_total",
        "counter",
        "Requests launched while others still ran (serve --pipeline-depth above 1).",
        [("", {}, state.get("launched_behind", 0))],
    )
    _family(
        out,
        "uptime_seconds",
        "gauge",
        "Seconds since the server started.",
        [("", {}, state["uptime"])],
    )
    _family(out, "info", "gauge", "Server version, backend and device.", [("", state["info"], 1)])
    return "".join(out)


def _histogram(stage: str, hist: dict[str, Any]) -> list[Sample]:
    samples: list[Sample] = []
    cumulative = 0
    for bound, count in zip([*BUCKETS, math.inf], hist["buckets"], strict=True):
        cumulative += count
        samples.append(("_bucket", {"stage": stage, "le": _number(bound)}, cumulative))
    samples.append(("_sum", {"stage": stage}, hist["sum"]))
    samples.append(("_count", {"stage": stage}, cumulative))  # equal to +Inf, always
    return samples


def _family(out: list[str], name: str, kind: str, help_: str, samples: list[Sample]) -> None:
    name = f"tensorwire_{name}"
    out.append(f"# HELP {name} {_escape_help(help_)}\n# TYPE {name} {kind}\n")
    for suffix, labels, value in samples:
        out.append(f"{name}{suffix}{_labels(labels)} {_number(value)}\n")


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape_label(str(v))}"' for k, v in labels.items()) + "}"


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, bool | int):
        return str(int(value))
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))
