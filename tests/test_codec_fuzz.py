"""Fuzzing decode: whatever arrives, it decodes or raises ProtocolError, nothing else."""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tensorwire.codec import (
    PROTOCOL_VERSION,
    WIRE_DTYPES,
    Decoded,
    Limits,
    decode,
    encode,
    peek_meta,
)
from tensorwire.codec._message import EXT_COMPLEX, EXT_TENSOR
from tensorwire.errors import ProtocolError


def fuzz(n: int) -> settings:
    return settings(max_examples=n, deadline=None, suppress_health_check=list(HealthCheck))
SMALL = Limits(max_tensor_bytes=1 << 16, max_frames=16)


def decodes_or_protocol_error(frames: list[Any], **kw: Any) -> Decoded | None:
    try:
        out = decode(frames, **kw)
    except ProtocolError as exc:
        assert str(exc)  # every refusal names its problem
        return None
    assert isinstance(out, Decoded) and isinstance(out.meta, dict)
    return out


frame_bytes = st.binary(max_size=64)
frames_after_header = st.lists(frame_bytes, max_size=4)


@fuzz(2000)
@given(header=st.binary(max_size=200), rest=frames_after_header)
def test_random_bytes(header: bytes, rest: list[bytes]) -> None:
    decodes_or_protocol_error([header, *rest])
    decodes_or_protocol_error([header, *rest], limits=SMALL)
    assert isinstance(peek_meta(header), dict)


# Headers that are msgpack, near-valid, with junk in every field a tensor ref has.
junk = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | \
    st.text(max_size=4) | st.binary(max_size=4)  # fmt: skip
def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`good` about 9 times in 10, so the checks past the first one get exercised."""
    return st.integers(0, 9).flatmap(lambda i: bad if i == 0 else good)


dims = mostly(st.integers(0, 4), st.integers(-3, 2**64 - 1) | junk)
shapes = mostly(st.lists(dims, max_size=3), st.lists(st.just(1), min_size=30, max_size=40) | junk)
names = mostly(st.sampled_from(list(WIRE_DTYPES)), junk)
orders = mostly(st.sampled_from(["C", "F"]), junk)
locations = mostly(st.integers(1, 4), st.integers(-1, 6) | junk | st.dictionaries(
    st.text(max_size=3), junk, max_size=2))  # fmt: skip
tensor_refs = mostly(
    st.builds(lambda n, s, o, loc: msgpack.ExtType(EXT_TENSOR, msgpack.packb([n, s, o, loc])),
              names, shapes, orders, locations),  # fmt: skip
    st.builds(lambda r: msgpack.ExtType(EXT_TENSOR, msgpack.packb(r)), st.lists(junk, max_size=5)),
)
ext_other = st.builds(
    msgpack.ExtType,
    st.sampled_from([EXT_COMPLEX, EXT_TENSOR, 0, 3, 127]),
    st.binary(max_size=12) | st.lists(junk, max_size=3).map(msgpack.packb),
)
values = st.recursive(
    st.integers(0, 9).flatmap(lambda i: tensor_refs if i < 5 else junk if i < 9 else ext_other),
    lambda kids: st.lists(kids, max_size=4)
    | st.dictionaries(st.text(max_size=4), kids, max_size=3),
    max_leaves=8,
)

versions = mostly(st.just(PROTOCOL_VERSION), junk | tensor_refs)
metas = mostly(st.dictionaries(st.text(max_size=4), values, max_size=3), junk)


def _renumber(obj: Any, numbers: Any) -> Any:
    if isinstance(obj, list):
        return [_renumber(v, numbers) for v in obj]
    if isinstance(obj, dict):
        return {k: _renumber(v, numbers) for k, v in obj.items()}
    if isinstance(obj, msgpack.ExtType) and obj.code == EXT_TENSOR:
        try:
            ref = msgpack.unpackb(obj.data)
        except Exception:
            return obj  # random ext bytes: leave as they are
        if isinstance(ref, list) and len(ref) == 4 and type(ref[3]) is int:
            ref[3] = next(numbers)
            return msgpack.ExtType(EXT_TENSOR, msgpack.packb(ref))
    return obj


def _frame_sizes(obj: Any) -> dict[int, int]:
    """{frame index: bytes} for the well-formed frame refs in a generated header."""
    sizes: dict[int, int] = {}
    stack = [obj]
    while stack:
        v = stack.pop()
        if isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, msgpack.ExtType) and v.code == EXT_TENSOR:
            try:
                name, shape, _, loc = msgpack.unpackb(v.data)
                count = int(np.prod(shape, dtype=object)) if shape else 1
                sizes[int(loc)] = count * WIRE_DTYPES[name].itemsize
            except Exception:
                pass  # malformed on purpose
    return {k: v for k, v in sizes.items() if 1 <= k <= 8 and 0 <= v <= 1 << 12}


@st.composite
def near_valid_messages(draw: st.DrawFn) -> list[Any]:
    top = draw(mostly(st.just("list3"), st.just("other")))
    if top == "list3":
        obj: Any = [draw(versions), draw(metas), draw(values)]
    else:
        obj = draw(values)
    sized = draw(st.booleans())
    if sized:  # number the frame refs 1, 2, ... and size the frames to match: reach success
        obj = _renumber(obj, iter(range(1, 1000)))
    header = msgpack.packb(obj)
    if sized:
        sizes = _frame_sizes(obj)
        frames = [bytes(sizes.get(i, 0)) for i in range(1, max(sizes, default=0) + 1)]
    else:
        n = draw(st.integers(0, 4))
        frames = [bytes(draw(st.sampled_from([0, 1, 2, 4, 8, 16, 3, 24]))) for _ in range(n)]
    kind = draw(st.sampled_from(["bytes", "memoryview", "ndarray", "bytearray"]))
    conv = {
        "bytes": bytes,
        "memoryview": lambda b: memoryview(bytes(b)),
        "ndarray": lambda b: np.frombuffer(bytes(b), dtype=np.uint8),
        "bytearray": bytearray,
    }[kind]
    return [conv(header), *(conv(f) for f in frames)]


@fuzz(700)
@given(frames=near_valid_messages())
def test_near_valid_headers(frames: list[Any]) -> None:
    decodes_or_protocol_error(frames)
    decodes_or_protocol_error(frames, limits=SMALL)
    assert isinstance(peek_meta(frames[0]), dict)


def _resolver(desc: Any, nbytes: int) -> tuple[Any, str]:
    # A channel that answers anything, sometimes with the wrong size.
    size = nbytes if hash(repr(desc)) % 3 else (hash(repr(desc)) % 7)
    return bytes(min(size, 1 << 16)), "shm"


@fuzz(250)
@given(frames=near_valid_messages())
def test_near_valid_headers_with_resolver(frames: list[Any]) -> None:
    decodes_or_protocol_error(frames, resolver=_resolver, limits=SMALL)


VALID = encode(
    {"op": "fuzz", "id": 3},
    {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": [1 + 2j, "s", None],
     "c": np.ones((2, 2), np.int16, order="F"), "d": np.array(True)},  # fmt: skip
)
VALID_BYTES = [bytes(f) for f in VALID]


@fuzz(1500)
@given(
    pos=st.integers(0, len(VALID_BYTES[0]) - 1),
    byte=st.integers(0, 255),
    op=st.sampled_from(["flip", "insert", "delete", "truncate"]),
    frame_edit=st.sampled_from(["none", "drop", "extra", "grow", "shrink", "swap"]),
)
def test_mutated_valid_message(pos: int, byte: int, op: str, frame_edit: str) -> None:
    header = bytearray(VALID_BYTES[0])
    if op == "flip":
        header[pos] = byte
    elif op == "insert":
        header.insert(pos, byte)
    elif op == "delete":
        del header[pos]
    else:
        del header[pos:]
    frames: list[Any] = [bytes(header), *VALID_BYTES[1:]]
    if frame_edit == "drop":
        frames.pop()
    elif frame_edit == "extra":
        frames.append(b"\0" * byte)
    elif frame_edit == "grow":
        frames[1] += b"\0"
    elif frame_edit == "shrink":
        frames[2] = frames[2][:-1]
    elif frame_edit == "swap":
        frames[1], frames[2] = frames[2], frames[1]
    decodes_or_protocol_error(frames)
    assert isinstance(peek_meta(frames[0]), dict)


def test_unmutated_valid_message_decodes() -> None:
    out = decode(VALID_BYTES)
    assert out.meta == {"op": "fuzz", "id": 3}
    assert peek_meta(VALID_BYTES[0]) == {"op": "fuzz", "id": 3}
