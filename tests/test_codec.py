"""Codec: round trips (hypothesis), payload trees, tensor kinds, and every refusal."""

from __future__ import annotations

import math
import struct
import sys
import time
from typing import Any

import ml_dtypes
import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tensorwire.codec import (
    COPIED_PATH,
    DEFAULT_LIMITS,
    FRAME_PATH,
    PROTOCOL_VERSION,
    WIRE_DTYPES,
    Limits,
    decode,
    dtype_name,
    encode,
    encode_payload,
    first_kind,
    from_numpy,
    peek_meta,
    restore_kind,
    tensor_kind,
    to_numpy,
    wire_dtype,
)
from tensorwire.codec._message import EXT_COMPLEX, EXT_TENSOR
from tensorwire.errors import ProtocolError, VersionMismatch

BF16 = np.dtype(ml_dtypes.bfloat16)
NATIVE_NAMES = [n for n in WIRE_DTYPES if n != "bfloat16"]

# ---------------------------------------------------------------------------- helpers

# How a receiver may hold frames: bytes (copy=True), memoryview, numpy arrays, and
# writable buffers (zmq.Frame is writable).
FRAME_KINDS = {
    "bytes": lambda f: bytes(f),
    "memoryview": lambda f: memoryview(bytes(f)),
    "ndarray": lambda f: np.frombuffer(bytes(f), dtype=np.uint8),
    "bytearray": lambda f: bytearray(f),
    "as_encoded": lambda f: f,
}

FRAME_KIND = st.sampled_from(sorted(FRAME_KINDS))


def roundtrip(payload: Any, kind: str = "bytes", meta: dict[str, Any] | None = None, **kw: Any):
    enc = encode_payload(payload)
    frames = [FRAME_KINDS[kind](f) for f in enc.frames(meta if meta is not None else {"op": "x"})]
    return enc, frames, decode(frames, **kw)


def bits(a: np.ndarray) -> bytes:
    """The element bytes in logical C order, native byte order: NaN-exact comparison."""
    if a.dtype.byteorder == ">":
        a = a.byteswap().view(a.dtype.newbyteorder("="))
    return np.ascontiguousarray(a).reshape(-1).view(np.uint8).tobytes()


def native(dt: np.dtype) -> np.dtype:
    return dt.newbyteorder("=") if dt.byteorder == ">" else dt


def assert_same_array(got: Any, want: np.ndarray) -> None:
    assert isinstance(got, np.ndarray)
    assert got.dtype == native(want.dtype)
    assert got.dtype.isnative or got.dtype.byteorder == "|"
    assert got.shape == want.shape
    assert bits(got) == bits(want)


def frame_view(frame: Any) -> np.ndarray:
    return np.asarray(memoryview(frame)).reshape(-1).view(np.uint8)


def hdr(payload: Any = None, *, v: Any = PROTOCOL_VERSION, meta: Any = None) -> bytes:
    return msgpack.packb([v, {} if meta is None else meta, payload])


def tref(dtype: Any, shape: Any, order: Any = "C", location: Any = 1) -> msgpack.ExtType:
    return msgpack.ExtType(EXT_TENSOR, msgpack.packb([dtype, shape, order, location]))


def refused(frames: Any, *fragments: str, **kw: Any) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode(frames, **kw)
    for frag in fragments:
        assert frag in str(info.value), (frag, str(info.value))
    return info.value


# ---------------------------------------------------------------------------- strategies

SHAPES = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)


@st.composite
def wire_arrays(draw: st.DrawFn, names: list[str] | None = None) -> np.ndarray:
    name = draw(st.sampled_from(names or list(WIRE_DTYPES)))
    shape = draw(SHAPES)
    if name == "bfloat16":  # hypothesis knows no bfloat16: draw raw bit patterns
        return draw(hnp.arrays(np.uint16, shape)).view(BF16)
    return draw(hnp.arrays(np.dtype(name), shape))


LAYOUTS = {
    "C": lambda a: a,
    "F": np.asfortranarray,
    "T": lambda a: a.T,
    "step2": lambda a: a[::2] if a.ndim else a,
    "reversed_last": lambda a: a[..., ::-1] if a.ndim else a,
    "offset": lambda a: a[1:] if a.ndim else a,
    "byteswapped": lambda a: a.astype(a.dtype.newbyteorder(">")),
    "byteswapped_F": lambda a: np.asfortranarray(a.astype(a.dtype.newbyteorder(">"))),
    "broadcast": lambda a: np.broadcast_to(a, (2, *a.shape)),
}


# ---------------------------------------------------------------------------- round trips


@settings(max_examples=300, deadline=None)
@given(arr=wire_arrays(), layout=st.sampled_from(sorted(LAYOUTS)), kind=FRAME_KIND)
def test_array_roundtrip(arr: np.ndarray, layout: str, kind: str) -> None:
    a = LAYOUTS[layout](arr)
    enc, _, dec = roundtrip({"x": a}, kind)
    assert_same_array(dec.payload["x"], a)
    assert len(enc.tensor_frames) == 1 and len(enc.paths) == 1
    assert dec.paths == [FRAME_PATH]
    if not (a.flags.c_contiguous or a.flags.f_contiguous):
        assert enc.paths == [COPIED_PATH]


@settings(max_examples=100, deadline=None)
@given(arrs=st.lists(wire_arrays(), min_size=0, max_size=6), kind=FRAME_KIND)
def test_many_arrays_one_message(arrs: list[np.ndarray], kind: str) -> None:
    enc, _, dec = roundtrip(arrs, kind, meta={"op": "many", "n": len(arrs)})
    assert dec.meta == {"op": "many", "n": len(arrs)}
    assert len(enc.tensor_frames) == len(arrs) and len(dec.paths) == len(arrs)
    assert len(dec.payload) == len(arrs)
    for got, want in zip(dec.payload, arrs, strict=True):
        assert_same_array(got, want)


@pytest.mark.parametrize("name", list(WIRE_DTYPES))
def test_every_wire_dtype_named_and_roundtrips(name: str) -> None:
    dt = WIRE_DTYPES[name]
    assert dtype_name(dt) == name
    assert wire_dtype(name) == dt
    if dt.itemsize > 1:
        assert dtype_name(dt.newbyteorder(">")) == name
        assert dtype_name(dt.newbyteorder("<")) == name
    a = (np.arange(12) % 2).astype(dt).reshape(3, 4)
    for layout in ("C", "F", "T", "byteswapped", "step2"):
        b = LAYOUTS[layout](a)
        assert_same_array(roundtrip(b)[2].payload, b)


def test_platform_aliases_have_wire_names() -> None:
    for code, name in [("q", "int64"), ("l", "int64"), ("Q", "uint64"), ("L", "uint64"),
                       ("i", "int32"), ("I", "uint32"), ("h", "int16"), ("b", "int8"),
                       ("?", "bool"), ("e", "float16"), ("f", "float32"), ("d", "float64"),
                       ("F", "complex64"), ("D", "complex128")]:  # fmt: skip
        assert dtype_name(np.dtype(code)) == name


def test_nan_and_special_bits_survive() -> None:
    pattern = np.array([0x7FF8000000000001, 0xFFF0000000000000, 0x8000000000000000,
                        0x7FF4000000000000], dtype=np.uint64)  # fmt: skip
    for a in (pattern.view(np.float64), pattern.view(np.float32), pattern.view(np.float16),
              pattern.view(BF16), pattern.view(np.complex128)):  # fmt: skip
        for b in (a, a.astype(a.dtype.newbyteorder(">")), a[::-1]):
            assert_same_array(roundtrip(b)[2].payload, b)


def test_zero_d_and_empty() -> None:
    for a in (np.array(3.5), np.array(True), np.zeros((0,)), np.zeros((3, 0, 2), np.int16),
              np.zeros((0, 4), BF16, order="F"), np.array(1 + 2j, np.complex64)):  # fmt: skip
        enc, frames, dec = roundtrip(a)
        assert_same_array(dec.payload, a)
        assert memoryview(frames[1]).nbytes == a.nbytes


# ---------------------------------------------------------------------------- zero copy


@settings(max_examples=100, deadline=None)
@given(arr=wire_arrays(), kind=st.sampled_from(["bytes", "memoryview", "ndarray", "bytearray"]))
def test_zero_copy_both_ways(arr: np.ndarray, kind: str) -> None:
    enc = encode_payload(arr)
    assert enc.paths == [FRAME_PATH]
    if arr.size:
        assert np.shares_memory(frame_view(enc.tensor_frames[0]), arr)
    frames = [FRAME_KINDS[kind](f) for f in enc.frames({})]
    got = decode(frames).payload
    assert_same_array(got, arr)
    if arr.size:
        assert np.shares_memory(got, frame_view(frames[1]))
    if kind == "bytearray":
        assert got.flags.writeable  # a writable frame (like zmq.Frame) gives a writable array


def test_fortran_order_zero_copy() -> None:
    a = np.asfortranarray(np.arange(24, dtype=np.float32).reshape(2, 3, 4))
    enc = encode_payload(a)
    assert enc.paths == [FRAME_PATH]
    assert np.shares_memory(frame_view(enc.tensor_frames[0]), a)
    got = decode([bytes(f) for f in enc.frames({})]).payload
    assert got.flags.f_contiguous and not got.flags.c_contiguous
    np.testing.assert_array_equal(got, a)


def test_strided_array_is_copied_and_says_so() -> None:
    a = np.arange(20.0).reshape(4, 5)[:, ::2]
    enc = encode_payload(a)
    assert enc.paths == [COPIED_PATH]
    assert not np.shares_memory(frame_view(enc.tensor_frames[0]), a)
    np.testing.assert_array_equal(decode(enc.frames({})).payload, a)


def test_through_real_zmq_frames() -> None:
    zmq = pytest.importorskip("zmq")
    ctx = zmq.Context()
    try:
        a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
        a.bind("inproc://codec-test")
        b.connect("inproc://codec-test")
        x = np.arange(1000, dtype=np.float64).reshape(10, 100)
        payload = {"x": x, "y": x.T, "z": x[::3], "s": np.float32(2.5)}
        a.send_multipart(encode({"op": "t"}, payload), copy=False)
        frames = b.recv_multipart(copy=False)
        dec = decode(frames)
        for k in ("x", "y", "z"):
            np.testing.assert_array_equal(dec.payload[k], payload[k])
        assert dec.payload["s"].shape == () and dec.payload["s"].dtype == np.float32
        a.close(0)
        b.close(0)
    finally:
        ctx.term()


# ---------------------------------------------------------------------------- payload trees

int64s = st.integers(min_value=-(2**63), max_value=2**64 - 1)
leaves = (
    st.none()
    | st.booleans()
    | int64s
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.complex_numbers(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.binary(max_size=20)
    | wire_arrays()
)
# Meta is packed without the tensor/complex hook: plain msgpack values only.
meta_leaves = st.none() | st.booleans() | int64s | st.floats() | st.text(max_size=20) | \
    st.binary(max_size=20)  # fmt: skip
trees = st.recursive(
    leaves,
    lambda kids: st.lists(kids, max_size=4)
    | st.tuples(kids, kids)
    | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=20,
)


def assert_tree_equal(got: Any, want: Any) -> None:
    if isinstance(want, np.ndarray):
        assert_same_array(got, want)
    elif isinstance(want, (list, tuple)):
        assert type(got) is list and len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert_tree_equal(g, w)
    elif isinstance(want, dict):
        assert type(got) is dict and list(got) == list(want)
        for k in want:
            assert_tree_equal(got[k], want[k])
    elif isinstance(want, float):
        assert type(got) is float and struct.pack("<d", got) == struct.pack("<d", want)
    elif isinstance(want, complex):
        assert type(got) is complex
        assert_tree_equal(got.real, want.real)
        assert_tree_equal(got.imag, want.imag)
    else:
        assert type(got) is type(want) and got == want


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=trees, meta_extra=st.dictionaries(st.text(max_size=5), meta_leaves, max_size=3),
       kind=FRAME_KIND)  # fmt: skip
def test_payload_tree_roundtrip(tree: Any, meta_extra: dict[str, Any], kind: str) -> None:
    meta = {"op": "tree", **meta_extra}
    _, _, dec = roundtrip(tree, kind, meta=meta)
    assert_tree_equal(dec.payload, tree)
    assert_tree_equal(dec.meta, meta)


def test_scalars_and_none_payload() -> None:
    for v in (None, 0, -1, 2**64 - 1, -(2**63), 1.5, math.inf, True, False, 1 - 2j, "héllo",
              b"\x00\xff", [], {}, [None, [[]], {"a": {"b": [1, 2.0]}}]):  # fmt: skip
        assert_tree_equal(roundtrip(v)[2].payload, v)
    dec = decode(encode({"op": "noop"}))
    assert dec.meta == {"op": "noop"} and dec.payload is None


def test_numpy_scalars_become_zero_d_arrays() -> None:
    for s in (np.float32(1.5), np.int8(-3), np.uint64(2**64 - 1), np.bool_(True),
              np.complex64(1 + 1j), np.float16(0.5), BF16.type(1.25)):  # fmt: skip
        got = roundtrip({"s": s})[2].payload["s"]
        assert isinstance(got, np.ndarray) and got.shape == () and got.dtype == s.dtype
        assert bits(got) == bits(np.asarray(s))


def test_tensors_nested_deeply() -> None:
    a = np.arange(6, dtype=np.int32).reshape(2, 3)
    payload = [1, {"k": [a, (a.T, {"deep": [[a[:, 1]]]})]}, "s", a > 2]
    enc, frames, dec = roundtrip(payload)
    # a.T is Fortran-contiguous: sent as is; a[:, 1] is strided: copied.
    assert len(frames) == 5 and enc.paths == [FRAME_PATH, FRAME_PATH, COPIED_PATH, FRAME_PATH]
    np.testing.assert_array_equal(dec.payload[3], a > 2)
    p = dec.payload
    np.testing.assert_array_equal(p[1]["k"][0], a)
    np.testing.assert_array_equal(p[1]["k"][1][0], a.T)
    np.testing.assert_array_equal(p[1]["k"][1][1]["deep"][0][0], a[:, 1])


def test_placer_and_resolver_roundtrip() -> None:
    store: dict[str, bytes] = {}
    seen: list[tuple[Any, int]] = []

    def placer(arr: np.ndarray) -> tuple[Any, str]:
        if arr.size < 4:
            return None, FRAME_PATH  # small tensors stay in frames
        key = f"seg{len(store)}"
        store[key] = np.ascontiguousarray(arr).tobytes()
        return {"seg": key}, "shm"

    def resolver(desc: Any, nbytes: int) -> tuple[Any, str]:
        seen.append((desc, nbytes))
        return store[desc["seg"]], "shm"

    big, small = np.arange(10.0).reshape(2, 5).T, np.arange(3)
    enc = encode_payload([big, small], placer=placer)
    assert enc.paths == ["shm", FRAME_PATH] and len(enc.tensor_frames) == 1
    assert len(encode({"op": "p"}, [big, small], placer=placer)) == 2
    dec = decode([bytes(f) for f in enc.frames({"op": "p"})], resolver=resolver)
    assert dec.paths == ["shm", FRAME_PATH]
    np.testing.assert_array_equal(dec.payload[0], big)
    np.testing.assert_array_equal(dec.payload[1], small)
    assert seen == [({"seg": "seg0"}, big.nbytes)]


# ---------------------------------------------------------------------------- torch & dlpack


class DLPackOnly:
    """Exposes nothing but __dlpack__ (and what numpy asks of it)."""

    def __init__(self, arr: np.ndarray) -> None:
        self._arr = arr

    def __dlpack__(self, *args: Any, **kwargs: Any) -> Any:
        return self._arr.__dlpack__(*args, **kwargs)


def writable_roundtrip(payload: Any) -> Any:
    # bytearray frames are writable like zmq.Frame; torch.from_numpy warns on read-only ones.
    return decode([bytearray(f) for f in encode({}, payload)]).payload


TORCH_DTYPES = ["bool", "int8", "int16", "int32", "int64", "uint8", "float16", "bfloat16",
                "float32", "float64", "complex64", "complex128"]  # fmt: skip


@pytest.mark.parametrize("dtype", TORCH_DTYPES)
def test_torch_roundtrip_kinds(dtype: str) -> None:
    torch = pytest.importorskip("torch")
    tdt = getattr(torch, dtype)
    base = (torch.arange(24) % 3).to(tdt).reshape(2, 3, 4)
    for t in (base, base.transpose(0, 2), base[:, ::2], base[0], base[1, 2, 3]):
        payload = {"t": t, "l": [t, 1]}
        kind = first_kind(payload)
        assert kind == "torch" and tensor_kind(t) == "torch"
        out = restore_kind(writable_roundtrip(payload), kind)
        for got in (out["t"], out["l"][0]):
            assert isinstance(got, torch.Tensor) and got.dtype == tdt
            assert got.shape == t.shape
            assert torch.equal(got, t)
        assert out["l"][1] == 1


def test_torch_bfloat16_bits_exact() -> None:
    torch = pytest.importorskip("torch")
    raw = torch.tensor([0x7FC1, -128, -32768, 0x3F80, 0x0001], dtype=torch.int16)  # NaN, -inf, -0
    t = raw.view(torch.bfloat16)
    arr = to_numpy(t)
    assert arr.dtype == BF16 and np.shares_memory(arr, raw.numpy())
    back = from_numpy(writable_roundtrip(t), "torch")
    assert back.dtype == torch.bfloat16
    assert torch.equal(back.view(torch.int16), raw)


def test_torch_special_views() -> None:
    torch = pytest.importorskip("torch")
    z = torch.tensor([1 + 2j, 3 - 4j], dtype=torch.complex64)
    w = torch.ones(3, requires_grad=True) * 2
    for t, want in ((z.conj(), np.conj(z.numpy())), (z.conj().imag, -z.numpy().imag),
                    (w, np.full(3, 2.0, np.float32))):  # fmt: skip
        got = writable_roundtrip(t)
        np.testing.assert_array_equal(got, want)


def test_torch_unsupported_layouts_refused() -> None:
    torch = pytest.importorskip("torch")
    with pytest.raises(ProtocolError, match="[Ss]parse"):
        encode({}, torch.eye(3).to_sparse())


def test_restore_kind_and_first_kind() -> None:
    torch = pytest.importorskip("torch")
    a = np.arange(3)
    t = torch.arange(3)
    assert first_kind([1, "x", {"a": [None, (t,)]}, a]) == "torch"
    assert first_kind([1, {"a": a}, t]) == "numpy"
    assert first_kind({"k": [1, 2.0, "s"]}) is None
    assert first_kind(DLPackOnly(a)) == "dlpack"
    tree = {"a": a, "b": [a, (a, 3)], "c": "s"}
    assert restore_kind(tree, None) is tree
    assert restore_kind(tree, "numpy") is tree
    out = restore_kind(tree, "torch")
    assert isinstance(out["a"], torch.Tensor) and isinstance(out["b"][1][0], torch.Tensor)
    assert type(out["b"][1]) is tuple and out["b"][1][1] == 3 and out["c"] == "s"
    assert np.shares_memory(out["a"].numpy(), a)  # from_numpy shares, no copy
    assert from_numpy(a, None) is a
    bf = np.arange(4).astype(BF16)
    assert from_numpy(bf, "torch").dtype == torch.bfloat16


def test_dlpack_only_object() -> None:
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    obj = DLPackOnly(a)
    assert tensor_kind(obj) == "dlpack"
    assert tensor_kind(DLPackOnly) is None  # the class itself is not a tensor
    assert np.shares_memory(to_numpy(obj), a)
    enc, _, dec = roundtrip({"d": obj})
    np.testing.assert_array_equal(dec.payload["d"], a)
    assert restore_kind(dec.payload, "dlpack") is dec.payload


def test_dlpack_failure_is_protocol_error() -> None:
    class Broken:
        def __dlpack__(self, *args: Any, **kwargs: Any) -> Any:
            raise BufferError("nope")

    with pytest.raises(ProtocolError, match="__dlpack__"):
        encode({}, Broken())


def test_cuda_torch_tensor_refused() -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    with pytest.raises(ProtocolError, match="cuda.*CPU"):
        encode({}, {"x": torch.ones(3, device="cuda")})


def test_non_cpu_device_refused_without_cuda() -> None:
    torch = pytest.importorskip("torch")
    with pytest.raises(ProtocolError, match="meta.*CPU"):
        encode({}, torch.ones(3, device="meta"))


# ---------------------------------------------------------------------------- encode refusals


@pytest.mark.parametrize(
    "value, fragment",
    [
        (np.array([1, "a"], dtype=object), "unsupported dtype"),
        (np.zeros(2, dtype=[("a", "i4"), ("b", "f8")]), "unsupported dtype"),
        (np.array(["ab"]), "unsupported dtype"),
        (np.array([1], dtype="datetime64[s]"), "unsupported dtype"),
        (np.zeros(2, dtype=np.float128) if hasattr(np, "float128") else np.zeros(2, "V8"),
         "unsupported dtype"),
        (np.void(b"ab"), "unsupported dtype"),
        (object(), "cannot send a value of type object"),
        ({1, 2}, "cannot send a value of type set"),
        (2**64, "cannot (encode message|send a value of type int)"),
        (-(2**63) - 1, "cannot (encode message|send a value of type int)"),
    ],
)
def test_encode_refuses(value: Any, fragment: str) -> None:
    with pytest.raises(ProtocolError, match=fragment):
        encode({"op": "x"}, {"v": [value]})


def test_encode_names_supported_dtypes() -> None:
    with pytest.raises(ProtocolError) as info:
        encode({}, np.zeros(1, dtype=object))
    assert "bfloat16" in str(info.value) and "complex128" in str(info.value)


@pytest.mark.parametrize("bad", [np.arange(3), 1 + 2j, object(), 2**64, np.float32(1)])
def test_meta_takes_plain_values_only(bad: Any) -> None:
    with pytest.raises(ProtocolError, match="meta"):
        encode({"op": "x", "bad": bad}, None)
    enc = encode_payload([np.arange(3)])
    with pytest.raises(ProtocolError, match="meta"):
        enc.frames({"bad": bad})


def test_encoded_frames_can_be_built_twice() -> None:
    enc = encode_payload({"a": np.arange(4)})
    for meta in ({"id": 1}, {"id": 2, "t": 1.5}):
        dec = decode(enc.frames(meta))
        assert dec.meta == meta
        np.testing.assert_array_equal(dec.payload["a"], np.arange(4))


def test_peek_meta() -> None:
    meta = {"id": 7, "op": "matmul"}
    good = encode(meta, [np.arange(3)])
    assert peek_meta(good[0]) == meta
    # Undecodable as a whole (bad tensor refs, bad version), meta still readable.
    assert peek_meta(hdr(tref("float99", [1]), meta=meta)) == meta
    assert peek_meta(hdr(msgpack.ExtType(42, b""), v=9, meta=meta)) == meta
    # A truncated payload does not hide the meta in front of it.
    assert peek_meta(good[0][:-3]) == meta
    assert peek_meta(memoryview(good[0])) == meta
    for junk in (b"", b"\xc1", good[0][:4], msgpack.packb([1, [], None]), msgpack.packb({}),
                 msgpack.packb([1, {}]), msgpack.packb([1, {"a": 1}, None, None])):  # fmt: skip
        assert peek_meta(junk) == {}


# ---------------------------------------------------------------------------- decode refusals


def test_valid_baseline() -> None:
    frames = [hdr({"x": tref("int16", [2, 3], "F", 1)}), bytes(12)]
    got = decode(frames).payload["x"]
    assert got.shape == (2, 3) and got.dtype == np.int16 and got.flags.f_contiguous


def test_empty_message() -> None:
    refused([], "empty message")


@pytest.mark.parametrize("header", [b"", b"\xc1", b"\xff\xff\xff", b"\x92\x01", b"\x81\xa1"])
def test_malformed_header(header: bytes) -> None:
    refused([header], "header")


def test_truncated_header() -> None:
    full = hdr({"x": [1, 2, 3], "s": "some text"}, meta={"op": "truncate"})
    for cut in range(len(full)):
        refused([full[:cut]], "header")


def test_trailing_garbage_after_header() -> None:
    refused([hdr() + b"\x00"], "malformed header")


@pytest.mark.parametrize(
    "obj", [[1, 2], [1, {}, None, None], [], 1, "v", None, {"v": 1, "m": {}, "p": None}, b"x"]
)
def test_header_not_a_message(obj: Any) -> None:
    refused([msgpack.packb(obj)], "not a tensorwire message")


@pytest.mark.parametrize("meta", [None, [], 1, "m", b"m"])
def test_header_without_meta_map(meta: Any) -> None:
    refused([msgpack.packb([PROTOCOL_VERSION, meta, None])], "meta map")


@pytest.mark.parametrize("v", [0, 2, 99, -1, "1", 1.0, True, None, [1]])
def test_wrong_protocol_version(v: Any) -> None:
    err = refused([hdr(v=v)], "protocol", repr(v), f"this side speaks {PROTOCOL_VERSION}")
    assert isinstance(err, VersionMismatch)


def test_version_field_holding_a_tensor() -> None:
    # Regression: `tensor != 1` used to raise ValueError (ambiguous truth value).
    for n in (0, 1, 2, 5):
        err = refused([hdr(v=tref("int8", [n])), bytes(n)], "protocol")
        assert isinstance(err, VersionMismatch)


def test_frame_length_mismatch() -> None:
    refused([hdr(tref("int32", [2, 3])), bytes(23)], "frame 1: header says 24 bytes, frame has 23")
    refused([hdr(tref("int32", [2, 3])), bytes(25)], "frame 1: header says 24 bytes, frame has 25")
    refused([hdr([tref("int8", [0], "C", 1), tref("int8", [2], "C", 2)]), b"x", b"ab"],
            "frame 1: header says 0 bytes, frame has 1")  # fmt: skip


def test_frame_referenced_twice() -> None:
    refused([hdr([tref("int8", [2]), tref("int8", [2])]), b"ab"], "frame 1 is referenced twice")


def test_unreferenced_extra_frames() -> None:
    refused([hdr(tref("int8", [2])), b"ab", b"cd"], "frames [2] are not referenced")
    refused([hdr(None), b"", b"x"], "frames [1, 2] are not referenced")


@pytest.mark.parametrize("loc", [0, 2, 7, -1, 2**64 - 1, -(2**63)])
def test_frame_index_out_of_range(loc: int) -> None:
    refused([hdr(tref("int8", [1], "C", loc)), b"a"], f"refers to frame {loc}", "has 2 frames")


@pytest.mark.parametrize("dim", [-1, -(2**63)])
def test_negative_dim(dim: int) -> None:
    refused([hdr(tref("int8", [2, dim])), b""], "invalid dim", repr(dim))


@pytest.mark.parametrize("dim", [1.5, 2.0, "3", True, None, [2], {"a": 1}])
def test_non_int_dim(dim: Any) -> None:
    refused([hdr(tref("int8", [dim])), b"\0\0"], "invalid dim")


@pytest.mark.parametrize("shape", [3, "3", None, {"a": 1}, 1.5])
def test_shape_not_a_list(shape: Any) -> None:
    refused([hdr(tref("int8", shape)), b"\0\0\0"], "tensor shape must be a list")


def test_too_many_dims() -> None:
    refused([hdr(tref("int8", [1] * 33)), b"\0"], "at most 32 dims")
    assert decode([hdr(tref("int8", [1] * 32)), b"\0"]).payload.ndim == 32
    refused([hdr(tref("int8", [1] * 3)), b"\0"], "at most 2 dims", limits=Limits(max_ndim=2))


@pytest.mark.parametrize(
    "shape, dtype",
    [([2**40, 2**40], "int8"), ([2**64 - 1, 2**64 - 1], "complex128"), ([2**63 - 1], "float64"),
     ([2**31] * 32, "bool"), ([2**34 + 1, 1], "int8"), ([2**31, 2**3], "float64")],  # fmt: skip
)
def test_shape_over_max_tensor_bytes_fails_before_allocating(shape: list[int], dtype: str) -> None:
    t0 = time.perf_counter()
    refused([hdr(tref(dtype, shape)), b""], "needs", "bytes; the limit is")
    assert time.perf_counter() - t0 < 0.5


def test_small_max_tensor_bytes() -> None:
    lim = Limits(max_tensor_bytes=100)
    assert decode([hdr(tref("float32", [25])), bytes(100)], limits=lim).payload.size == 25
    refused([hdr(tref("float32", [26])), bytes(104)], "needs 104 bytes; the limit is 100",
            limits=lim)  # fmt: skip


def test_zero_size_tensor_with_huge_dim() -> None:
    # Zero bytes, but numpy cannot represent the dim: still a ProtocolError.
    refused([hdr(tref("int8", [0, 2**64 - 1])), b""])
    got = decode([hdr(tref("float32", [0, 2**20])), b""]).payload
    assert got.shape == (0, 2**20)


@pytest.mark.parametrize("name", ["float8", "object", "O", "<f4", "f4", "int128", "", 5, None,
                                  b"int8", ["int8"]])  # fmt: skip
def test_unknown_dtype_name(name: Any) -> None:
    refused([hdr(tref(name, [1])), b"\0"], "unknown dtype", "supported")


@pytest.mark.parametrize("order", ["A", "K", "c", "", None, 0])
def test_bad_order(order: Any) -> None:
    refused([hdr(tref("int8", [1], order)), b"\0"], "order must be")


@pytest.mark.parametrize(
    "ref", [[], ["int8", [1], "C"], ["int8", [1], "C", 1, "float32", 0], "x", 1, {}]
)
def test_malformed_tensor_reference(ref: Any) -> None:
    refused([hdr(msgpack.ExtType(EXT_TENSOR, msgpack.packb(ref))), b"\0"],
            "malformed tensor reference")  # fmt: skip


@pytest.mark.parametrize(
    "data, fragment",
    [(msgpack.packb([1.0]), "malformed complex"), (msgpack.packb(1), "malformed complex"),
     (msgpack.packb([1.0, 2.0, 3.0]), "malformed complex"), (msgpack.packb(["a", "b"]), "complex"),
     (msgpack.packb([None, 1]), "complex"), (b"\xc1", "malformed header"),
     (b"", "malformed header")],  # fmt: skip
)
def test_malformed_complex(data: bytes, fragment: str) -> None:
    refused([hdr(msgpack.ExtType(EXT_COMPLEX, data))], fragment)


@pytest.mark.parametrize("code", [0, 5, 9, 127, -2, -128])  # 1-4 are ours
def test_unknown_ext_type(code: int) -> None:
    # fixext1 by hand: msgpack.ExtType refuses negative codes (reserved by msgpack).
    ext = b"\xd4" + code.to_bytes(1, "big", signed=True) + b"x"
    refused([msgpack.packb([PROTOCOL_VERSION, {}]).replace(b"\x92", b"\x93", 1) + ext],
            f"unknown extension type {code}")  # fmt: skip


def test_too_many_frames() -> None:
    refused([hdr()] + [b""] * 1024, "1025 frames; the limit is 1024")
    lim = Limits(max_frames=3)
    refused([hdr([tref("int8", [0], "C", i) for i in (1, 2, 3)]), b"", b"", b""],
            "4 frames; the limit is 3", limits=lim)  # fmt: skip


def test_oversized_header() -> None:
    frame = hdr("x" * 100)
    lim = Limits(max_header_bytes=len(frame) - 1)
    refused([frame], f"header is {len(frame)} bytes; the limit is {len(frame) - 1}", limits=lim)
    assert decode([frame], limits=Limits(max_header_bytes=len(frame))).payload == "x" * 100
    assert DEFAULT_LIMITS.max_header_bytes >= 1 << 20


@pytest.mark.parametrize("loc", ["shm:abc", {"seg": "x", "off": 0}, [1, 2], None, 1.0, True])
def test_channel_descriptor_without_resolver(loc: Any) -> None:
    refused([hdr(tref("int8", [4], "C", loc))], "channel")


def test_resolver_short_buffer_is_protocol_error() -> None:
    refused([hdr(tref("int8", [4], "C", "seg"))], resolver=lambda d, n: (b"ab", "shm"))


def test_non_str_map_keys_refused() -> None:
    # msgpack would accept int keys on encode; decode is strict (str keys only).
    refused([msgpack.packb([1, {1: 2}, None])], "malformed header")


def test_deeply_nested_header() -> None:
    # A valid [version, meta, ...] prefix, then a payload nested 100,000 deep.
    frame = b"\x93" + msgpack.packb(PROTOCOL_VERSION) + b"\x80" + b"\x91" * 100_000 + b"\xc0"
    refused([frame], "malformed header")


def test_errors_are_protocol_errors_not_leaks() -> None:
    # The resolver's own failure is reported as a ProtocolError too.
    def resolver(desc: Any, nbytes: int) -> Any:
        raise KeyError(desc)

    refused([hdr(tref("int8", [4], "C", "gone"))], "malformed header", resolver=resolver)


if sys.byteorder != "little":  # pragma: no cover
    pytestmark = pytest.mark.skip("tests assume a little-endian host")


@pytest.mark.parametrize("original", [0, "int8", "float16", None])
def test_bad_wire_cast_original_is_refused(original: Any) -> None:
    ref = msgpack.ExtType(EXT_TENSOR, msgpack.packb(["bfloat16", [1], "C", 1, original]))
    with pytest.raises(ProtocolError):
        decode([hdr(ref), b"\0\0"])


def _narrowed_ref(dtype: str, original: Any) -> msgpack.ExtType:
    return msgpack.ExtType(EXT_TENSOR, msgpack.packb([dtype, [2], "C", 1, original]))


@pytest.mark.parametrize("widener", ["from_wire", "lazy"])
@pytest.mark.parametrize(
    ("dtype", "original", "fragment"),
    [("bfloat16", "int8", "only float32 and float64"), ("bfloat16", 7, "only float32"),
     ("int16", "float32", "must be bfloat16 or float16"),
     ("float32", "float64", "must be bfloat16 or float16")],  # fmt: skip
)
def test_bad_narrowed_tensors_are_refused_eagerly_and_lazily(
    widener: str, dtype: str, original: Any, fragment: str
) -> None:
    from tensorwire.codec import Narrowed

    frame = b"\0" * (2 * np.dtype(wire_dtype(dtype)).itemsize)
    kw = {"widener": Narrowed.checked} if widener == "lazy" else {}
    refused([hdr(_narrowed_ref(dtype, original)), frame], fragment, **kw)


def test_a_lazily_decoded_narrowed_tensor_widens_like_from_wire() -> None:
    from tensorwire.codec import Narrowed, to_wire

    x = np.array([1.5, -2.25, 3e38], np.float32)
    enc = encode_payload({"t": x}, caster=lambda a: to_wire(a, "bfloat16"))
    frames = enc.frames({})
    lazy = decode(frames, widener=Narrowed.checked).payload["t"]
    assert isinstance(lazy, Narrowed) and lazy.original == "float32"
    assert lazy.nbytes == x.nbytes
    np.testing.assert_array_equal(lazy.widen(), decode(frames).payload["t"])
