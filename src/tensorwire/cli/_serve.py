"""`tensorwire serve`: a server in the foreground until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys
from types import FrameType

from ..errors import TensorwireError
from ..server import ServerCore


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="run a server in the foreground")
    p.add_argument("--listen", action="append", required=True, metavar="URL",
                   help="ipc:///path/to.sock or tcp://HOST:PORT (port 0 picks one); repeatable")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--backend", default="auto", choices=["auto", "numpy", "torch"])
    p.add_argument("--max-queue", type=int, default=1024,
                   help="requests queued before the server answers 'busy'")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        core = ServerCore(args.listen, device=args.device, backend=args.backend,
                          max_queue=args.max_queue)
        urls = core.bind()
    except (TensorwireError, ValueError, RuntimeError) as exc:
        print(f"tensorwire: error: {exc}", file=sys.stderr)
        return 2

    def on_signal(signum: int, frame: FrameType | None) -> None:
        core.stop()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    for url in urls:
        print(f"tensorwire: listening on {url}", flush=True)
    try:
        core.serve_forever()
    finally:
        core.close()
    return 0
