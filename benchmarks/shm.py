"""Same-host shared-memory channel: tensorwire against the floor and the frame path, one run.

Every figure is a median of this run and every ratio divides by a baseline measured in the same
run, interleaved round robin with it. Rows (float32 arrays, ipc, `identity` unless noted):

- floor: `np.copyto` of the array into a preallocated, pre-faulted buffer, a 1-byte ZeroMQ ipc
  round trip to a bare echo child process, `np.copyto` out into another such buffer: what a
  copy-in, copy-out round trip through shared memory cannot beat.
- tensorwire transport="auto" (shared memory) with a plain numpy array: the request is copied
  into the arena; the result is taken as the arena view (default) or copied out (copy=True).
- an array from `gpu.empty` (filled once) sent without a copy; `identity` returns an alias of
  the argument (no output written at all), so `neg` (a new output of the same size) is shown
  too. These divide by the same client's 1 KB round trip.
- the same calls with transport="zmq" (ZeroMQ frames) and a bare ZeroMQ multipart echo.
- 1 KB: transport="auto" against transport="zmq", and bare 1-byte / 1 KB ping-pongs.

    python benchmarks/shm.py [--quick] [--size 10MB] [--large 100MB] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h  # noqa: E402
import _seed_paths as sp  # noqa: E402

ECHO = str(Path(__file__).resolve().parent / "_echo_server.py")
ECHO_READY = r"echo: listening on (\S+)"
MIN_ARENA = 256 << 20  # bytes per direction, enough for 100 MB
SMALL = 1 << 10  # 1 KB

LABELS = {
    "floor": "floor: copyto in + 1 B zmq ipc round trip + copyto out",
    "copy_2x": "2 × np.copyto alone (no round trip)",
    "tw_auto": "tensorwire auto (shm), numpy in, result = arena view",
    "tw_auto_copy": "tensorwire auto (shm), numpy in, copy=True result",
    "tw_zmq": "tensorwire transport=zmq (frames)",
    "multipart": "bare zmq multipart echo, copy=False",
    "empty_identity": "tensorwire auto, gpu.empty arg, identity, view",
    "empty_neg": "tensorwire auto, gpu.empty arg, neg (new output), view",
    "pingpong_1B": "bare zmq ipc ping-pong, 1 byte",
    "pingpong_1KB": "bare zmq ipc ping-pong, 1 KB",
    "tw_auto_1KB": "tensorwire auto, 1 KB identity",
    "tw_zmq_1KB": "tensorwire transport=zmq, 1 KB identity",
}

# Baselines each row of a group is divided by (in addition to the targets below).
BIG_BASELINES = ("floor", "tw_zmq", "multipart")
SMALL_BASELINES = ("tw_auto_1KB", "tw_zmq_1KB", "pingpong_1B")


# ---------------------------------------------------------------------------------------------
# set-up


@contextlib.contextmanager
def servers(arena: int) -> Iterator[dict[str, str]]:
    """A bare echo and a tensorwire server (numpy backend), both on ipc."""
    with h.temp_dir() as tmp, contextlib.ExitStack() as stack:
        urls: dict[str, str] = {}
        argv = [sys.executable, ECHO, "--listen", h.endpoint("ipc", tmp, "echo")]
        _, urls["echo"] = stack.enter_context(h.child_server(argv, ECHO_READY))
        tw_argv = h.tensorwire_serve_argv(
            h.endpoint("ipc", tmp, "tw"), ["--backend", "numpy", "--shm-max-arena", str(arena)]
        )
        _, urls["tw"] = stack.enter_context(h.child_server(tw_argv, h.TW_READY, timeout=60))
        yield urls


@contextlib.contextmanager
def clients(url: str, arena: int) -> Iterator[dict[str, Any]]:
    import tensorwire as tw

    with contextlib.ExitStack() as stack:
        out = {
            "auto": stack.enter_context(tw.Client(url, transport="auto", shm_size=arena)),
            "auto_copy": stack.enter_context(
                tw.Client(url, transport="auto", shm_size=arena, copy=True)
            ),
            "zmq": stack.enter_context(tw.Client(url, transport="zmq")),
        }
        yield out


def prefaulted(like: np.ndarray) -> np.ndarray:
    buf = np.empty_like(like)
    buf.fill(1.0)  # touch every page now, not inside the timed calls
    return buf


def floor_fns(sock: zmq.Socket[Any], arr: np.ndarray) -> dict[str, Callable[[], object]]:
    buf_in, buf_out = prefaulted(arr), prefaulted(arr)
    ping = sp.pingpong_fn(sock, b"x")

    def floor() -> object:
        np.copyto(buf_in, arr)
        ping()
        np.copyto(buf_out, buf_in)
        return buf_out

    def copy_2x() -> object:
        np.copyto(buf_in, arr)
        np.copyto(buf_out, buf_in)
        return buf_out

    return {"floor": floor, "copy_2x": copy_2x}


def checked(name: str, client: Any, op: str, arg: np.ndarray, want: np.ndarray) -> list[str]:
    """One call, checked against `want`; returns the paths its trace reports."""
    out = client.call(op, arg)
    if not np.array_equal(np.asarray(out), want):
        raise AssertionError(f"{name}: {op} returned a wrong array")
    del out
    return sp.trace_paths(client.last_trace)


def call_fn(client: Any, op: str, arg: np.ndarray) -> Callable[[], object]:
    def once() -> object:
        return client.call(op, arg)  # the result is dropped at once: its block is released

    return once


# ---------------------------------------------------------------------------------------------
# measuring


def bench_big(sock: zmq.Socket[Any], cl: dict[str, Any], nbytes: int, reps: int) -> dict[str, Any]:
    """Copy-in paths at one size, interleaved one call per path per round."""
    arr = np.random.default_rng(0).random(nbytes // 4, dtype=np.float32)
    fns = floor_fns(sock, arr)
    paths = {}
    for name, key in (("tw_auto", "auto"), ("tw_auto_copy", "auto_copy"), ("tw_zmq", "zmq")):
        paths[name] = checked(name, cl[key], "identity", arr, arr)
        fns[name] = call_fn(cl[key], "identity", arr)
    fns["multipart"] = sp.round_trip_fn("multipart", sock, arr)
    if not np.array_equal(sp.round_trip("multipart", sock, arr), arr):
        raise AssertionError("multipart: the echo changed the array")
    stats = h.measure_interleaved(fns, {n: reps for n in fns}, warmup=2, block=1)
    return {"bytes": nbytes, "reps": reps, "block": 1, "round_trip": stats, "paths": paths}


def bench_small(
    sock: zmq.Socket[Any], cl: dict[str, Any], nbytes: int, reps: int, arena_reps: int
) -> dict[str, Any]:
    """Latency-bound calls, in steady-state blocks: 1 KB paths and zero-copy arena arrays."""
    small = np.random.default_rng(1).random(SMALL // 4, dtype=np.float32)
    arr = np.random.default_rng(2).random(nbytes // 4, dtype=np.float32)
    shared = cl["auto"].empty(arr.shape, arr.dtype)
    shared[...] = arr  # filled once
    fns: dict[str, Callable[[], object]] = {
        "pingpong_1B": sp.pingpong_fn(sock, b"x"),
        "pingpong_1KB": sp.pingpong_fn(sock, small.tobytes()),
    }
    paths = {
        "tw_auto_1KB": checked("tw_auto_1KB", cl["auto"], "identity", small, small),
        "tw_zmq_1KB": checked("tw_zmq_1KB", cl["zmq"], "identity", small, small),
        "empty_identity": checked("empty_identity", cl["auto"], "identity", shared, arr),
        "empty_neg": checked("empty_neg", cl["auto"], "neg", shared, -arr),
    }
    fns["tw_auto_1KB"] = call_fn(cl["auto"], "identity", small)
    fns["tw_zmq_1KB"] = call_fn(cl["zmq"], "identity", small)
    fns["empty_identity"] = call_fn(cl["auto"], "identity", shared)
    fns["empty_neg"] = call_fn(cl["auto"], "neg", shared)
    counts = {n: (arena_reps if n.startswith("empty") else reps) for n in fns}
    stats = h.measure_interleaved(fns, counts, warmup=20, block=10)
    if not np.array_equal(shared, arr):
        raise AssertionError("the gpu.empty argument changed under the caller")
    return {
        "bytes": nbytes,
        "small_bytes": SMALL,
        "reps": counts,
        "block": 10,
        "round_trip": stats,
        "paths": paths,
        "shared_is_arena": bool(cl["auto"].path == "shm"),
    }


# ---------------------------------------------------------------------------------------------
# ratios and targets


def _ratios(stats: dict[str, h.Stats], baselines: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    return {
        name: {f"vs_{b}": h.ratio(s.median, stats[b].median) for b in baselines if b in stats}
        for name, s in stats.items()
    }


def build_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    main, small = results["main"], results["small"]
    size = h.size_label(main["bytes"])
    rt, st = main["round_trip"], small["round_trip"]

    def t(name: str, num: h.Stats, den: h.Stats, den_name: str, thr: float) -> dict[str, Any]:
        value = h.ratio(num.median, den.median)
        status = "SKIP" if value is None else ("PASS" if value <= thr else "FAIL")
        return {
            "name": name,
            "value": value,
            "op": "<=",
            "target": thr,
            "numerator": num.median,
            "denominator": den.median,
            "baseline": den_name,
            "status": status,
        }

    return [
        t(f"{size} auto (shm), numpy in, view out / floor", rt["tw_auto"], rt["floor"],
          "floor", 1.3),
        t(f"{size} auto (shm), numpy in, copy=True out / floor", rt["tw_auto_copy"],
          rt["floor"], "floor", 1.3),
        t(f"{size} gpu.empty arg, identity (alias), view / 1 KB auto", st["empty_identity"],
          st["tw_auto_1KB"], "tw_auto_1KB", 2.0),
        t(f"{size} gpu.empty arg, neg (new output), view / 1 KB auto", st["empty_neg"],
          st["tw_auto_1KB"], "tw_auto_1KB", 2.0),
        t("1 KB auto / 1 KB transport=zmq, same call", st["tw_auto_1KB"], st["tw_zmq_1KB"],
          "tw_zmq_1KB", 0.7),
    ]  # fmt: skip


# ---------------------------------------------------------------------------------------------
# printing


def print_group(title: str, res: dict[str, Any], baselines: tuple[str, ...], note: str) -> None:
    rows = []
    for name, s in res["round_trip"].items():
        r = res["ratios"][name]
        rows.append(
            [
                LABELS[name],
                h.fmt_paths(res["paths"].get(name)),
                h.fmt_time(s.median),
                f"{h.fmt_time(s.p10)} – {h.fmt_time(s.p90)}",
                s.n,
                *(h.fmt_ratio(r.get(f"vs_{b}")) for b in baselines),
            ]
        )
    h.print_table(
        title,
        [
            "path",
            "trace: request → reply",
            "median",
            "p10 – p90",
            "n",
            *(f"÷ {b}" for b in baselines),
        ],
        rows,
        [
            "÷ X = this row's median / row X's median (same group, same run); below 1 is faster.",
            "trace: the path each tensor took, as Client.last_trace['paths'] reports it.",
            note,
        ],
    )


def print_targets(targets: list[dict[str, Any]]) -> None:
    rows = [
        [
            t["name"],
            h.fmt_time(t["numerator"]),
            f"{t['baseline']} {h.fmt_time(t['denominator'])}",
            h.fmt_ratio(t["value"]),
            f"{t['op']} {t['target']}×",
            t["status"],
        ]
        for t in targets
    ]
    h.print_table(
        "Targets (issue 3; ratios of medians measured in this run)",
        ["target", "median", "baseline (median)", "ratio", "wanted", "status"],
        rows,
    )


# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", help="main array size for the targets (default 10MB; quick 64KB)")
    ap.add_argument("--large", help="larger size, 0 to skip (default 100MB; quick 256KB)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, few repetitions (smoke)")
    ap.add_argument("--reps-scale", type=float, default=1.0, help="multiply repetition counts")
    ap.add_argument("--shm-size", help="arena bytes per direction (default max(256MB, 2×large))")
    ap.add_argument("--json", metavar="FILE", help="write medians, ratios and targets here")
    args = ap.parse_args(argv)
    args.size_b = h.parse_size(args.size or ("64KB" if args.quick else "10MB"))
    args.large_b = h.parse_size(args.large or ("256KB" if args.quick else "100MB"))
    biggest = max(args.size_b, args.large_b)
    default_arena = max(8 << 20, 4 * biggest) if args.quick else max(MIN_ARENA, 2 * biggest)
    args.arena = h.parse_size(args.shm_size) if args.shm_size else default_arena
    return args


def reps_for(nbytes: int, quick: bool, scale: float) -> int:
    reps = (5 if nbytes <= (10 << 20) else 3) if quick else (40 if nbytes <= (10 << 20) else 10)
    return max(1, round(reps * scale))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    machine = h.machine_info()
    ok, reason = h.tensorwire_status()
    if not ok:
        print(f"shm.py needs tensorwire: {reason}", file=sys.stderr)
        return 2
    sc = args.reps_scale
    small_reps = max(1, round((100 if args.quick else 2000) * sc))
    arena_reps = max(1, round((30 if args.quick else 300) * sc))
    results: dict[str, Any] = {}
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        with servers(args.arena) as urls, clients(urls["tw"], args.arena) as cl:
            sock = sp.dealer(ctx, urls["echo"])
            try:
                if cl["auto"].path != "shm":
                    print(f"warning: no shared memory: {cl['auto'].shm_reason}", file=sys.stderr)
                print("  small / arena group ...", file=sys.stderr, flush=True)
                results["small"] = bench_small(sock, cl, args.size_b, small_reps, arena_reps)
                for key, nbytes in (("main", args.size_b), ("large", args.large_b)):
                    if nbytes <= 0:
                        continue
                    print(f"  {h.size_label(nbytes)} ...", file=sys.stderr, flush=True)
                    results[key] = bench_big(sock, cl, nbytes, reps_for(nbytes, args.quick, sc))
                shm_path = cl["auto"].path
            finally:
                sock.close(0)
    finally:
        ctx.term()
    results["small"]["ratios"] = _ratios(results["small"]["round_trip"], SMALL_BASELINES)
    for key in ("main", "large"):
        if key in results:
            results[key]["ratios"] = _ratios(results[key]["round_trip"], BIG_BASELINES)
    targets = build_targets(results)

    h.print_machine(machine)
    print(f"arena: {h.size_label(args.arena)} per direction (client shm_size, server "
          f"--shm-max-arena); auto client path: {shm_path}")  # fmt: skip
    print_group(
        f"Latency-bound calls, ipc (gpu.empty array: {h.size_label(args.size_b)} float32)",
        results["small"],
        SMALL_BASELINES,
        "Round robin in turns of 10 timed calls, each turn after one untimed call.",
    )
    for key in ("main", "large"):
        if key in results:
            res = results[key]
            print_group(
                f"{h.size_label(res['bytes'])} float32 round trip, ipc, numpy array in",
                res,
                BIG_BASELINES,
                "Round robin, one timed call per path per round (2 untimed warm-up calls each).",
            )
    print_targets(targets)
    print(
        "  identity returns an alias of its arena argument: the gpu.empty identity row writes"
        " no output at all; the neg row writes a new output of the same size."
    )
    if args.json:
        h.write_json(
            args.json,
            {
                "machine": machine,
                "config": {
                    "size": h.size_label(args.size_b),
                    "large": h.size_label(args.large_b) if args.large_b else None,
                    "arena_bytes": args.arena,
                    "quick": args.quick,
                    "reps_scale": sc,
                    "dtype": "float32",
                    "backend": "numpy",
                    "auto_path": shm_path,
                },
                "results": results,
                "targets": targets,
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
