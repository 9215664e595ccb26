"""1-byte round trip between two processes: tensorwire's FIFO doorbell vs ZeroMQ ipc vs a pipe.

    python benchmarks/doorbell.py [--iterations 5000] [--json FILE]

The parent rings, a child process echoes, the parent times each round trip (perf_counter_ns).
Each row is divided by the ZeroMQ ipc row measured in the same run; the anonymous pipe pair
is the kernel's limit for this kind of wake-up. Units: microseconds per round trip.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")
WARMUP = 200


def _child(kind: str, arg: str, n: int) -> None:
    """Echo n rings: the other half of each measurement."""
    if kind == "doorbell":
        from tensorwire.channel import Doorbell

        bell = Doorbell.attach(os.path.basename(arg), directory=os.path.dirname(arg))
        for _ in range(n):
            bell.wait()
            bell.ring()
        bell.close()
    elif kind == "zmq":
        import zmq

        ctx = zmq.Context()
        sock = ctx.socket(zmq.PAIR)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(arg)
        for _ in range(n):
            sock.send(sock.recv())
        sock.close()
        ctx.term()
    else:  # pipe: arg is "readfd,writefd"
        rfd, wfd = map(int, arg.split(","))
        for _ in range(n):
            os.write(wfd, os.read(rfd, 1))


def _spawn(kind: str, arg: str, n: int, fds: tuple[int, ...] = ()) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, __file__, "--child", kind, arg, str(n)]
    path = os.environ.get("PYTHONPATH")  # ours first, then what was there
    env = dict(os.environ, PYTHONPATH=SRC + (os.pathsep + path if path else ""))
    return subprocess.Popen(cmd, env=env, pass_fds=fds)


def _time(round_trip: Callable[[], object], n: int) -> list[int]:
    samples = []
    for i in range(n):
        t0 = time.perf_counter_ns()
        round_trip()
        if i >= WARMUP:
            samples.append(time.perf_counter_ns() - t0)
    return samples


def bench_doorbell(n: int, tmp: str) -> list[int]:
    from tensorwire.channel import Doorbell

    with Doorbell.create(directory=tmp) as bell:
        child = _spawn("doorbell", os.path.join(tmp, bell.name), n)
        samples = _time(lambda: (bell.ring(), bell.wait()), n)
        child.wait(30)
    return samples


def bench_zmq(n: int, tmp: str) -> list[int]:
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.PAIR)
    sock.setsockopt(zmq.LINGER, 0)
    url = f"ipc://{tmp}/bench.sock"
    sock.bind(url)
    child = _spawn("zmq", url, n)
    samples = _time(lambda: (sock.send(b"\x01"), sock.recv()), n)
    child.wait(30)
    sock.close()
    ctx.term()
    return samples


def bench_pipe(n: int, tmp: str) -> list[int]:
    to_child, from_parent = os.pipe()
    to_parent, from_child = os.pipe()
    child = _spawn("pipe", f"{to_child},{from_child}", n, fds=(to_child, from_child))
    samples = _time(lambda: (os.write(from_parent, b"\x01"), os.read(to_parent, 1)), n)
    child.wait(30)
    for fd in (to_child, from_parent, to_parent, from_child):
        os.close(fd)
    return samples


def _summary(samples: list[int]) -> dict[str, float]:
    q = statistics.quantiles(samples, n=10)
    return {
        "median_us": statistics.median(samples) / 1e3,
        "p10_us": q[0] / 1e3,
        "p90_us": q[-1] / 1e3,
        "n": len(samples),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=5000)
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, arg, n = args.child
        _child(kind, arg, int(n))
        return
    sys.path.insert(0, SRC)  # run from a checkout without installing
    n = args.iterations + WARMUP
    rows: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="tw-bell-") as tmp:
        for name, fn in [("zmq ipc PAIR", bench_zmq), ("doorbell (FIFO)", bench_doorbell),
                         ("pipe pair (limit)", bench_pipe)]:  # fmt: skip
            rows[name] = _summary(fn(n, tmp))
    base = rows["zmq ipc PAIR"]["median_us"]
    print(f"1-byte round trip, {args.iterations} iterations, {os.cpu_count()} CPUs")
    print(f"{'path':<20}{'median µs':>11}{'p10 µs':>9}{'p90 µs':>9}{'÷ zmq ipc':>11}")
    for name, r in rows.items():
        row = f"{name:<20}{r['median_us']:>11.1f}{r['p10_us']:>9.1f}{r['p90_us']:>9.1f}"
        print(f"{row}{r['median_us'] / base:>11.2f}")
    if args.json:
        machine = {"platform": platform.platform(), "cpus": os.cpu_count(),
                   "python": platform.python_version()}  # fmt: skip
        result = {"benchmark": "doorbell", "unit": "us", "baseline": "zmq ipc PAIR",
                  "machine": machine, "rows": rows}  # fmt: skip
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
