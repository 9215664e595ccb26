"""Reproduce the seed diagnosis and compare tensorwire with it, all measured in the same run.

For each transport (ipc, tcp) and size of float32 array, the round trip client -> server ->
client of: the seed's msgpack-of-tolist() path, the seed plan's msgpack-of-tobytes() path, a
bare ZeroMQ multipart echo (header + raw frame, copy=False: the limit for a frame path), and
tensorwire's `identity` op (transport="zmq": ZeroMQ frames; and the default transport="auto",
which uses shared memory on one host, given an arena big enough for 100 MB). Seed paths
talk to benchmarks/_echo_server.py (bytes only); tensorwire to a real `tensorwire serve`.

    python benchmarks/seed_baseline.py [--quick] [--sizes 1KB,10MB] [--transports ipc] [--json F]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h  # noqa: E402
import _seed_paths as sp  # noqa: E402
import _seed_report as report  # noqa: E402

ECHO = str(Path(__file__).resolve().parent / "_echo_server.py")
ECHO_READY = r"echo: listening on (\S+)"
DEFAULT_SIZES = "1KB,64KB,1MB,10MB,100MB"


def plan_reps(nbytes: int, quick: bool, scale: float) -> tuple[int, int]:
    """(repetitions per path, repetitions for the slow tolist path) for one size."""
    table = [  # (max bytes, full reps, full tolist reps, quick reps, quick tolist reps)
        (64 << 10, 400, 200, 40, 20),
        (1 << 20, 100, 20, 10, 3),
        (10 << 20, 20, 5, 5, 2),
        (1 << 62, 5, 2, 2, 1),
    ]
    for limit, full, full_tl, q, q_tl in table:
        if nbytes <= limit:
            reps, tl = (q, q_tl) if quick else (full, full_tl)
            return max(1, round(reps * scale)), max(1, round(tl * scale))
    raise AssertionError("unreachable")


MIN_ARENA = 256 << 20  # bytes per direction for the default (auto) client: room for 100 MB


def arena_bytes(sizes: list[int]) -> int:
    """Arena (per direction) for the auto client and the server's --shm-max-arena: every size
    measured here fits, so 100 MB also goes through shared memory."""
    return max(MIN_ARENA, 2 * max(sizes, default=0))


@contextlib.contextmanager
def servers(transport: str, tw_ok: bool, arena: int) -> Iterator[dict[str, str]]:
    """Plain echo, stamping echo and (when available) a tensorwire server, all on `transport`."""
    with h.temp_dir() as tmp, contextlib.ExitStack() as stack:
        urls: dict[str, str] = {}
        py = sys.executable
        _, urls["echo"] = stack.enter_context(
            h.child_server([py, ECHO, "--listen", h.endpoint(transport, tmp, "echo")], ECHO_READY)
        )
        _, urls["stamp"] = stack.enter_context(
            h.child_server(
                [py, ECHO, "--stamp", "--listen", h.endpoint(transport, tmp, "stamp")], ECHO_READY
            )
        )
        if tw_ok:
            argv = h.tensorwire_serve_argv(
                h.endpoint(transport, tmp, "tw"), ["--shm-max-arena", str(arena)]
            )
            _, urls["tw"] = stack.enter_context(h.child_server(argv, h.TW_READY, timeout=60))
        yield urls


@contextlib.contextmanager
def tw_clients(url: str | None, arena: int) -> Iterator[dict[str, Any]]:
    """transport="zmq" (frames) and the default transport="auto" (shared memory on one host,
    with an arena big enough for every size measured)."""
    if url is None:
        yield {}
        return
    import tensorwire as tw

    with tw.Client(url, transport="zmq") as cz, tw.Client(url, shm_size=arena) as ca:
        yield {"tw_zmq": cz, "tw_auto": ca}


def auto_is_zmq(clients: dict[str, Any]) -> bool:
    """True when the auto client got no shared memory (tcp, or refused): then it is the zmq
    path again and gets no row of its own."""
    ca = clients.get("tw_auto")
    return ca is not None and getattr(ca, "path", "zmq") != "shm"


def check_echo(name: str, out: Any, arr: np.ndarray) -> None:
    if not np.array_equal(np.asarray(out), arr):
        raise AssertionError(f"{name}: the round trip changed the array")


def bench_size(
    socks: dict[str, zmq.Socket[Any]], clients: dict[str, Any], nbytes: int, args: Any
) -> dict[str, Any]:
    arr = np.random.default_rng(0).random(nbytes // 4, dtype=np.float32)  # reused by every path
    reps, tl_reps = plan_reps(nbytes, args.quick, args.reps_scale)
    fns = {p: sp.round_trip_fn(p, socks["echo"], arr) for p in sp.SEED_PATHS}
    res: dict[str, Any] = {"bytes": nbytes, "reps": reps, "tolist_reps": tl_reps, "notes": []}
    tw_paths: dict[str, list[str]] = {}
    for name, client in clients.items():
        check_echo(name, client.call("identity", arr), arr)
        tw_paths[name] = sp.trace_paths(client.last_trace)
        fns[name] = (lambda c: lambda: c.call("identity", arr))(client)
    if "tw_auto" in fns and auto_is_zmq(clients):
        del fns["tw_auto"]
        why = getattr(clients["tw_auto"], "shm_reason", "") or "no shared memory"
        res["notes"].append(f"transport=auto took {tw_paths['tw_auto']} ({why}): no row")
    for p in sp.SEED_PATHS:
        check_echo(p, fns[p](), arr)
    counts = {n: (tl_reps if n == "tolist" else reps) for n in fns}
    warm = 0 if nbytes > (10 << 20) else 1
    block = 10 if nbytes <= (64 << 10) else 1  # small messages: steady-state blocks
    res["block"] = block
    res["round_trip"] = h.measure_interleaved(fns, counts, warmup=warm, block=block)
    res["stages"] = stage_pass(socks["stamp"], clients, fns, arr, counts)
    res["tw_paths"] = tw_paths
    return res


def stage_pass(
    stamp_sock: zmq.Socket[Any],
    clients: dict[str, Any],
    fns: dict[str, Any],
    arr: np.ndarray,
    counts: dict[str, int],
) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for p in sp.SEED_PATHS:
        n = min(counts[p], 10)
        out[p] = h.median_dicts([sp.stages(p, stamp_sock, arr) for _ in range(n)])
    for name, client in clients.items():
        if name not in fns:
            continue
        traces = []
        for _ in range(min(counts[name], 10)):
            ns, _ = h.time_call(lambda c=client: c.call("identity", arr))
            st = sp.trace_stages(client.last_trace)
            st["call_wall"] = ns / 1e9  # the same call timed around Client.call
            traces.append(st)
        out[name] = h.median_dicts(traces)
    return out


def limits(
    socks: dict[str, zmq.Socket[Any]], clients: dict[str, Any], args: Any
) -> dict[str, h.Stats]:
    """Small-message group, interleaved: 1-byte and 1 KB single-frame ping-pong (the limits),
    the 1 KB multipart echo and tensorwire's 1 KB identity."""
    reps = 200 if args.quick else 2000
    small = np.random.default_rng(1).random(256, dtype=np.float32)  # 1 KB
    fns = {
        "pingpong_1B": sp.pingpong_fn(socks["echo"], b"x"),
        "pingpong_1KB": sp.pingpong_fn(socks["echo"], small.tobytes()),
        "multipart_1KB": sp.round_trip_fn("multipart", socks["echo"], small),
    }
    for name, client in clients.items():
        check_echo(name, client.call("identity", small), small)
        if name == "tw_auto" and auto_is_zmq(clients):
            continue
        fns[f"{name}_1KB"] = (lambda c: lambda: c.call("identity", small))(client)
    return h.measure_interleaved(fns, {k: reps for k in fns}, warmup=50, block=10)


def run_transport(transport: str, sizes: list[int], tw_ok: bool, args: Any) -> dict[str, Any]:
    arena = arena_bytes(sizes)
    out: dict[str, Any] = {"sizes": {}, "arena_bytes": arena}
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        with servers(transport, tw_ok, arena) as urls:
            out["urls"] = urls
            socks = {k: sp.dealer(ctx, urls[k]) for k in ("echo", "stamp")}
            try:
                with tw_clients(urls.get("tw"), arena) as clients:
                    ca = clients.get("tw_auto")
                    out["auto_path"] = getattr(ca, "path", None) if ca else None
                    out["auto_reason"] = getattr(ca, "shm_reason", "") if ca else ""
                    out["limits"] = limits(socks, clients, args)
                    for nbytes in sizes:
                        label = h.size_label(nbytes)
                        print(f"  {transport} {label} ...", file=sys.stderr, flush=True)
                        out["sizes"][label] = bench_size(socks, clients, nbytes, args)
            finally:
                for s in socks.values():
                    s.close(0)
    finally:
        ctx.term()
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", help=f"comma list of float32 array sizes (default {DEFAULT_SIZES})")
    ap.add_argument("--transports", default="ipc,tcp", help="comma list of ipc,tcp")
    ap.add_argument("--quick", action="store_true", help="few repetitions, no 100 MB")
    ap.add_argument("--reps-scale", type=float, default=1.0, help="multiply repetition counts")
    ap.add_argument("--no-tensorwire", action="store_true", help="skip the tensorwire rows")
    ap.add_argument("--json", metavar="FILE", help="write raw medians, ratios, targets here")
    args = ap.parse_args(argv)
    default = "1KB,64KB,1MB,10MB" if args.quick else DEFAULT_SIZES
    args.size_list = [h.parse_size(s) for s in (args.sizes or default).split(",") if s.strip()]
    args.transport_list = [t.strip() for t in args.transports.split(",") if t.strip()]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    machine = h.machine_info()
    tw_ok, reason = (False, "--no-tensorwire") if args.no_tensorwire else h.tensorwire_status()
    if not tw_ok:
        print(f"tensorwire rows skipped: {reason}", file=sys.stderr)
    results = {t: run_transport(t, args.size_list, tw_ok, args) for t in args.transport_list}
    summary = report.build(results)
    h.print_machine(machine)
    report.print_all(results, summary, tw_ok, reason)
    if args.json:
        h.write_json(
            args.json,
            {
                "machine": machine,
                "config": {
                    "sizes": [h.size_label(s) for s in args.size_list],
                    "transports": args.transport_list,
                    "quick": args.quick,
                    "reps_scale": args.reps_scale,
                    "dtype": "float32",
                },
                "tensorwire": {"available": tw_ok, "reason": reason},
                "results": results,
                "ratios": summary["ratios"],
                "targets": summary["targets"],
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
