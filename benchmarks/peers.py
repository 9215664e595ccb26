"""Compare tensorwire with peer systems on the same host, measured side by side in one run.

A float32 array (10 MB and 1 KB by default) makes a round trip client -> echo -> client through:
a bare ZeroMQ multipart echo over ipc (the frame-path limit), tensorwire's `identity` op
(transport="zmq" and "auto") against a real `tensorwire serve`, torch.distributed.rpc
(TensorPipe, `rpc_sync` of an echo function in a second process), Ray (actor call; put+get)
and a gRPC bytes echo. Peers that are not importable are skipped with the reason; they are
benchmark extras only. All are set up at once and timed round robin, so noise hits all alike.

    python benchmarks/peers.py [--quick] [--sizes 1KB,10MB] [--only tw_zmq,torch_rpc] [--json F]
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h  # noqa: E402
import _peer_workers as pw  # noqa: E402
import _seed_paths as sp  # noqa: E402

HERE = Path(__file__).resolve().parent
ECHO = str(HERE / "_echo_server.py")
WORKERS = str(HERE / "_peer_workers.py")

Call = Callable[[np.ndarray], Any]

LABELS = {
    "multipart": "bare zmq multipart echo (ipc, copy=False)",
    "tw_zmq": "tensorwire identity, ipc, transport=zmq",
    "tw_auto": "tensorwire identity, ipc, transport=auto",
    "torch_rpc": "torch.distributed.rpc (TensorPipe) rpc_sync",
    "ray_actor": "Ray actor call",
    "ray_putget": "Ray put + get",
    "grpc": "gRPC bytes echo (tcp 127.0.0.1)",
}


class Skip(Exception):
    """A peer that cannot run here; the message says why."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- set-ups: each enters what it starts into `stack` and returns {name: call(arr)} -------------


def setup_multipart(stack: contextlib.ExitStack, tmp: str, arena: int) -> dict[str, Call]:
    argv = [sys.executable, ECHO, "--listen", h.endpoint("ipc", tmp, "echo")]
    _, url = stack.enter_context(h.child_server(argv, r"echo: listening on (\S+)"))
    ctx: zmq.Context[Any] = zmq.Context()
    stack.callback(ctx.term)
    sock = sp.dealer(ctx, url)
    stack.callback(sock.close, 0)
    return {"multipart": lambda arr: sp.round_trip("multipart", sock, arr)}


def setup_tensorwire(stack: contextlib.ExitStack, tmp: str, arena: int) -> dict[str, Call]:
    ok, reason = h.tensorwire_status()
    if not ok:
        raise Skip(reason)
    import tensorwire as tw

    argv = h.tensorwire_serve_argv(h.endpoint("ipc", tmp, "tw"), ["--shm-max-arena", str(arena)])
    _, url = stack.enter_context(h.child_server(argv, h.TW_READY, timeout=60))
    cz = stack.enter_context(tw.Client(url, transport="zmq"))
    ca = stack.enter_context(tw.Client(url, shm_size=arena))  # the default: shared memory
    return {
        "tw_zmq": lambda arr: cz.call("identity", arr),
        "tw_auto": lambda arr: ca.call("identity", arr),
        "_tw_auto_client": ca,  # type: ignore[dict-item]  # for the path it reports
    }


def setup_torch_rpc(stack: contextlib.ExitStack, tmp: str, arena: int) -> dict[str, Call]:
    try:
        import torch
        import torch.distributed.rpc as rpc
    except ImportError as exc:
        raise Skip(f"torch not importable: {exc}") from exc
    if not rpc.is_available():
        raise Skip("torch.distributed.rpc is not available in this torch build")
    port = free_port()
    argv = [sys.executable, WORKERS, "torch-rpc", "--port", str(port)]
    stack.enter_context(h.child_server(argv, r"torch-rpc: (joining)", timeout=60))
    rpc.init_rpc("client", rank=0, world_size=2, rpc_backend_options=pw.rpc_options(port))
    stack.callback(rpc.shutdown)

    def call(arr: np.ndarray) -> Any:
        return rpc.rpc_sync("server", pw.echo, args=(torch.from_numpy(arr),)).numpy()

    return {"torch_rpc": call}


def setup_ray(stack: contextlib.ExitStack, tmp: str, arena: int) -> dict[str, Call]:
    try:
        import ray
    except ImportError as exc:
        raise Skip(f"ray not importable ({exc.msg}); pip install ray to include it") from exc
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    stack.callback(ray.shutdown)

    @ray.remote
    class Echo:
        def echo(self, x: Any) -> Any:
            return x

    actor = Echo.remote()  # type: ignore[attr-defined]
    ray.get(actor.echo.remote(0))
    return {
        "ray_actor": lambda arr: ray.get(actor.echo.remote(arr)),
        "ray_putget": lambda arr: ray.get(ray.put(arr)),
    }


def setup_grpc(stack: contextlib.ExitStack, tmp: str, arena: int) -> dict[str, Call]:
    try:
        import grpc
    except ImportError as exc:
        raise Skip(f"grpc not importable ({exc.msg}); pip install grpcio to include it") from exc
    argv = [sys.executable, WORKERS, "grpc"]
    _, addr = stack.enter_context(h.child_server(argv, r"grpc: listening on (\S+)", timeout=60))
    channel = grpc.insecure_channel(addr, options=pw.GRPC_OPTIONS)
    stack.callback(channel.close)
    stub = channel.unary_unary(pw.GRPC_METHOD)

    def call(arr: np.ndarray) -> Any:
        return np.frombuffer(stub(arr.tobytes(), timeout=60), dtype=arr.dtype)

    return {"grpc": call}


SETUPS = (  # (set-up, the rows it provides)
    (setup_multipart, {"multipart"}),
    (setup_tensorwire, {"tw_zmq", "tw_auto"}),
    (setup_torch_rpc, {"torch_rpc"}),
    (setup_ray, {"ray_actor", "ray_putget"}),
    (setup_grpc, {"grpc"}),
)


def start_all(
    stack: contextlib.ExitStack, tmp: str, only: set[str] | None, arena: int
) -> tuple[dict[str, Call], dict[str, str], Any]:
    calls: dict[str, Call] = {}
    skipped: dict[str, str] = {}
    for setup, rows in SETUPS:
        if only and not rows & only:
            continue
        inner = contextlib.ExitStack()
        try:
            got = setup(inner, tmp, arena)
        except Skip as exc:
            skipped[setup.__name__.removeprefix("setup_")] = str(exc)
            inner.close()
            continue
        except Exception as exc:  # noqa: BLE001 - a peer that fails to start is reported, not fatal
            skipped[setup.__name__.removeprefix("setup_")] = f"failed to start: {exc!r}"
            inner.close()
            continue
        stack.push(inner.__exit__)
        calls.update(got)
    auto_client = calls.pop("_tw_auto_client", None)
    if only:
        calls = {k: v for k, v in calls.items() if k in only}
    return calls, skipped, auto_client


# --- measuring ------------------------------------------------------------------------------


def plan_reps(nbytes: int, quick: bool, scale: float) -> int:
    if nbytes <= 64 << 10:
        reps = 50 if quick else 1000
    elif nbytes <= 1 << 20:
        reps = 20 if quick else 200
    else:
        reps = 5 if quick else 30
    return max(1, round(reps * scale))


def bench_size(calls: dict[str, Call], auto_client: Any, nbytes: int, args: Any) -> dict[str, Any]:
    arr = np.random.default_rng(0).random(nbytes // 4, dtype=np.float32)
    for name, call in calls.items():
        if not np.array_equal(np.asarray(call(arr)), arr):
            raise AssertionError(f"{name}: the round trip changed the array")
    paths = sp.trace_paths(auto_client.last_trace) if auto_client is not None else None
    reps = plan_reps(nbytes, args.quick, args.reps_scale)
    fns = {name: (lambda c: lambda: c(arr))(call) for name, call in calls.items()}
    block = 10 if nbytes <= (64 << 10) else 1  # small messages: steady-state blocks
    stats = h.measure_interleaved(fns, {n: reps for n in fns}, warmup=3, block=block)
    ratios = {
        name: {
            "vs_tw_zmq": h.ratio(s.median, stats["tw_zmq"].median) if "tw_zmq" in stats else None,
            "vs_multipart": (
                h.ratio(s.median, stats["multipart"].median) if "multipart" in stats else None
            ),
        }
        for name, s in stats.items()
    }
    return {
        "bytes": nbytes,
        "reps": reps,
        "round_trip": stats,
        "ratios": ratios,
        "tw_auto_paths": paths,
        "block": block,
    }


def print_size(label: str, res: dict[str, Any]) -> None:
    rows = []
    for name, s in res["round_trip"].items():
        lab = LABELS.get(name, name)
        if name == "tw_auto" and res["tw_auto_paths"] is not None:
            lab += f" [{','.join(res['tw_auto_paths']) or 'path not reported'}]"
        r = res["ratios"][name]
        rows.append(
            [
                lab,
                h.fmt_time(s.median),
                f"{h.fmt_time(s.p10)} – {h.fmt_time(s.p90)}",
                s.n,
                h.fmt_ratio(r["vs_tw_zmq"]),
                h.fmt_ratio(r["vs_multipart"]),
            ]
        )
    h.print_table(
        f"{label} float32 round trip, same host (medians of this run, interleaved)",
        ["path", "median", "p10 – p90", "n", "÷ tensorwire zmq", "÷ bare multipart"],
        rows,
        [
            "÷ X = this path's median / X's median in this run (above 1: slower than X).",
            f"Round robin in turns of {res['block']} timed calls, each after one untimed call."
            if res["block"] > 1
            else "Round robin, one timed call per path per round.",
        ],
    )


# --- the issue-3 target ----------------------------------------------------------------------

TARGET_SIZE = "10 MB"
TARGET_SPEEDUP = 3.0


def build_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """tensorwire (auto = shared memory; zmq frames for reference) vs TensorPipe at 10 MB:
    speedup = torch_rpc median / tensorwire median, wanted >= 3."""
    res = results.get(TARGET_SIZE)
    out = []
    for row in ("tw_auto", "tw_zmq"):
        entry: dict[str, Any] = {
            "name": f"{TARGET_SIZE}: tensorwire vs torch.distributed.rpc (TensorPipe), speedup",
            "row": row,
            "op": ">=",
            "target": TARGET_SPEEDUP,
            "value": None,
        }
        rt = res["round_trip"] if res else {}
        if res is None:
            entry["why"] = f"{TARGET_SIZE} not measured (--sizes)"
        elif "torch_rpc" not in rt or row not in rt:
            entry["why"] = f"{'torch_rpc' if 'torch_rpc' not in rt else row} not measured"
        else:
            entry["value"] = h.ratio(rt["torch_rpc"].median, rt[row].median)
            entry["torch_rpc"] = rt["torch_rpc"].median
            entry["tensorwire"] = rt[row].median
        v = entry["value"]
        entry["status"] = "SKIP" if v is None else ("PASS" if v >= TARGET_SPEEDUP else "FAIL")
        if row != "tw_auto" and v is not None:
            entry["status"] = "info"  # the target is for the default client (auto)
        out.append(entry)
    return out


def print_targets(targets: list[dict[str, Any]]) -> None:
    rows = [
        [
            t["name"],
            LABELS[t["row"]],
            h.fmt_time(t.get("tensorwire")),
            h.fmt_time(t.get("torch_rpc")),
            h.fmt_ratio(t["value"]),
            f"{t['op']} {t['target']}×",
            t["status"],
        ]
        for t in targets
    ]
    h.print_table(
        "Target (issue 3): >= 3× faster than torch.distributed.rpc (TensorPipe), same run",
        ["target", "tensorwire row", "tensorwire", "TensorPipe", "speedup", "wanted", "status"],
        rows,
        [f"{t['row']}: SKIP, {t['why']}" for t in targets if t.get("why")]
        + [
            "speedup = TensorPipe median / tensorwire median. The target is for the default"
            " client (auto = shared memory); the zmq row is for reference only (info).",
        ],
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1KB,10MB", help="comma list of float32 array sizes")
    ap.add_argument("--quick", action="store_true", help="few repetitions")
    ap.add_argument("--reps-scale", type=float, default=1.0, help="multiply repetition counts")
    ap.add_argument("--only", help="comma list of rows to keep (e.g. multipart,torch_rpc)")
    ap.add_argument("--json", metavar="FILE", help="write raw medians and ratios here")
    args = ap.parse_args(argv)
    args.size_list = [h.parse_size(s) for s in args.sizes.split(",") if s.strip()]
    args.only_set = {s.strip() for s in args.only.split(",")} if args.only else None
    args.arena = max(64 << 20, 2 * max(args.size_list, default=0))  # every size fits in shm
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    machine = h.machine_info()
    results: dict[str, Any] = {}
    with h.temp_dir() as tmp, contextlib.ExitStack() as stack:
        calls, skipped, auto_client = start_all(stack, tmp, args.only_set, args.arena)
        for nbytes in args.size_list:
            print(f"  {h.size_label(nbytes)} ...", file=sys.stderr, flush=True)
            results[h.size_label(nbytes)] = bench_size(calls, auto_client, nbytes, args)
    h.print_machine(machine)
    for label, res in results.items():
        print_size(label, res)
    for name, why in skipped.items():
        print(f"  skipped {name}: {why}")
    targets = build_targets(results)
    print_targets(targets)
    if args.json:
        h.write_json(
            args.json,
            {
                "machine": machine,
                "config": {
                    "sizes": [h.size_label(s) for s in args.size_list],
                    "quick": args.quick,
                    "reps_scale": args.reps_scale,
                    "dtype": "float32",
                    "arena_bytes": args.arena,
                },
                "skipped": skipped,
                "results": results,
                "targets": targets,
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
