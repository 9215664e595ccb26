"""Wire precision casts: what they cost against the bytes they save on a tcp pipe, one run.

    python benchmarks/precision.py [--quick] [--sizes 10MB,100MB] [--json FILE]

Per size (float32 arrays), medians, interleaved round robin:
- cast to the wire (bfloat16, float16) and back, by tensorwire.codec.to_wire/from_wire with
  each backend: torch on 1 thread and on torch's default thread count, ml_dtypes (bfloat16),
  numpy (float16), and tensorwire's native kernel (where the install built it);
- a ZeroMQ PAIR round trip to a bare echo child process over tcp://127.0.0.1 (and over ipc,
  for comparison) of the float32 bytes, and of the half-size bytes a cast leaves;
- a request with a cast wire pays 4 casts (client out, server in, server out, client in): the
  "bf16 wire" row is the half-size round trip + 2 x (cast to + cast back), fastest backend;
  its ratio to the float32 round trip is the speedup the cast buys (> 1: the cast pays).
  "pooled": the cast writes into a reused output (to_wire/from_wire out=), as a buffer pool
  would; "fresh": a new output each time (page faults and zeroing included).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (  # noqa: E402
    Stats,
    child_env,
    fmt_ratio,
    fmt_time,
    machine_info,
    measure_interleaved,
    parse_size,
    print_machine,
    print_table,
    ratio,
    size_label,
    write_json,
)
from tensorwire.codec import from_wire, to_wire  # noqa: E402
from tensorwire.codec._native import available as native_available  # noqa: E402
from tensorwire.codec._precision import torch_available  # noqa: E402


def _child(url: str) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PAIR)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(url)
    while True:
        msg = sock.recv(copy=False)
        if len(msg) == 0:
            break
        sock.send(msg, copy=False)
    sock.close()
    ctx.term()


class Echo:
    """A bare echo child process on a PAIR socket: the wire alone, no codec."""

    def __init__(self, transport: str, tmpdir: str) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PAIR)
        self.sock.setsockopt(zmq.LINGER, 0)
        url = "tcp://127.0.0.1:*" if transport == "tcp" else f"ipc://{tmpdir}/echo.sock"
        self.sock.bind(url)
        real = self.sock.getsockopt(zmq.LAST_ENDPOINT).decode()
        self.proc = subprocess.Popen([sys.executable, __file__, "--child", real], env=child_env())

    def round_trip(self, buf: Any) -> zmq.Frame:
        self.sock.send(buf, copy=False)
        frame: zmq.Frame = self.sock.recv(copy=False)
        return frame

    def close(self) -> None:
        try:
            self.sock.send(b"")
            self.proc.wait(timeout=10)
        except (zmq.ZMQError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        self.sock.close()
        self.ctx.term()


def measure_casts(arr: np.ndarray, reps: int) -> dict[str, Stats]:
    """to_wire / from_wire per backend, into a fresh output and into a reused (pooled) one;
    torch on 1 thread and on its default thread count."""
    fns: dict[str, Any] = {}
    for wire in ("bfloat16", "float16"):
        cast, orig = to_wire(arr, wire, backend="numpy")
        assert orig is not None
        ro = cast.copy()
        ro.flags.writeable = False  # what a received frame looks like
        pool_to, pool_back = np.empty_like(cast), np.empty_like(arr)
        plain = "ml_dtypes" if wire == "bfloat16" else "numpy"
        backends = ["numpy", "torch"] if torch_available() else ["numpy"]
        if native_available():
            backends.append("native")
        for be in backends:
            label = plain if be == "numpy" else be
            fns[f"{wire} to / {label}"] = lambda w=wire, b=be: to_wire(arr, w, backend=b)
            fns[f"{wire} back / {label}"] = lambda r=ro, o=orig, b=be: from_wire(r, o, backend=b)
            fns[f"{wire} to / {label} pooled"] = lambda w=wire, b=be, p=pool_to: to_wire(
                arr, w, backend=b, out=p
            )
            fns[f"{wire} back / {label} pooled"] = lambda r=ro, o=orig, b=be, p=pool_back: (
                from_wire(r, o, backend=b, out=p)
            )
    out: dict[str, Stats] = {}
    torch_names = [n for n in fns if "/ torch" in n]
    if torch_names:
        import torch

        default = torch.get_num_threads()
        if default > 1:
            torch.set_num_threads(1)
            try:
                one = measure_interleaved(
                    {n: fns[n] for n in torch_names}, dict.fromkeys(torch_names, reps)
                )
            finally:
                torch.set_num_threads(default)
            out.update({n.replace("torch", "torch 1 thread"): s for n, s in one.items()})
        res = measure_interleaved(fns, dict.fromkeys(fns, reps))
        out.update({n.replace("torch", f"torch {default} threads"): s for n, s in res.items()})
    else:
        out.update(measure_interleaved(fns, dict.fromkeys(fns, reps)))
    return out


def measure_wire(echoes: dict[str, Echo], arr: np.ndarray, reps: int) -> dict[str, Stats]:
    full = memoryview(arr).cast("B")
    half = memoryview(np.ascontiguousarray(arr[: arr.size // 2])).cast("B")
    fns: dict[str, Any] = {}
    for t, echo in echoes.items():
        fns[f"{t} float32 bytes"] = lambda e=echo: e.round_trip(full)
        fns[f"{t} half bytes"] = lambda e=echo: e.round_trip(half)
    return measure_interleaved(fns, dict.fromkeys(fns, reps), warmup=2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--sizes", default="10MB,100MB")
    ap.add_argument("--transports", default="tcp,ipc")
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--child", metavar="URL", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args.child)
        return 0
    info = machine_info()
    print_machine(info)
    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    transports = [t.strip() for t in args.transports.split(",") if t.strip()]
    report: dict[str, Any] = {"machine": info, "config": vars(args), "sizes": {}}
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="twprec-") as tmpdir:
        echoes = {t: Echo(t, tmpdir) for t in transports}
        try:
            for nbytes in sizes:
                arr = rng.standard_normal(nbytes // 4, dtype=np.float32)
                big = nbytes >= 50 << 20
                reps = (3 if big else 5) if args.quick else (7 if big else 21)
                casts = measure_casts(arr, reps)
                wire = measure_wire(echoes, arr, reps)
                report["sizes"][size_label(nbytes)] = _summarize(casts, wire, transports)
                _print(size_label(nbytes), casts, wire, report["sizes"][size_label(nbytes)])
        finally:
            for e in echoes.values():
                e.close()
    if args.json:
        write_json(args.json, report)
    return 0


def _summarize(
    casts: dict[str, Stats], wire: dict[str, Stats], transports: list[str]
) -> dict[str, Any]:
    out: dict[str, Any] = {"casts": casts, "wire": wire, "verdict": {}}
    for w in ("bfloat16", "float16"):
        for buffers in ("fresh", "pooled"):
            pick = {
                d: min(
                    (
                        n
                        for n in casts
                        if n.startswith(f"{w} {d}")
                        and n.endswith("pooled") == (buffers == "pooled")
                    ),
                    key=lambda n: casts[n].median,
                )
                for d in ("to", "back")
            }
            four = 2 * (casts[pick["to"]].median + casts[pick["back"]].median)
            for t in transports:
                full = wire[f"{t} float32 bytes"].median
                halfrt = wire[f"{t} half bytes"].median
                out["verdict"][f"{t} {w} {buffers}"] = {
                    "float32_round_trip_s": full,
                    "cast_round_trip_estimate_s": halfrt + four,
                    "four_casts_s": four,
                    "bytes_saved_s": full - halfrt,
                    "speedup": ratio(full, halfrt + four),
                    "cast_backends": [pick["to"], pick["back"]],
                }
    return out


def _print(
    label: str, casts: dict[str, Stats], wire: dict[str, Stats], summ: dict[str, Any]
) -> None:
    base = min(s.median for s in casts.values())
    print_table(
        f"{label} float32: casts (medians)",
        ["cast", "median", "p10", "p90", "× fastest"],
        [
            [
                n,
                fmt_time(s.median),
                fmt_time(s.p10),
                fmt_time(s.p90),
                fmt_ratio(ratio(s.median, base)),
            ]
            for n, s in casts.items()
        ],
    )
    print_table(
        f"{label}: bare ZeroMQ PAIR echo round trip",
        ["path", "median", "p10", "p90"],
        [[n, fmt_time(s.median), fmt_time(s.p10), fmt_time(s.p90)] for n, s in wire.items()],
    )
    print_table(
        f"{label}: cast wire = half-size round trip + 4 casts (fastest backend, fresh or pooled "
        "output buffers) vs float32 bytes",
        [
            "transport / wire / buffers",
            "float32 rt",
            "bytes saved",
            "4 casts",
            "cast rt",
            "speedup",
        ],
        [
            [
                k,
                fmt_time(v["float32_round_trip_s"]),
                fmt_time(v["bytes_saved_s"]),
                fmt_time(v["four_casts_s"]),
                fmt_time(v["cast_round_trip_estimate_s"]),
                fmt_ratio(v["speedup"]),
            ]
            for k, v in summ["verdict"].items()
        ],
        ["speedup > 1: the cast costs less than the bytes it saves"],
    )


if __name__ == "__main__":
    sys.exit(main())
