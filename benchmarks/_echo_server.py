"""Tiny ZeroMQ echo server for the seed baseline: a ROUTER that sends every message back as is.

It only moves bytes: it never decodes, let alone unpickles, anything it receives. Frames are
received with copy=False and sent back as the same zmq messages, so the server adds no copy.

    python benchmarks/_echo_server.py --listen ipc:///tmp/x.sock [--stamp]

Prints `echo: listening on URL` (the real port for tcp://...:0) once it accepts messages, and
exits on SIGTERM/SIGINT. With --stamp it appends one 8-byte frame to each echo: the
CLOCK_MONOTONIC time (time.perf_counter_ns, host-wide on Linux) at which the request had been
fully received, so clients can split a round trip into one-way stages.
"""

from __future__ import annotations

import argparse
import signal
import struct
import sys
import time
from types import FrameType

import zmq


class _Stop(Exception):
    pass


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise _Stop


def serve(url: str, stamp: bool) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.bind(url)
    print(f"echo: listening on {sock.getsockopt_string(zmq.LAST_ENDPOINT)}", flush=True)
    pack = struct.Struct("<q").pack
    try:
        while True:
            frames = sock.recv_multipart(copy=False)
            if stamp:
                frames.append(pack(time.perf_counter_ns()))  # type: ignore[arg-type]
            sock.send_multipart(frames, copy=False)
    except _Stop:
        pass
    finally:
        sock.close(0)
        ctx.term()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", required=True, help="ipc:///path.sock or tcp://127.0.0.1:0")
    ap.add_argument("--stamp", action="store_true", help="append a receive timestamp frame")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    serve(args.listen, args.stamp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
