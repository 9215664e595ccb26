"""A message: one MessagePack header frame plus one raw frame per tensor.

Header = [PROTOCOL_VERSION, meta, payload] (a msgpack array). In the payload every
tensor is an ExtType(TENSOR) holding [dtype, shape, order, location], where
location is the index of its raw frame, or a channel descriptor (shared memory)
resolved by the receiver. Tensor bytes never pass through msgpack, and nothing
received is ever unpickled or evaluated: the only types that come out are
msgpack's own, complex numbers and numpy arrays of the dtypes in _dtypes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from ..errors import ProtocolError, SessionExpired, VersionMismatch
from ._dtypes import dtype_name, wire_dtype
from ._handles import EXT_HANDLE, HandleRef, handle_from_wire
from ._ipc import CUDA_IPC_PATH, EXT_CUDA_IPC, IpcRef, received_ipc
from ._limits import DEFAULT_LIMITS, Limits
from ._precision import Exact, Narrowed, from_wire
from ._tensors import tensor_kind, to_numpy

PROTOCOL_VERSION = 1
EXT_TENSOR = 1
EXT_COMPLEX = 2

# A placer may put a tensor somewhere other than a frame (shared memory): it returns
# (descriptor, path name), or (None, path name) to send a frame and say why.
Placer = Callable[[np.ndarray], tuple[Any, str]]
# A caster narrows a tensor for the wire: (array to send, original dtype name or None).
# It may be given a Narrowed (a received tensor kept narrow) as well as an array.
Caster = Callable[[Any], tuple[np.ndarray, str | None]]
# An exporter turns a tensor into a CUDA IPC reference (same-host CUDA memory), or returns
# None to send it as usual; it raises when the tensor can go neither way.
Exporter = Callable[[Any], IpcRef | None]
# A widener undoes the cast of a received tensor: (narrow array, original dtype name).
Widener = Callable[[np.ndarray, str], Any]
# A resolver turns a received descriptor into (buffer of exactly nbytes, path name).
Resolver = Callable[[Any, int], tuple[Any, str]]
# Picks the resolver from the meta (the session a request belongs to); None: frames only.
ResolverFor = Callable[[dict[str, Any]], Resolver | None]

# msgpack.packb builds (and mallocs the buffer of) a fresh Packer per call: ~0.5 us of a
# small call's encode. Each thread keeps its Packers instead: one plain one for the meta and
# the small inner records, and one per nesting level of encode_payload (whose `default` hook
# sees that call's state). A Packer that grew past PACKER_KEEP_BYTES is dropped after use.
_local = threading.local()
PACKER_KEEP_BYTES = 1 << 20


def _plain_packer() -> Any:
    packer = getattr(_local, "packer", None)
    if packer is None:
        packer = _local.packer = msgpack.Packer()
    return packer


def _pack_inner(obj: Any) -> bytes:
    data: bytes = _plain_packer().pack(obj)
    return data


def _ext(code: int, data: bytes) -> msgpack.ExtType:
    """msgpack.ExtType(code, data) without its Python-level argument checks (ours are known
    good: a constant code and packed bytes); the same namedtuple all the same."""
    return _new_tuple(msgpack.ExtType, (code, data))


_new_tuple: Callable[[type[msgpack.ExtType], tuple[int, bytes]], msgpack.ExtType] = tuple.__new__


FRAME_PATH = "frame"
RESIDENT_PATH = "resident"  # a handle: the tensor stayed on the server
COPIED_PATH = "frame(copied: non-contiguous)"


@dataclass(slots=True)
class Encoded:
    """An encoded payload: its msgpack bytes, the tensor frames, and each tensor's path."""

    payload: bytes = b""
    tensor_frames: list[Any] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    handles: int = 0  # resident-tensor references in the payload
    nbytes: int = 0  # tensor bytes carried (frames and channel alike)

    def frames(self, meta: dict[str, Any]) -> list[Any]:
        """The message frames. Meta is packed last so it can carry the encode time."""
        try:
            packed_meta = _pack_inner(meta)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ProtocolError(f"cannot encode message meta: {exc}") from exc
        return [_HEADER_PREFIX + packed_meta + self.payload, *self.tensor_frames]


_NO_OUT = Encoded()  # what an idle encoder points at: no call's objects kept alive
# fixarray of 3 elements, then the version: [v, meta, payload] assembled by concatenation.
_HEADER_PREFIX = b"\x93" + msgpack.packb(PROTOCOL_VERSION)


def _contiguous_bytes(arr: np.ndarray) -> tuple[np.ndarray, str, bool]:
    """A flat uint8 view of the array's bytes, its order, and whether we had to copy."""
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if arr.flags.c_contiguous:
        if arr.ndim == 1:  # already flat: one view, not two
            return arr.view(np.uint8), "C", False
        return arr.reshape(-1).view(np.uint8), "C", False
    if arr.flags.f_contiguous:
        return arr.T.reshape(-1).view(np.uint8), "F", False
    return np.ascontiguousarray(arr).reshape(-1).view(np.uint8), "C", True


def encode_payload(
    payload: Any, placer: Placer | None = None, caster: Caster | None = None,
    exporter: Exporter | None = None,
) -> Encoded:
    """Encode a payload tree; tensors become out-of-band frames (or channel descriptors).

    `caster` narrows tensors for the wire (bfloat16/float16); the receiver widens them
    back. Tensors wrapped in `Exact` are never cast. `exporter` sends CUDA tensors as
    CUDA IPC references instead of bytes.
    """
    encoder = _Encoder.take()
    out = encoder.out = Encoded()
    encoder.placer, encoder.caster, encoder.exporter = placer, caster, exporter
    try:
        out.payload = encoder.packer.pack(payload)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ProtocolError(f"cannot encode message: {exc}") from exc
    finally:
        encoder.give_back(len(out.payload))
    return out


class _Encoder:
    """One encode_payload call's `default` hook, on a Packer this thread keeps for it."""

    __slots__ = ("packer", "out", "placer", "caster", "exporter")

    def __init__(self) -> None:
        self.packer = msgpack.Packer(default=self.default)
        self.out = _NO_OUT
        self.placer: Placer | None = None
        self.caster: Caster | None = None
        self.exporter: Exporter | None = None

    @staticmethod
    def take() -> _Encoder:
        """This thread's free encoder (a hook that encodes again nests one level deeper)."""
        free: list[_Encoder] | None = getattr(_local, "encoders", None)
        if free is None:
            free = _local.encoders = []
        return free.pop() if free else _Encoder()

    def give_back(self, packed: int) -> None:
        self.out, self.placer, self.caster, self.exporter = _NO_OUT, None, None, None
        if packed <= PACKER_KEEP_BYTES:  # its buffer stays as large as the largest payload
            _local.encoders.append(self)

    def default(self, obj: Any) -> Any:
        out = self.out
        if type(obj) is np.ndarray:  # the usual tensor: skip the checks below
            return _encode_tensor(obj, out, self.placer, self.caster)
        if isinstance(obj, complex):
            return _ext(EXT_COMPLEX, _pack_inner([obj.real, obj.imag]))
        if isinstance(obj, HandleRef):
            out.handles += 1
            out.paths.append(RESIDENT_PATH)
            return _ext(EXT_HANDLE, _pack_inner(obj.wire()))
        cast = self.caster
        if isinstance(obj, Exact):
            obj, cast = obj.value, None
        if self.exporter is not None and (ref := self.exporter(obj)) is not None:
            obj = ref
        if isinstance(obj, IpcRef):
            out.handles += 1
            out.paths.append(CUDA_IPC_PATH)
            if not obj.raw:  # packed once: a client sends the same reference again and again
                obj.raw = _pack_inner(obj.wire())
            return _ext(EXT_CUDA_IPC, obj.raw)
        if isinstance(obj, Narrowed):
            return _encode_tensor(obj if cast is not None else obj.widen(), out, self.placer, cast)
        if isinstance(obj, np.generic):
            obj = np.asarray(obj)
        if tensor_kind(obj) is None:
            raise ProtocolError(f"cannot send a value of type {type(obj).__name__}")
        return _encode_tensor(to_numpy(obj), out, self.placer, cast)


def encode(meta: dict[str, Any], payload: Any = None, placer: Placer | None = None) -> list[Any]:
    """Encode a whole message: [header, tensor frames...]."""
    return encode_payload(payload, placer).frames(meta)


def _encode_tensor(
    arr: Any, out: Encoded, placer: Placer | None, caster: Caster | None
) -> msgpack.ExtType:
    original = None
    if caster is not None:
        arr, original = caster(arr)
    name = dtype_name(arr.dtype)
    shape = list(arr.shape)
    location, path = placer(arr) if placer is not None else (None, FRAME_PATH)
    if location is not None:
        ref = [name, shape, "C", location]
    else:
        flat, order, copied = _contiguous_bytes(arr)
        ref = [name, shape, order, len(out.tensor_frames) + 1]
        out.tensor_frames.append(flat)
        path = COPIED_PATH if copied else path
    if original is not None:
        ref.append(original)  # cast for the wire: the receiver widens it back
        path = f"{path}+{name}"
    out.paths.append(path)
    out.nbytes += arr.nbytes
    return _ext(EXT_TENSOR, _pack_inner(ref))


@dataclass(slots=True)
class Decoded:
    meta: dict[str, Any]
    payload: Any
    paths: list[str] = field(default_factory=list)
    handles: int = 0  # resident-tensor references in the payload
    nbytes: int = 0  # tensor bytes carried
    narrowed: int = 0  # tensors that came narrowed for the wire (given to the widener)


def decode(
    frames: Sequence[Any],
    limits: Limits = DEFAULT_LIMITS,
    resolver: Resolver | None = None,
    resolver_for: ResolverFor | None = None,
    widener: Widener = from_wire,
) -> Decoded:
    """Decode and validate a message. Every problem is a ProtocolError naming it.

    `widener` turns each tensor narrowed for the wire back into what was sent (a pooled
    `from_wire`), or into a `Narrowed` placeholder for a receiver that widens later."""
    if not frames:
        raise ProtocolError("empty message")
    count = len(frames)
    if count > limits.max_frames:
        raise ProtocolError(f"message has {count} frames; the limit is {limits.max_frames}")
    header = memoryview(frames[0])
    total = header.nbytes
    for i in range(1, count):  # a loop, not sum() over a generator: most messages have 1-2
        total += memoryview(frames[i]).nbytes
    if total > limits.max_message_bytes:
        raise ProtocolError(f"message is {total} bytes; the limit is {limits.max_message_bytes}")
    if header.nbytes > limits.max_header_bytes:
        raise ProtocolError(
            f"header is {header.nbytes} bytes; the limit is {limits.max_header_bytes}"
        )
    state = _DecodeState(frames, limits, resolver, widener)
    try:
        meta, payload = _unpack(header, state, resolver_for)
    except (ProtocolError, SessionExpired):  # resolver_for: an unknown session stays one
        raise
    except Exception as exc:  # msgpack raises many types for malformed input
        raise ProtocolError(f"malformed header: {type(exc).__name__}: {exc}") from None
    if len(state.used) != count - 1:  # each use was checked to be a distinct frame
        unused = set(range(1, count)) - state.used
        raise ProtocolError(f"frames {sorted(unused)} are not referenced by the header")
    # Positional (meta, payload, paths, handles, nbytes, narrowed): half the cost of keywords.
    return Decoded(meta, payload, state.paths, state.handles, state.nbytes, state.narrowed)


def _unpack(
    header: memoryview, state: _DecodeState, resolver_for: ResolverFor | None
) -> tuple[dict[str, Any], Any]:
    """[version, meta, payload], checked. With `resolver_for`, read them one by one so
    the meta picks the channel that resolves the payload's tensors."""
    if resolver_for is None:  # one C call: the fast path
        obj = msgpack.unpackb(header, ext_hook=state.ext_hook, raw=False, strict_map_key=True)
        if not isinstance(obj, list) or len(obj) != 3:
            raise ProtocolError("header is not a tensorwire message")
        _check_version(obj[0])
        return _check_meta(obj[1]), obj[2]
    unpacker = msgpack.Unpacker(
        raw=False, strict_map_key=True, ext_hook=state.ext_hook,
        max_buffer_size=max(header.nbytes, 1),
    )  # fmt: skip
    unpacker.feed(header)
    try:
        length = unpacker.read_array_header()
    except (ValueError, msgpack.OutOfData):  # not an array at all
        length = -1
    if length != 3:
        raise ProtocolError("header is not a tensorwire message")
    _check_version(unpacker.unpack())
    meta = _check_meta(unpacker.unpack())
    state.resolver = resolver_for(meta)
    payload = unpacker.unpack()
    if unpacker.tell() != header.nbytes:
        raise ProtocolError(f"malformed header: {header.nbytes - unpacker.tell()} trailing bytes")
    return meta, payload


def _check_version(version: Any) -> None:
    # Exact int check: a decoded tensor here would make `!=` elementwise (ValueError).
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise VersionMismatch(
            f"peer speaks tensorwire protocol {_short(version)}; "
            f"this side speaks {PROTOCOL_VERSION}"
        )


def _check_meta(meta: Any) -> dict[str, Any]:
    if not isinstance(meta, dict):
        raise ProtocolError("header has no meta map")
    return meta


class _DecodeState:
    __slots__ = ("frames", "limits", "resolver", "widener", "used", "paths", "handles",
                 "nbytes", "narrowed")  # fmt: skip

    def __init__(
        self,
        frames: Sequence[Any],
        limits: Limits,
        resolver: Resolver | None,
        widener: Widener = from_wire,
    ) -> None:
        self.frames = frames
        self.limits = limits
        self.resolver = resolver
        self.widener = widener
        self.used: set[int] = set()
        self.paths: list[str] = []
        self.handles = 0
        self.nbytes = 0
        self.narrowed = 0

    def ext_hook(self, code: int, data: bytes) -> Any:
        if code == EXT_TENSOR:  # the usual one first
            return self.tensor(msgpack.unpackb(data, raw=False))
        if code == EXT_HANDLE:
            self.handles += 1
            self.paths.append(RESIDENT_PATH)
            return handle_from_wire(msgpack.unpackb(data, raw=False))
        if code == EXT_CUDA_IPC:
            self.handles += 1
            self.paths.append(CUDA_IPC_PATH)
            return received_ipc(data)
        if code == EXT_COMPLEX:
            parts = msgpack.unpackb(data)
            if not (isinstance(parts, list) and len(parts) == 2):
                raise ProtocolError("malformed complex number")
            return complex(*parts)
        raise ProtocolError(f"unknown extension type {code}")

    def tensor(self, ref: Any) -> Any:
        if not (isinstance(ref, list) and len(ref) in (4, 5)):
            raise ProtocolError("malformed tensor reference")
        if len(ref) == 4:  # the usual one: sent as it is
            return self._tensor(*ref)
        # It was narrowed for the wire: widen it back to what was sent.
        name, shape, order, location, original = ref
        narrow = self._tensor(name, shape, order, location)
        self.paths[-1] += f"+{name}"
        self.narrowed += 1
        return self.widener(narrow, original)

    def _tensor(self, name: Any, shape: Any, order: Any, location: Any) -> np.ndarray:
        dtype = wire_dtype(name)
        nbytes = self._checked_nbytes(shape, dtype.itemsize)
        self.nbytes += nbytes
        if order not in ("C", "F"):
            raise ProtocolError(f"tensor order must be 'C' or 'F', got {order!r}")
        buf = self._buffer(location, nbytes)
        if nbytes == 0:
            return np.empty(shape, dtype=dtype, order=order)
        # Positional: numpy parses frombuffer's keywords slowly (0.46 against 0.20 us).
        arr = np.frombuffer(buf, dtype, nbytes // dtype.itemsize)
        return arr if len(shape) == 1 else arr.reshape(shape, order=order)

    def _checked_nbytes(self, shape: Any, itemsize: int) -> int:
        if not isinstance(shape, list) or len(shape) > self.limits.max_ndim:
            raise ProtocolError(f"tensor shape must be a list of at most "
                                f"{self.limits.max_ndim} dims, got {_short(shape)}")
        count = 1
        for dim in shape:
            if type(dim) is not int or dim < 0:
                raise ProtocolError(f"tensor shape {_short(shape)} has an invalid dim {dim!r}")
            count *= dim  # Python ints: no overflow
        nbytes = count * itemsize
        if nbytes > self.limits.max_tensor_bytes:
            raise ProtocolError(
                f"tensor of shape {_short(shape)} needs {nbytes} bytes; "
                f"the limit is {self.limits.max_tensor_bytes}"
            )
        return nbytes

    def _buffer(self, location: Any, nbytes: int) -> Any:
        if type(location) is not int:
            if self.resolver is None:
                raise ProtocolError("tensor lives in a channel this connection does not have")
            buf, path = self.resolver(location, nbytes)
            self.paths.append(path)
            return buf
        if not 1 <= location < len(self.frames):
            raise ProtocolError(
                f"tensor refers to frame {location}; the message has {len(self.frames)} frames"
            )
        if location in self.used:
            raise ProtocolError(f"frame {location} is referenced twice")
        self.used.add(location)
        frame = self.frames[location]
        size = memoryview(frame).nbytes
        if size != nbytes:
            raise ProtocolError(f"frame {location}: header says {nbytes} bytes, frame has {size}")
        self.paths.append(FRAME_PATH)
        return frame


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def peek_meta(header: Any) -> dict[str, Any]:
    """The meta map of a header that failed to decode, best effort; {} if unreadable.

    Lets a receiver address its error reply to the right request id. Reads only
    the version and meta, so a truncated or malformed payload does not hide them.
    """
    try:
        unpacker = msgpack.Unpacker(raw=False, ext_hook=lambda code, data: None,
                                    max_buffer_size=len(header) or 1)
        unpacker.feed(header)
        if unpacker.read_array_header() != 3:
            return {}
        unpacker.skip()
        meta = unpacker.unpack()
    except Exception:  # anything unreadable simply has no meta
        return {}
    return meta if isinstance(meta, dict) else {}
