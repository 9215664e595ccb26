"""`tensorwire top URL`: a live view of a running server (clients, requests/s, latencies).

It asks the server's `stats` request every interval. Rates are differences of
successive snapshots over the server's own uptime, so no clocks need to agree;
`--once` has a single snapshot and shows averages since the server started.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from ..errors import TensorwireError

Table = tuple[str, list[str], list[list[str]]]  # title, headers, rows; no title: plain lines


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("top", help="a live view of a running server")
    p.add_argument("url", metavar="URL", help="the server, as clients reach it")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between updates")
    p.add_argument("--once", action="store_true", help="print one plain snapshot and exit")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for a reply")
    p.add_argument("--auth-dir", metavar="DIR", help="CurveZMQ keys for tcp (see `keys`)")
    p.add_argument("--key-name", default="client", help="the client key's name in DIR")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import tensorwire as tw

    if not args.interval > 0:
        print("tensorwire: error: --interval must be positive", file=sys.stderr)
        return 2
    try:
        client = tw.Client(
            args.url,
            transport="zmq",
            timeout=args.timeout,
            auth_dir=args.auth_dir,
            key_name=args.key_name,
        )
    except (TensorwireError, TimeoutError, OSError, ValueError) as exc:
        print(f"tensorwire: error: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 2
    with client:
        try:
            if args.once:
                print(plain(view(fetch(client), None)))
                return 0
            return _live(client, args.interval)
        except (TensorwireError, TimeoutError) as exc:
            print(f"tensorwire: error: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 0


def fetch(client: Any) -> dict[str, Any]:
    state: dict[str, Any] = client._request("stats", "", (), {})
    return state


def _live(client: Any, interval: float) -> int:
    try:
        from rich.live import Live
    except ImportError:  # rich is in the `bench` extra: plain snapshots instead
        return _scroll(client, interval)
    previous = fetch(client)
    with Live(_rich(view(previous, None)), auto_refresh=False) as live:
        while True:
            time.sleep(interval)
            state = fetch(client)
            live.update(_rich(view(state, previous)), refresh=True)
            previous = state


def _scroll(client: Any, interval: float) -> int:
    previous = None
    while True:
        state = fetch(client)
        print(plain(view(state, previous)) + "\n", flush=True)
        previous = state
        time.sleep(interval)


# -- what is shown -------------------------------------------------------------------------


def view(state: dict[str, Any], previous: dict[str, Any] | None) -> list[Table]:
    """The summary line and tables; rates over the last interval, else since start."""
    dt = state["uptime"] - previous["uptime"] if previous else state["uptime"]
    before = previous or {"requests": {}, "per_client": {}, "bytes_in": 0, "bytes_out": 0}
    rate = _rate(sum(state["requests"].values()), sum(before["requests"].values()), dt)
    info = state["info"]
    summary = (
        f"tensorwire {info['version']} | {info['backend']} on {info['device']} | "
        f"up {_duration(state['uptime'])} | {len(state['sessions'])} sessions | "
        f"{rate:.1f} req/s{'' if previous else ' (average)'} | "
        f"in {_bytes(_rate(state['bytes_in'], before['bytes_in'], dt))}/s | "
        f"out {_bytes(_rate(state['bytes_out'], before['bytes_out'], dt))}/s | "
        f"errors {sum(state['errors'].values())}"
    )
    if state.get("launched_behind"):  # a pipelined server (serve --pipeline-depth N)
        summary += f" | {state['launched_behind']} launched behind others"
    return [("", [summary], []), _clients(state, before, dt), _stages(state, previous)]


def _clients(state: dict[str, Any], before: dict[str, Any], dt: float) -> Table:
    rows = []
    for s in sorted(state["sessions"], key=lambda s: -s["requests"]):
        name = s["client"] + (" (this top)" if s["client"] == state.get("you") else "")
        where = "shm" if s["shm"] else "local" if s["local"] else "remote"
        rate = _rate(s["requests"], before["per_client"].get(s["client"], 0), dt)
        rows.append(
            [
                name,
                str(s["pid"] or "-"),
                where,
                str(s["requests"]),
                f"{rate:.1f}",
                _bytes(s["resident_bytes"]),
                str(s["handles"]),
                _duration(s["idle_s"]),
            ]
        )
    headers = ["client", "pid", "where", "requests", "req/s", "resident", "tensors", "idle"]
    return "clients", headers, rows


def _stages(state: dict[str, Any], previous: dict[str, Any] | None) -> Table:
    """Latencies over the last interval (live), or since the server started (--once)."""
    from ..server._exposition import quantile

    rows = []
    for name, h in state["stages"].items():
        old = previous["stages"][name] if previous else {"buckets": [0] * len(h["buckets"])}
        counts = [now - then for now, then in zip(h["buckets"], old["buckets"], strict=True)]
        n, total = sum(counts), h["sum"] - old.get("sum", 0.0)
        p50, p99 = (quantile(counts, q, state["buckets"]) for q in (0.5, 0.99))
        mean = total / n if n else None
        rows.append([name, str(n), _seconds(p50), _seconds(p99), _seconds(mean)])
    span = "last interval" if previous else "since start"
    title = f"server stages, {span} (p50/p99 estimated from histogram buckets)"
    return title, ["stage", "requests", "p50", "p99", "mean"], rows


def _rate(now: float, before: float, dt: float) -> float:
    return max(now - before, 0) / dt if dt > 0 else 0.0


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1e-3:
        return f"{value * 1e6:.0f} us"
    return f"{value * 1e3:.2f} ms" if value < 1 else f"{value:.2f} s"


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


# -- how it is drawn -----------------------------------------------------------------------


def plain(tables: list[Table]) -> str:
    """Aligned columns, no colour: for --once, pipes and logs."""
    out = []
    for title, headers, rows in tables:
        if not title:
            out.extend(headers)  # the summary line
            continue
        widths = [max(len(c) for c in col) for col in zip(headers, *rows, strict=True)]
        out.append(f"\n{title}")
        for row in [headers, *rows]:
            out.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(out)


def _rich(tables: list[Table]) -> Any:
    from rich.console import Group
    from rich.table import Table as RichTable
    from rich.text import Text

    parts: list[Any] = []
    for title, headers, rows in tables:
        if not title:
            parts.extend(Text(line) for line in headers)  # no number highlighting
            continue
        table = RichTable(title=title, title_justify="left")
        for i, header in enumerate(headers):
            table.add_column(header, justify="left" if i == 0 else "right", no_wrap=True)
        for row in rows:
            table.add_row(*row)
        parts.append(table)
    return Group(*parts)
