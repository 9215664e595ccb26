"""The short report `make demo` prints: the seed's stage table, measured here."""

from __future__ import annotations

import json
import platform
from typing import Any

from .._version import __version__
from ..client import Client
from ._local import local_server
from ._stages import StageRow, measure

SIZES = (1 << 10, 1 << 20, 10 << 20)


def run_quick(transports: list[str], sizes: tuple[int, ...] = SIZES,
              repeats: int = 20) -> list[StageRow]:
    rows = []
    with local_server(transports) as urls:
        for transport, url in urls.items():
            with Client(url, transport="zmq") as client:
                rows += [measure(client, transport, n, repeats) for n in sizes]
    return rows


def render(rows: list[StageRow]) -> str:
    lines = [
        f"# tensorwire {__version__}: round trip of `identity` on float32 arrays",
        f"machine: {platform.machine()}, {platform.python_implementation()} "
        f"{platform.python_version()}; medians of measured round trips",
        "",
        "| transport | size | serialize ms | send ms | receive ms | deserialize ms "
        "| total ms | MB/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.transport} | {_size(r.nbytes)} | {r.serialize_ms:.3f} | {r.send_ms:.3f} "
            f"| {r.receive_ms:.3f} | {r.deserialize_ms:.3f} | {r.total_ms:.3f} "
            f"| {r.mb_per_s:.0f} |"
        )
    lines += [
        "",
        "serialize = client + server encode; receive = time on the wire both ways plus "
        "server queueing; deserialize = both decodes. MB/s counts bytes sent both ways.",
    ]
    return "\n".join(lines)


def to_json(rows: list[StageRow]) -> dict[str, Any]:
    return {"version": __version__, "rows": [r.as_dict() for r in rows]}


def write_json(rows: list[StageRow], path: str) -> None:
    with open(path, "w") as f:
        json.dump(to_json(rows), f, indent=2)


def _size(nbytes: int) -> str:
    for unit, scale in (("MB", 1 << 20), ("KB", 1 << 10)):
        if nbytes >= scale:
            return f"{nbytes / scale:g} {unit}"
    return f"{nbytes} B"
