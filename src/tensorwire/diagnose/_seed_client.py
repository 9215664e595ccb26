"""The seed's GPUClient: msgpack of tolist() (or tobytes()) over ZeroMQ, traced like tw.Client.

`SeedClient.call(op, *arrays)` returns the result array; `last_trace` has the same keys as
`tensorwire.Client.last_trace`, so the stage table and the latency budget treat both alike.
"""

from __future__ import annotations

import time
from types import TracebackType
from typing import Any

import msgpack
import numpy as np
import zmq

from ._seed_server import decode_array, encode_array

ENCODINGS = ("tolist", "binary")


class SeedClient:
    """A DEALER speaking the seed's protocol to `_seed_server`."""

    def __init__(self, url: str, encoding: str = "tolist", timeout: float = 60.0) -> None:
        if encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
        self.encoding, self.path = encoding, f"seed-{encoding}"
        self._ctx: zmq.Context[Any] = zmq.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.RCVTIMEO, int(timeout * 1000))
        self._sock.connect(url)
        self.last_trace: dict[str, Any] = {}

    def call(self, op: str, /, *args: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        body = msgpack.packb(
            {
                "op": op,
                "enc": self.encoding,
                "args": [encode_array(np.asarray(a), self.encoding) for a in args],
            }
        )
        t1 = time.perf_counter()
        self._sock.send(body)  # the seed's default: copy=True
        t2 = time.perf_counter()
        reply, stamps = self._sock.recv_multipart()
        t3 = time.perf_counter()
        d = msgpack.unpackb(reply)
        if "error" in d:
            raise RuntimeError(f"seed server: {d['error']}")
        out = decode_array(d)
        t4 = time.perf_counter()
        self.last_trace = _trace(t0, t1, t2, t3, t4, msgpack.unpackb(stamps), len(args))
        return out

    def close(self) -> None:
        self._sock.close(0)
        self._ctx.term()

    def __enter__(self) -> SeedClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _trace(
    t0: float, t1: float, t2: float, t3: float, t4: float, server: list[float], nargs: int
) -> dict[str, Any]:
    deserialize, compute, serialize = server
    return {
        "client_serialize": t1 - t0,
        "send": t2 - t1,
        "server_queue": 0.0,  # one thread: receiving and queueing are one stage here
        "server_deserialize": deserialize,
        "compute": compute,
        "server_serialize": serialize,
        "receive": max(t3 - t2 - deserialize - compute - serialize, 0.0),
        "client_deserialize": t4 - t3,
        "total": t4 - t0,
        "paths": {"request": ["msgpack"] * nargs, "reply": ["msgpack"]},
    }
