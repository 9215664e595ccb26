"""Server sides of the peer systems that peers.py compares tensorwire with (optional extras).

    python benchmarks/_peer_workers.py torch-rpc --port P     # rank 1 of a world of 2
    python benchmarks/_peer_workers.py grpc                   # prints `grpc: listening on H:P`

Each echoes what it receives. Nothing here is a tensorwire runtime dependency. (torch.rpc
pickles its call envelopes internally; that is the peer's own protocol, measured as it ships.)
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any


def echo(x: Any) -> Any:
    """The remote function of the torch.distributed.rpc benchmark."""
    return x


def rpc_options(port: int) -> Any:
    import torch.distributed.rpc as rpc

    return rpc.TensorPipeRpcBackendOptions(
        init_method=f"tcp://127.0.0.1:{port}", num_worker_threads=4, rpc_timeout=60
    )


def torch_rpc_server(port: int) -> None:
    import torch.distributed.rpc as rpc

    print("torch-rpc: joining", flush=True)
    rpc.init_rpc("server", rank=1, world_size=2, rpc_backend_options=rpc_options(port))
    rpc.shutdown()  # returns once the client has shut down too


GRPC_METHOD = "/tensorwire.bench.Echo/Echo"
GRPC_OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]


def grpc_server() -> None:
    from concurrent import futures

    import grpc

    def handle(request: bytes, context: Any) -> bytes:
        return request

    handler = grpc.method_handlers_generic_handler(
        "tensorwire.bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(handle)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), options=GRPC_OPTIONS)
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    print(f"grpc: listening on 127.0.0.1:{port}", flush=True)
    done.wait()
    server.stop(grace=1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("which", choices=["torch-rpc", "grpc"])
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args(argv)
    if args.which == "torch-rpc":
        torch_rpc_server(args.port)
    else:
        grpc_server()
    return 0


if __name__ == "__main__":
    sys.exit(main())
