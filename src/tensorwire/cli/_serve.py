"""`tensorwire serve`: a server in the foreground until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys
from types import FrameType

from ..channel import DEFAULT_SPIN_US
from ..errors import TensorwireError
from ..server import Quotas, ServerCore
from ..server._metrics_http import MetricsServer, serve_metrics


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="run a server in the foreground")
    p.add_argument(
        "--listen",
        action="append",
        required=True,
        metavar="URL",
        help="ipc:///path/to.sock, tcp://HOST:PORT or ucx://HOST:PORT (port 0 picks one); "
        "repeatable",
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--backend", default="auto", choices=["auto", "numpy", "torch"])
    p.add_argument(
        "--max-queue",
        type=int,
        default=1024,
        help="requests queued before the server answers 'busy'",
    )
    p.add_argument(
        "--no-shm", action="store_true", help="never offer shared memory to same-host clients"
    )
    p.add_argument(
        "--shm-dir", default="/dev/shm", help="where shared-memory arenas are created (a tmpfs)"
    )
    p.add_argument(
        "--shm-max-arena",
        type=int,
        default=1 << 30,
        metavar="BYTES",
        help="largest arena (per direction) a client may ask for",
    )
    p.add_argument(
        "--auth-dir",
        metavar="DIR",
        help="CurveZMQ keys for tcp: DIR/server.key_secret and DIR/clients/*.key",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="allow plain tcp without keys, and ucx (anyone who can connect may run ops)",
    )
    p.add_argument(
        "--quota-resident-bytes",
        type=int,
        default=Quotas.resident_bytes,
        metavar="BYTES",
        help="resident tensor bytes per client",
    )
    p.add_argument(
        "--quota-handles",
        type=int,
        default=Quotas.handles,
        metavar="N",
        help="resident tensors per client",
    )
    p.add_argument(
        "--quota-inflight",
        type=int,
        default=Quotas.inflight,
        metavar="N",
        help="requests queued per connection",
    )
    p.add_argument(
        "--spin-us",
        type=float,
        default=DEFAULT_SPIN_US,
        metavar="US",
        help="after each request, poll this long for the next before sleeping "
        "(CPU for latency; 0 turns it off); with 4+ CPUs not all busy, as long as recent "
        "requests took to come, up to 3 ms (TENSORWIRE_STRETCH_SPIN=0 keeps to US)",
    )
    p.add_argument(
        "--pipeline-depth",
        type=int,
        default=1,
        metavar="N",
        help="CUDA: launch up to N requests, each on its client's stream, before replying to "
        "the oldest, so copies overlap kernels (default 1: one request at a time; on the CPU "
        "above 1 only delays replies)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        metavar="N",
        help="serve Prometheus metrics at http://HOST:N/metrics (0 picks a port)",
    )
    p.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        metavar="HOST",
        help="address for --metrics-port (default 127.0.0.1; the endpoint has no auth)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        core = ServerCore(
            args.listen,
            device=args.device,
            backend=args.backend,
            max_queue=args.max_queue,
            shm=not args.no_shm,
            shm_dir=args.shm_dir,
            shm_max_arena=args.shm_max_arena,
            auth_dir=args.auth_dir,
            insecure=args.insecure,
            quotas=Quotas(args.quota_resident_bytes, args.quota_handles, args.quota_inflight),
            spin_us=args.spin_us,
            pipeline_depth=args.pipeline_depth,
        )
        urls = core.bind()
    except (TensorwireError, ValueError, RuntimeError) as exc:
        print(f"tensorwire: error: {exc}", file=sys.stderr)
        return 2
    try:
        metrics = _start_metrics(core, args)
    except (OSError, OverflowError) as exc:  # port in use or out of range, unknown host
        print(
            f"tensorwire: error: metrics on {args.metrics_host}:{args.metrics_port}: {exc}",
            file=sys.stderr,
        )
        core.close()
        return 2

    def on_signal(signum: int, frame: FrameType | None) -> None:
        core.stop()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    for url in urls:
        print(f"tensorwire: listening on {url}", flush=True)
    if metrics is not None:
        print(f"tensorwire: metrics on {metrics.url}", flush=True)
    try:
        core.serve_forever()
    finally:
        if metrics is not None:
            metrics.close()
        core.close()
    return 0


def _start_metrics(core: ServerCore, args: argparse.Namespace) -> MetricsServer | None:
    if args.metrics_port is None:
        return None
    return serve_metrics(core, args.metrics_host, args.metrics_port)
