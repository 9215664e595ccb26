"""The seed's GPUServer, rebuilt as the diagnostics baseline: msgpack over a ZeroMQ ROUTER.

A request is one msgpack frame {"op": name, "enc": "tolist"|"binary", "args": [array, ...]}
where an array is {"array": list} (the seed: `msgpack.packb({"array": a.tolist()})`) or
{"array": bytes, "dtype": str, "shape": [...]} (the seed plan's binary buffers). The op runs
through tensorwire's own op registry and backend, so compute is the same as a tensorwire
server's; the reply is the result in the request's encoding plus a second frame with the
server's stage times [deserialize, compute, serialize] in seconds. msgpack only: nothing
received is ever unpickled.

    python -m tensorwire.diagnose._seed_server --listen ipc:///tmp/s.sock [--backend numpy]
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from types import FrameType
from typing import Any

import msgpack
import numpy as np
import zmq

from ..server import default_registry, make_backend

DTYPES = {"float16", "float32", "float64", "int32", "int64"}
READY = "seed-server: listening on "


class _Stop(Exception):
    pass


def decode_array(d: dict[str, Any]) -> np.ndarray:
    """An array from its seed-style msgpack form (list or raw bytes)."""
    dtype = str(d.get("dtype", "float32"))
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} not in {sorted(DTYPES)}")
    data = d["array"]
    if isinstance(data, bytes):
        return np.frombuffer(data, dtype=dtype).reshape(d["shape"])
    return np.array(data, dtype=dtype)


def encode_array(a: np.ndarray, enc: str) -> dict[str, Any]:
    """The seed-style msgpack form of an array: tolist() or tobytes()."""
    if enc == "tolist":
        return {"array": a.tolist(), "dtype": a.dtype.name}
    return {"array": a.tobytes(), "dtype": a.dtype.name, "shape": list(a.shape)}


def handle(body: bytes, registry: Any, backend: Any) -> list[bytes]:
    t0 = time.perf_counter()
    req = msgpack.unpackb(body)
    args = [decode_array(a) for a in req["args"]]
    t1 = time.perf_counter()
    result = np.asarray(registry.call(req["op"], backend, args, {}))
    backend.synchronize()
    t2 = time.perf_counter()
    reply = msgpack.packb(encode_array(result, req["enc"]))
    t3 = time.perf_counter()
    return [reply, msgpack.packb([t1 - t0, t2 - t1, t3 - t2])]


def serve(url: str, backend_name: str, device: str = "auto") -> None:
    registry, backend = default_registry(), make_backend(backend_name, device)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(url)
    print(f"{READY}{sock.getsockopt_string(zmq.LAST_ENDPOINT)}", flush=True)
    try:
        while True:
            ident, body = sock.recv_multipart()
            try:
                frames = handle(body, registry, backend)
            except Exception as exc:  # a bad request gets an error reply, the loop goes on
                frames = [msgpack.packb({"error": f"{type(exc).__name__}: {exc}"}), b""]
            sock.send_multipart([ident, *frames])
    except _Stop:
        pass
    finally:
        sock.close(0)
        ctx.term()


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise _Stop


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--listen", required=True, help="ipc:///path.sock or tcp://127.0.0.1:0")
    ap.add_argument("--backend", default="auto", choices=["auto", "numpy", "torch"])
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    serve(args.listen, args.backend, args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
