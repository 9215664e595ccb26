"""Stretched spins against the fixed budget: latency, and the CPU it costs, in one run.

    python benchmarks/spin.py [--quick] [--rounds 8] [--calls 40] [--json FILE]

Two servers (numpy backend, same host) and two clients, one pair with stretched spins
(TENSORWIRE_STRETCH_SPIN=1, channel/_spin.py) and one with the fixed 200 µs budget (=0),
called in alternating rounds. Rows:

- 1 KB `identity`: a fast call; the fixed budget covers its wait already.
- 10 MB `neg` over a bfloat16 wire: each side casts 10 MB and runs the op, about a
  millisecond of work per side here, so each waits longer than 200 µs for the other.
- 32 MB `neg` over a bfloat16 wire: several ms per side, longer than a stretch may reach.

Per row and mode: the median over rounds of each round's median round trip, and the CPU
time per call of the client process and of its server (from /proc, so Linux only), over all
rounds. The ratio fixed / stretched > 1 means stretching is faster.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h  # noqa: E402

ENV = "TENSORWIRE_STRETCH_SPIN"
MODES = {"stretched": "1", "fixed": "0"}
ROWS = {  # name -> (float32 bytes, wire dtype, op)
    "1KB identity": (1 << 10, None, "identity"),
    "4MB neg, bf16 wire": (4 << 20, "bfloat16", "neg"),
    "10MB neg, bf16 wire": (10 << 20, "bfloat16", "neg"),
    "32MB neg, bf16 wire": (32 << 20, "bfloat16", "neg"),
}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--calls", type=int, default=40, help="calls per row, mode and round")
    p.add_argument("--quick", action="store_true", help="2 rounds of 5 calls, small rows")
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args(argv)
    if not os.path.exists(f"/proc/{os.getpid()}/stat"):
        print("needs Linux's /proc to count CPU time: nothing measured")
        return 2
    import tensorwire as tw

    rounds, calls = (2, 5) if args.quick else (args.rounds, args.calls)
    rows = {k: v for k, v in ROWS.items() if not args.quick or v[0] <= 1 << 20}
    if args.quick:
        rows["1MB neg, bf16 wire"] = (1 << 20, "bfloat16", "neg")
    medians: dict[str, dict[str, list[float]]] = {r: {m: [] for m in MODES} for r in rows}
    cpu: dict[str, dict[str, list[float]]] = {r: {m: [0.0, 0.0] for m in MODES} for r in rows}
    with h.temp_dir() as tmp, contextlib.ExitStack() as stack:
        pairs: dict[str, tuple[int, dict[str, Callable[[], Any]]]] = {}
        for mode, value in MODES.items():
            argv_ = h.tensorwire_serve_argv(h.endpoint("ipc", tmp, mode), ["--backend", "numpy"])
            proc, url = stack.enter_context(
                h.child_server(argv_, h.TW_READY, timeout=60, env={ENV: value}))
            os.environ[ENV] = value  # read when each client is made
            calls_of: dict[str, Callable[[], Any]] = {}
            for row, (nbytes, wire, op) in rows.items():
                client = stack.enter_context(tw.Client(url, shm_size=160 << 20, wire_dtype=wire))
                x = client.empty((nbytes // 4,), np.float32)
                x[:] = np.linspace(-2, 2, x.size, dtype=np.float32)
                calls_of[row] = (lambda c, o, a: lambda: c.call(o, a))(client, op, x)
                for _ in range(10):  # warm: arenas touched, spins settled
                    calls_of[row]()
            pairs[mode] = (proc.pid, calls_of)
        os.environ.pop(ENV, None)
        for r in range(rounds):
            for row in rows:
                for mode in (MODES if r % 2 == 0 else reversed(list(MODES))):
                    pid, calls_of = pairs[mode]
                    fn, times = calls_of[row], []
                    fn()  # the first call after the other pair's round: not timed
                    c0, s0 = time.process_time(), cpu_seconds(pid)
                    for _ in range(calls):
                        t0 = time.perf_counter()
                        fn()
                        times.append(time.perf_counter() - t0)
                    cpu[row][mode][0] += time.process_time() - c0
                    cpu[row][mode][1] += cpu_seconds(pid) - s0
                    medians[row][mode].append(statistics.median(times))
    info = h.machine_info()
    h.print_machine(info)
    out, table = [], []
    n = rounds * calls
    for row in rows:
        got = {m: statistics.median(medians[row][m]) for m in MODES}
        per = {m: (cpu[row][m][0] / n, cpu[row][m][1] / n) for m in MODES}
        ratio = got["fixed"] / got["stretched"]
        out.append({"row": row, "round_trip_s": got, "rounds_s": medians[row],
                    "client_cpu_s_per_call": {m: per[m][0] for m in MODES},
                    "server_cpu_s_per_call": {m: per[m][1] for m in MODES},
                    "fixed_over_stretched": ratio})
        table.append([row, f"{got['fixed'] * 1e6:.1f}", f"{got['stretched'] * 1e6:.1f}",
                      f"{ratio:.2f}x",
                      f"{per['fixed'][0] * 1e6:.0f} / {per['stretched'][0] * 1e6:.0f}",
                      f"{per['fixed'][1] * 1e6:.0f} / {per['stretched'][1] * 1e6:.0f}"])
    h.print_table(f"{rounds} rounds x {calls} calls per row and mode, alternating; round trip: "
                  "median over rounds of each round's median (µs); CPU: per call over all "
                  "rounds (µs, fixed / stretched)",
                  ["row", "fixed", "stretched", "fixed / stretched", "client CPU",
                   "server CPU"], table)
    if args.json:
        h.write_json(args.json, {"machine": info, "rounds": rounds, "calls": calls,
                                 "cpus": len(os.sched_getaffinity(0)), "rows": out})
    return 0


if __name__ == "__main__":
    sys.exit(main())
