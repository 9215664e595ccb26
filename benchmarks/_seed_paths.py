"""Client-side paths measured by seed_baseline.py, each a round trip through an echo server.

`round_trip(path, sock, arr)` returns the array that came back; `stages(...)` does the same
round trip against an echo server started with --stamp and splits it, seed-style, into one-way
stages (seconds): serialize (client), send (the send call), receive (send call returned ->
server holds the whole message, from the server's host-wide monotonic stamp), deserialize
(decoding the echoed bytes, the same work the server would do on the request).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np
import zmq

_now = time.perf_counter_ns
_stamp = struct.Struct("<q")

SEED_PATHS = ("tolist", "binary", "multipart")

LABELS = {
    "tolist": "seed: msgpack of tolist()",
    "binary": "seed plan 1: msgpack of tobytes()",
    "multipart": "bare zmq multipart, copy=False",
    "tw_zmq": "tensorwire identity, transport=zmq",
    "tw_auto": "tensorwire identity, transport=auto",
}


def dealer(ctx: zmq.Context[Any], url: str) -> zmq.Socket[Any]:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(url)
    return sock


# --- the three seed-side encodings: (serialize, send, receive frames, deserialize) ------------


def _ser_tolist(arr: np.ndarray) -> bytes:
    return msgpack.packb({"array": arr.tolist()})  # type: ignore[no-any-return]


def _de_tolist(frames: list[Any]) -> np.ndarray:
    return np.array(msgpack.unpackb(frames[0])["array"], dtype=np.float32)


def _ser_binary(arr: np.ndarray) -> bytes:
    return msgpack.packb(  # type: ignore[no-any-return]
        {"array": arr.tobytes(), "dtype": arr.dtype.str, "shape": list(arr.shape)}
    )


def _de_binary(frames: list[Any]) -> np.ndarray:
    d = msgpack.unpackb(frames[0])
    return np.frombuffer(d["array"], dtype=np.dtype(d["dtype"])).reshape(d["shape"])


def _ser_multipart(arr: np.ndarray) -> list[Any]:
    header = msgpack.packb({"dtype": arr.dtype.str, "shape": list(arr.shape)})
    return [header, arr]


def _de_multipart(frames: list[Any]) -> np.ndarray:
    h = msgpack.unpackb(frames[0].bytes)
    return np.frombuffer(frames[1].buffer, dtype=np.dtype(h["dtype"])).reshape(h["shape"])


def _send_one(sock: zmq.Socket[Any], msg: bytes) -> None:
    sock.send(msg)  # the seed's default: copy=True


def _recv_one(sock: zmq.Socket[Any]) -> list[Any]:
    return sock.recv_multipart()


def _send_multi(sock: zmq.Socket[Any], frames: list[Any]) -> None:
    sock.send_multipart(frames, copy=False)


def _recv_multi(sock: zmq.Socket[Any]) -> list[Any]:
    return sock.recv_multipart(copy=False)


_CODECS: dict[str, tuple[Callable[..., Any], ...]] = {
    "tolist": (_ser_tolist, _send_one, _recv_one, _de_tolist),
    "binary": (_ser_binary, _send_one, _recv_one, _de_binary),
    "multipart": (_ser_multipart, _send_multi, _recv_multi, _de_multipart),
}


def round_trip(path: str, sock: zmq.Socket[Any], arr: np.ndarray) -> np.ndarray:
    ser, send, recv, de = _CODECS[path]
    send(sock, ser(arr))
    return de(recv(sock))  # type: ignore[no-any-return]


def round_trip_fn(path: str, sock: zmq.Socket[Any], arr: np.ndarray) -> Callable[[], object]:
    return lambda: round_trip(path, sock, arr)


def stages(path: str, sock: zmq.Socket[Any], arr: np.ndarray) -> dict[str, float]:
    """One round trip against a --stamp echo server, split into one-way stages (seconds)."""
    ser, send, recv, de = _CODECS[path]
    t0 = _now()
    msg = ser(arr)
    t1 = _now()
    send(sock, msg)
    t2 = _now()
    frames = recv(sock)
    stamp_frame = frames.pop()
    t3 = _now()
    out = de(frames)
    t4 = _now()
    raw = stamp_frame if isinstance(stamp_frame, bytes) else stamp_frame.bytes
    (t_server,) = _stamp.unpack(raw)
    if out.shape != arr.shape:
        raise AssertionError(f"{path}: echo changed the shape")
    st = {
        "serialize": (t1 - t0) / 1e9,
        "send": (t2 - t1) / 1e9,
        "receive": max(t_server - t2, 0) / 1e9,
        "deserialize": (t4 - t3) / 1e9,
    }
    st["total"] = sum(st.values())
    return st


# --- limits: single-frame ping-pong ---------------------------------------------------------


def pingpong_fn(sock: zmq.Socket[Any], payload: bytes) -> Callable[[], object]:
    def once() -> object:
        sock.send(payload)
        return sock.recv()

    return once


# --- tensorwire -----------------------------------------------------------------------------


def trace_paths(trace: Any) -> list[str]:
    """The path names a tensorwire trace reports, flattened: its 'paths' ({"request": [...],
    "reply": [...]}, or a list) or 'path' entry, as "request:frame", "reply:shm", ..."""
    if not isinstance(trace, dict):
        return []
    found: list[str] = []
    for key in ("paths", "path"):
        _flatten(trace.get(key), "", found)
    return found


def _flatten(v: Any, prefix: str, out: list[str]) -> None:
    if v is None:
        return
    if isinstance(v, dict):
        for k, sub in v.items():
            _flatten(sub, f"{prefix}{k}:", out)
    elif isinstance(v, list | tuple):
        for sub in v:
            _flatten(sub, prefix, out)
    else:
        out.append(f"{prefix}{v}")


def is_frame_path(paths: list[str]) -> bool:
    return all(p.startswith("frame") or p.split(":", 1)[-1].startswith("frame") for p in paths)


def trace_stages(trace: Any) -> dict[str, float]:
    """The numeric stage entries of a tensorwire trace (seconds)."""
    if not isinstance(trace, dict):
        return {}
    return {
        str(k): float(v)
        for k, v in trace.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
