"""What one call costs on a GPU machine, piece by piece: the floors under the CUDA IPC pass.

    python benchmarks/cuda_costs.py [--json FILE] [--profile FILE] [--calls N]

Rows (medians, microseconds):

  torch primitives   the CUDA calls a request makes on the server (synchronize, event record,
                     stream wait, an empty CUDA tensor, set_device + set_stream)
  bare ping-pongs    one byte over os.pipe and 1 KB over a ZeroMQ ipc PAIR, between two
                     processes: the machine's wake-up floor, no tensorwire at all
  tensorwire calls   through a real server (--backend torch --device cuda) and client: a
                     1 KB numpy identity and a 1 MB torch CUDA identity (CUDA IPC), with the
                     client's per-stage trace medians

--profile FILE runs that server under cProfile (its main thread) and writes the stats there,
and the client's CUDA IPC calls under another cProfile, into FILE.client.
Without CUDA it prints "no CUDA device: nothing measured" and exits 2.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

NO_GPU = "no CUDA device: nothing measured"


def median_us(fn: Callable[[], Any], n: int) -> float:
    # Not the harness's time_call: its getrusage per call would outweigh rows of ~1 us.
    fn()
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1e6


def torch_primitives(n: int) -> dict[str, float]:
    import torch

    dev, stream = torch.device("cuda:0"), torch.cuda.Stream()
    event = torch.cuda.Event(interprocess=True)
    event.record(stream)
    torch.cuda.synchronize()
    return {
        "torch.cuda.synchronize (idle)": median_us(lambda: torch.cuda.synchronize(dev), n),
        "stream.synchronize (idle)": median_us(stream.synchronize, n),
        "interprocess event.record": median_us(lambda: event.record(stream), n),
        "stream.wait_event": median_us(lambda: stream.wait_event(event), n),
        "torch.empty(0) on CUDA": median_us(lambda: torch.empty(0, device=dev), n),
        "set_device + set_stream": median_us(
            lambda: (torch.cuda.set_device(dev), torch.cuda.set_stream(stream)), n),
    }


PIPE_ECHO = """
import os, sys
r, w, n = map(int, sys.argv[1:])
for _ in range(n):
    os.write(w, os.read(r, 1))
"""
ZMQ_ECHO = """
import sys, zmq
sock = zmq.Context().socket(zmq.PAIR)
sock.connect(sys.argv[1])
for _ in range(int(sys.argv[2])):
    sock.send(sock.recv())
"""


def bare_ping_pongs(n: int, tmp: str) -> dict[str, float]:
    """Echo children started afresh (no fork of a process holding CUDA and threads)."""
    import zmq

    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    child = subprocess.Popen([sys.executable, "-c", PIPE_ECHO, str(r1), str(w2), str(n + 1)],
                             pass_fds=(r1, w2))

    def pipe() -> None:
        os.write(w1, b"x")
        os.read(r2, 1)

    rows = {"bare os.pipe ping-pong, 1 byte": median_us(pipe, n)}
    child.wait(30)
    for fd in (r1, w1, r2, w2):
        os.close(fd)
    url = f"ipc://{tmp}/pingpong.sock"
    sock = zmq.Context.instance().socket(zmq.PAIR)
    sock.bind(url)
    child = subprocess.Popen([sys.executable, "-c", ZMQ_ECHO, url, str(n + 1)])
    payload = b"x" * 1024

    def zmq_pp() -> None:
        sock.send(payload)
        sock.recv()

    rows["bare ZeroMQ ipc ping-pong, 1 KB"] = median_us(zmq_pp, n)
    child.wait(30)
    sock.close(0)
    return rows


def tensorwire_calls(n: int, tmp: str, profile: str | None) -> dict[str, Any]:
    import torch

    import _harness as h
    import tensorwire as tw

    url = h.endpoint("ipc", tmp, "tw")
    extra = ["--backend", "torch", "--device", "cuda"]
    argv = h.tensorwire_serve_argv(url, extra)
    env = None
    if profile:  # python -m cProfile -m tensorwire: no restart for huge pages under it
        argv = [sys.executable, "-m", "cProfile", "-o", profile, "-m", "tensorwire", "serve",
                "--listen", url, *extra]
        env = {"TENSORWIRE_HUGE_PAGES": "0"}
    out: dict[str, Any] = {}
    with h.child_server(argv, h.TW_READY, timeout=120, env=env) as (proc, served):
        with tw.Client(served) as gpu:
            cases = {"tensorwire 1 KB numpy identity": np.ones(256, np.float32),
                     "tensorwire 1 MB CUDA identity (CUDA IPC)":
                         torch.ones(1 << 18, device="cuda")}
            for name, arg in cases.items():
                traces: list[dict[str, Any]] = []

                def call(arg: Any = arg, traces: list[dict[str, Any]] = traces) -> None:
                    gpu.identity(arg)
                    traces.append(gpu.last_trace)

                out[name] = median_us(call, n)
                if profile and "CUDA" in name:  # the client's half, timed calls only
                    import cProfile

                    prof = cProfile.Profile()
                    prof.runcall(median_us, call, n)
                    prof.dump_stats(profile + ".client")
                out[name + ": stage medians"] = {
                    k: round(statistics.median(t[k] for t in traces) * 1e6, 1)
                    for k, v in traces[0].items() if isinstance(v, float) and k != "total"}
        if profile:
            proc.send_signal(2)  # SIGINT: a clean exit, so cProfile writes its file
            proc.wait(30)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", metavar="FILE")
    p.add_argument("--profile", metavar="FILE", help="cProfile the server into FILE")
    p.add_argument("--calls", type=int, default=2000, help="samples per row")
    args = p.parse_args(argv)
    from tensorwire.channel._cuda import cuda_available

    if not cuda_available():
        print(NO_GPU)
        return 2
    import _harness as h

    rows: dict[str, Any] = {**torch_primitives(args.calls)}
    with h.temp_dir() as tmp:
        rows.update(bare_ping_pongs(args.calls, tmp))
        rows.update(tensorwire_calls(args.calls, tmp, args.profile))
    for name, value in rows.items():
        shown = f"{value:9.1f} us" if isinstance(value, float) else json.dumps(value)
        print(f"{name:48s} {shown}")
    if args.profile:
        import pstats

        for path in (args.profile, args.profile + ".client"):
            print(f"--- {path}")
            pstats.Stats(path).sort_stats("tottime").print_stats(25)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows_us": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
