"""Parallel casts on the native kernel's pooled threads against threads started per cast.

    python benchmarks/cast_threads.py [--quick] [--sizes 1MB,4MB,10MB] [--threads 1,2,4]
                                      [--rounds 6] [--reps 200] [--gap-us 200] [--json FILE]

Each round runs two children in turn, one with the kernel's thread pool (the default) and
one with TENSORWIRE_CAST_POOL=0 (threads started and joined per cast, as before the pool);
each times `reps` float32 -> bfloat16 casts per size and thread count, with `gap-us` of
sleep between casts (in a call the cast sits between other work, so the pool's threads are
asleep when it starts). Rows: median over rounds of each child's median, in µs per cast, and
the ratio started / pooled (> 1: the pool is faster). Needs the native kernel (a C compiler
at install); without it the script says so and exits 2.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h  # noqa: E402

POOL_ENV = "TENSORWIRE_CAST_POOL"
MODES = {"pooled": "1", "started": "0"}  # the env value of each child

CHILD = r"""
import json, statistics, sys, time
import ml_dtypes, numpy as np
from tensorwire.codec import _native
sizes, threads, reps, gap = json.loads(sys.argv[1])
out = {}
for size in sizes:
    src = np.random.default_rng(0).standard_normal(size // 4, dtype=np.float32)
    dst = np.empty(src.size, ml_dtypes.bfloat16)
    for n in threads:
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            assert _native.cast(src, dst, threads=n)
            times.append(time.perf_counter() - t0)
            time.sleep(gap)
        out[f"{size}/{n}"] = statistics.median(times)
print(json.dumps(out))
"""


def run_child(mode: str, sizes: list[int], threads: list[int], reps: int, gap: float
              ) -> dict[str, float]:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps([sizes, threads, reps, gap])],
        env=h.child_env({POOL_ENV: MODES[mode]}), capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"the {mode} child failed:\n{proc.stderr[-2000:]}")
    result: dict[str, float] = json.loads(proc.stdout)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1MB,4MB,10MB", help="float32 bytes per cast")
    p.add_argument("--threads", default="1,2,4", help="threads per cast")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--reps", type=int, default=200)
    p.add_argument("--gap-us", type=float, default=200.0)
    p.add_argument("--quick", action="store_true", help="2 rounds of 30 casts")
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args(argv)
    from tensorwire.codec import _native

    if not _native.available():
        print("the native cast kernel is not built here: nothing to measure")
        return 2
    sizes = [h.parse_size(s) for s in args.sizes.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    rounds, reps = (2, 30) if args.quick else (args.rounds, args.reps)
    runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    for r in range(rounds):
        for mode in (MODES if r % 2 == 0 else reversed(list(MODES))):  # alternate the order
            runs[mode].append(run_child(mode, sizes, threads, reps, args.gap_us * 1e-6))
    info = h.machine_info()
    h.print_machine(info)
    rows, table = [], []
    for size in sizes:
        for n in threads:
            key = f"{size}/{n}"
            pooled = statistics.median(run[key] for run in runs["pooled"])
            started = statistics.median(run[key] for run in runs["started"])
            rows.append({"nbytes": size, "threads": n, "pooled_s": pooled,
                         "started_s": started, "started_over_pooled": started / pooled})
            table.append([h.size_label(size), str(n), f"{started * 1e6:.1f}",
                          f"{pooled * 1e6:.1f}", f"{started / pooled:.2f}x"])
    h.print_table(f"{rounds} rounds x {reps} casts float32 -> bfloat16, {args.gap_us:.0f} us "
                  "apart; medians over rounds of each child's median (us per cast)",
                  ["size", "threads", "started per cast", "pooled", "started / pooled"], table)
    if args.json:
        report: dict[str, Any] = {"machine": info, "rounds": rounds, "reps": reps,
                                  "gap_us": args.gap_us, "isa": _native.best_isa(),
                                  "cpus": os.cpu_count(), "rows": rows, "runs": runs}
        h.write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
