"""What one fuzz input must satisfy: `decode` returns or raises ProtocolError, nothing else."""

from __future__ import annotations

from typing import Any

import numpy as np

from tensorwire.codec import Limits, decode, encode, peek_meta
from tensorwire.codec._handles import HandleRef
from tensorwire.errors import ProtocolError
from tensorwire.server._handlers import parse_request

SMALL = Limits(max_tensor_bytes=1 << 16, max_frames=16, max_header_bytes=1 << 16)


def corpus() -> list[list[bytes]]:
    """Valid messages of every shape the server receives, as seeds for mutation."""
    rng = np.random.default_rng(0)
    seeds = [
        encode({"k": "hello", "id": 1, "op": "", "host": "h" * 16, "pid": 42, "shm": 1 << 20}),
        encode({"k": "call", "id": 2, "op": "add", "s": "ab" * 16},
               {"a": [np.arange(6, dtype=np.float32).reshape(2, 3), 1.5], "kw": {}}),
        encode({"k": "call", "id": 3, "op": "matmul", "w": "bfloat16"},
               {"a": [rng.standard_normal((4, 4)).astype(np.float32),
                      np.ones((4, 2), np.float64, order="F")], "kw": {"x": [1 + 2j, None]}}),
        encode({"k": "graph", "id": 4, "op": ""},
               {"a": [[{"op": "neg", "in": [0]}], np.array(True), np.zeros(0, np.int8)],
                "kw": {"n": {"d": [b"raw", "s", -1, 2**63 - 1]}}}),
        encode({"k": "fetch", "id": 5, "op": "", "s": "cd" * 16, "fh": [1, 2], "fr": [[0, 64]]},
               {"a": [HandleRef(12345, "float32", (3, 3), "cpu")], "kw": {}}),
        encode({"id": 6, "ok": False, "err": {"code": "quota", "type": "QuotaExceeded",
                                               "msg": "over"}}),
    ]
    return [[bytes(f) for f in message] for message in seeds]


def check(frames: list[Any]) -> None:
    """Raise AssertionError (or whatever escaped) when the contract is broken."""
    for limits in (None, SMALL):
        try:
            decoded = decode(frames) if limits is None else decode(frames, limits)
        except ProtocolError as exc:
            assert str(exc), "a refusal must name its problem"
            continue
        assert isinstance(decoded.meta, dict)
        try:
            parse_request(decoded.meta, decoded.payload)
        except ProtocolError:
            pass
    assert isinstance(peek_meta(frames[0] if frames else b""), dict)
