"""`tensorwire bench`: raw round-trip latency and throughput of one op (like pyzmq's perf)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "bench",
        help="raw latency/throughput sweep of one op",
        description="Round trips of one op on float32 arrays: median, p10, "
        "p90 latency and MB/s (bytes sent both ways).",
    )
    p.add_argument("--size", default="1MB", help="array size, or a comma-separated sweep")
    p.add_argument("--count", type=int, default=200, help="round trips per size")
    p.add_argument("--transport", default="ipc", choices=["ipc", "tcp", "shm"])
    p.add_argument("--op", default="identity", help="a one-argument op (identity, relu, ...)")
    p.add_argument("--connect", metavar="URL", help="a running server (default: a local one)")
    p.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "numpy", "torch"],
        help="backend of the local server",
    )
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..diagnose import parse_sizes
    from ..diagnose._bench import bench_client, sweep

    try:
        sizes = parse_sizes(args.size)
        if args.count < 1:
            raise ValueError(f"--count must be at least 1, got {args.count}")
    except ValueError as exc:
        print(f"tensorwire bench: error: {exc}", file=sys.stderr)
        return 2
    with bench_client(args.transport, args.connect, args.backend) as client:
        rows = sweep(client, args.op, sizes, args.count)
    print(_table(args, rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"transport": args.transport, "op": args.op, "rows": rows}, f, indent=2)
    return 0


def _table(args: argparse.Namespace, rows: list[dict[str, Any]]) -> str:
    from ..diagnose import format_size

    lines = [
        f"tensorwire bench: op {args.op!r}, transport {args.transport}, "
        "float32 arrays; latency per round trip, MB/s counts bytes sent both ways",
        f"{'size':>8} {'count':>6} {'median µs':>11} {'p10 µs':>10} {'p90 µs':>10} "
        f"{'MB/s':>9} {'calls/s':>9}  paths",
    ]
    for r in rows:
        lines.append(
            f"{format_size(r['nbytes']):>8} {r['count']:>6} {r['median_us']:>11.1f} "
            f"{r['p10_us']:>10.1f} {r['p90_us']:>10.1f} {r['mb_per_s']:>9.0f} "
            f"{r['calls_per_s']:>9.0f}  {_paths(r['paths'])}"
        )
    return "\n".join(lines)


def _paths(paths: dict[str, Any]) -> str:
    """{"request": ["shm"], "reply": ["frame"]} as "request shm, reply frame"."""
    return ", ".join(
        f"{k} {'+'.join(map(str, v)) if isinstance(v, list) else v}" for k, v in paths.items()
    )
