"""The per-call floor of a small call: tensorwire against a bare wake-up, in one run.

Rows, all measured interleaved round robin in the same run (units: µs per round trip):

- pipe pair: a 1-byte os.pipe ping-pong with a child process (the kernel's limit for a
  cross-process wake-up; every ratio divides by it) and tensorwire's FIFO Doorbell round trip.
  Both children are those of benchmarks/doorbell.py.
- tensorwire 1 KB: `identity` on a 1 KB float32 numpy array, default transport ("auto": a
  same-host ipc:// server, so the shared-memory channel with the message pipe).
- tensorwire 1 MB arena: the same call with a 1 MB array from `client.empty` (zero-copy).
- with --ipc-standin: a 1 MB torch tensor sent by CUDA IPC, its view coming back, where CPU
  memory in a shared file stands in for CUDA memory (benchmarks/_ipc_standin.py): tensorwire's
  own work on the CUDA IPC path, without a GPU. The stand-in server (torch backend on the
  CPU) then serves every tensorwire row: one server, as without the flag.

For the tensorwire rows, a second interleaved pass reads `client.last_trace` after each call
(not timed) and prints the per-stage medians. `--profile FILE` writes a cProfile of the
client's calls (pstats format) and prints its top entries.

    python benchmarks/call_floor.py [--reps 3000] [--quick] [--json FILE] [--profile FILE]
                                    [--ipc-standin]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import os
import pstats
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h  # noqa: E402
import _ipc_standin as standin  # noqa: E402
import doorbell as bell  # noqa: E402

SMALL = 1 << 10  # bytes
ARENA = 1 << 20  # bytes
FOREVER = 1 << 40  # rings a floor child echoes: it is stopped when the run ends
BASELINE = "pipe"
LABELS = {
    "pipe": "1 B os.pipe ping-pong (floor)",
    "doorbell": "1 B tensorwire Doorbell round trip",
    "tw_1KB": "tensorwire auto, 1 KB numpy identity",
    "tw_1MB_arena": "tensorwire auto, 1 MB client.empty identity",
    "tw_ipc_standin": "tensorwire auto, 1 MB CUDA IPC identity (CPU stand-in)",
}
TW_ROWS = ("tw_1KB", "tw_1MB_arena", "tw_ipc_standin")
STAGES = ("client_serialize", "send", "server_queue", "server_deserialize", "compute",
          "server_serialize", "receive", "client_deserialize", "total")  # fmt: skip


# ---------------------------------------------------------------------------------------------
# the floor: children of benchmarks/doorbell.py, echoing until stopped


def _stop_child(child: subprocess.Popen[bytes]) -> None:
    if child.poll() is None:
        child.terminate()
    child.wait(10)


@contextlib.contextmanager
def floor_fns(tmp: str) -> Iterator[dict[str, Callable[[], object]]]:
    from tensorwire.channel import Doorbell

    to_child, from_parent = os.pipe()
    to_parent, from_child = os.pipe()
    with contextlib.ExitStack() as stack:
        for fd in (to_child, from_parent, to_parent, from_child):
            stack.callback(os.close, fd)
        pipe_child = bell._spawn("pipe", f"{to_child},{from_child}", FOREVER,
                                 fds=(to_child, from_child))  # fmt: skip
        stack.callback(_stop_child, pipe_child)
        door = stack.enter_context(Doorbell.create(directory=tmp))
        door_child = bell._spawn("doorbell", os.path.join(tmp, door.name), FOREVER)
        stack.callback(_stop_child, door_child)

        def pipe() -> object:
            os.write(from_parent, b"\x01")
            return os.read(to_parent, 1)

        def doorbell() -> object:
            door.ring()
            return door.wait()

        yield {"pipe": pipe, "doorbell": doorbell}


# ---------------------------------------------------------------------------------------------
# tensorwire


@contextlib.contextmanager
def tw_client(tmp: str) -> Iterator[Any]:
    import tensorwire as tw

    argv = h.tensorwire_serve_argv(h.endpoint("ipc", tmp, "tw"), ["--backend", "numpy"])
    with h.child_server(argv, h.TW_READY, timeout=60) as (_, url), tw.Client(url) as client:
        yield client


@contextlib.contextmanager
def standin_client(tmp: str) -> Iterator[Any]:
    """A client of the CUDA IPC stand-in server (benchmarks/_ipc_standin.py), and the tensor
    it sends as CUDA memory."""
    import tensorwire as tw

    argv = [sys.executable, str(Path(standin.__file__)), h.endpoint("ipc", tmp, "standin"), tmp]
    t = standin.shared_tensor(tmp, ARENA)
    t.copy_(torch_arange(t.numel()))
    with h.child_server(argv, h.TW_READY, timeout=60) as (proc, url), tw.Client(url) as client:
        standin.install_client(proc.pid, client)
        yield client, t


def torch_arange(n: int) -> Any:
    import torch

    return torch.arange(n, dtype=torch.float32)


def standin_fns(client: Any, t: Any) -> tuple[dict[str, Callable[[], object]], dict[str, Any]]:
    back = client.call("identity", t)
    if back.data_ptr() != t.data_ptr() or not bool((back == t).all()):
        raise AssertionError("tw_ipc_standin: identity did not return a view of the argument")
    return {"tw_ipc_standin": lambda: client.call("identity", t)}, {
        "tw_ipc_standin": client.last_trace["paths"]}


def tw_fns(client: Any) -> tuple[dict[str, Callable[[], object]], dict[str, Any]]:
    small = np.random.default_rng(0).random(SMALL // 4, dtype=np.float32)
    shared = client.empty((ARENA // 4,), np.float32)
    shared[...] = np.random.default_rng(1).random(ARENA // 4, dtype=np.float32)
    want = {"tw_1KB": small.copy(), "tw_1MB_arena": shared.copy()}
    fns: dict[str, Callable[[], object]] = {
        "tw_1KB": lambda: client.call("identity", small),
        "tw_1MB_arena": lambda: client.call("identity", shared),
    }
    paths = {}
    for name, fn in fns.items():
        if not np.array_equal(fn(), want[name]):
            raise AssertionError(f"{name}: identity returned a wrong array")
        paths[name] = client.last_trace["paths"]
    return fns, paths


def stage_medians(client: Any, fns: dict[str, Callable[[], object]], reps: int) -> dict[str, Any]:
    """Per-stage medians (seconds) of `reps` calls per row, interleaved; traces read untimed."""
    traces: dict[str, list[dict[str, float]]] = {n: [] for n in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            fn()
            trace = client.last_trace
            traces[name].append({k: float(trace[k]) for k in STAGES if k in trace})
    return {n: h.median_dicts(t) for n, t in traces.items()}


def profile_calls(fns: dict[str, Callable[[], object]], reps: int, path: str) -> str:
    """cProfile of `reps` calls of each tensorwire row; stats to `path`, top entries as text."""
    prof = cProfile.Profile()
    for _ in range(reps):
        for name in TW_ROWS:
            if name in fns:
                prof.runcall(fns[name])
    prof.dump_stats(path)
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(25)
    return text.getvalue()


# ---------------------------------------------------------------------------------------------
# report


def print_rows(stats: dict[str, h.Stats], paths: dict[str, Any]) -> None:
    base = stats[BASELINE].median
    rows = [[LABELS[n], _carrier(paths.get(n)), f"{s.median * 1e6:.1f}",
             f"{s.p10 * 1e6:.1f} – {s.p90 * 1e6:.1f}", s.n, h.fmt_ratio(s.median / base)]
            for n, s in stats.items()]  # fmt: skip
    h.print_table(
        "Round trip per call (µs), interleaved round robin",
        ["path", "message / tensors", "median µs", "p10 – p90 µs", "n", f"÷ {BASELINE}"],
        rows,
        [f"÷ {BASELINE} = this row's median / the 1 B os.pipe ping-pong's median, same run.",
         "Turns of 10 timed calls, each after one untimed call (steady state)."],
    )  # fmt: skip


def _carrier(paths: Any) -> str:
    if not isinstance(paths, dict):
        return "-"
    return f"{paths.get('message')} / {','.join(paths.get('request', []))}"


def print_stages(stages: dict[str, dict[str, float]], floor: float, reps: int) -> None:
    names = list(stages)
    rows = [[k, *(_us(stages[n].get(k)) for n in names)] for k in STAGES]
    client = [sum(stages[n].get(k, 0.0) for k in ("client_serialize", "client_deserialize"))
              for n in names]  # fmt: skip
    rows.append(["client serialize + deserialize", *(_us(c) for c in client)])
    rows.append(["  ÷ pipe floor", *(h.fmt_ratio(c / floor) for c in client)])
    h.print_table(
        f"Stages from client.last_trace (µs, medians of {reps} calls per row)",
        ["stage", *names],
        rows,
        ["receive = the client's wait for the reply less the server's own stages."],
    )


def _us(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e6:.1f}"


# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, help="timed calls per row (default 3000; quick 100)")
    ap.add_argument("--trace-reps", type=int, help="calls per row for stages (default 1000)")
    ap.add_argument("--quick", action="store_true", help="few repetitions (smoke)")
    ap.add_argument("--json", metavar="FILE", help="write medians, ratios and stages here")
    ap.add_argument("--profile", metavar="FILE", help="write a cProfile of the client's calls")
    ap.add_argument("--ipc-standin", action="store_true",
                    help="add a CUDA IPC row with CPU memory standing in for CUDA (needs torch; "
                    "see benchmarks/_ipc_standin.py)")
    args = ap.parse_args(argv)
    args.reps = args.reps or (100 if args.quick else 3000)
    args.trace_reps = args.trace_reps or (50 if args.quick else 1000)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    machine = h.machine_info()
    ok, reason = h.tensorwire_status()
    if not ok:
        print(f"call_floor.py needs tensorwire: {reason}", file=sys.stderr)
        return 2
    profile = None
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(h.temp_dir())
        fns = stack.enter_context(floor_fns(tmp))
        # With --ipc-standin one server (the stand-in's, torch on the CPU) serves every row:
        # a second server spinning after its calls would take a vCPU from the others here.
        if args.ipc_standin:
            client, tensor = stack.enter_context(standin_client(tmp))
        else:
            client = stack.enter_context(tw_client(tmp))
        if client.path != "shm":
            print(f"warning: no shared memory: {client.shm_reason}", file=sys.stderr)
        tw, paths = tw_fns(client)
        if args.ipc_standin:
            more, more_paths = standin_fns(client, tensor)
            tw.update(more)
            paths.update(more_paths)
        fns.update(tw)
        stats = h.measure_interleaved(fns, {n: args.reps for n in fns}, warmup=50, block=10)
        stages = stage_medians(client, tw, args.trace_reps)
        if args.profile:
            profile = profile_calls(tw, args.trace_reps, args.profile)
    base = stats[BASELINE].median
    h.print_machine(machine)
    print_rows(stats, paths)
    print_stages(stages, base, args.trace_reps)
    if profile is not None:
        print(f"\ncProfile of {args.trace_reps} calls per tensorwire row -> {args.profile}")
        print(profile)
    if args.json:
        h.write_json(args.json, {
            "machine": machine,
            "config": {"reps": args.reps, "trace_reps": args.trace_reps, "block": 10,
                       "small_bytes": SMALL, "arena_bytes": ARENA,
                       "backend": "torch (stand-in server)" if args.ipc_standin else "numpy",
                       "ipc_standin": args.ipc_standin},
            "baseline": BASELINE,
            "round_trip": stats,
            "ratios": {n: s.median / base for n, s in stats.items()},
            "stages": stages,
            "paths": paths,
        })  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
