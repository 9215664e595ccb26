"""Codec: message headers (MessagePack) plus out-of-band tensor frames. Never pickle."""

from ._dtypes import WIRE_DTYPES, dtype_name, native_name, wire_dtype
from ._handles import EXT_HANDLE, HandleRef, content_digest
from ._ipc import CUDA_IPC_PATH, EXT_CUDA_IPC, IpcRef
from ._limits import DEFAULT_LIMITS, Limits
from ._message import (
    COPIED_PATH,
    FRAME_PATH,
    PROTOCOL_VERSION,
    Caster,
    Decoded,
    Encoded,
    Exporter,
    Placer,
    Resolver,
    Widener,
    decode,
    encode,
    encode_payload,
    peek_meta,
)
from ._pool import BufferPool
from ._tensors import first_kind, from_numpy, restore_kind, tensor_kind, to_numpy
from ._trees import tree_map

__all__ = [
    "CUDA_IPC_PATH",
    "EXT_CUDA_IPC",
    "EXT_HANDLE",
    "IpcRef",
    "HandleRef",
    "content_digest",
    "BufferPool",
    "COPIED_PATH",
    "DEFAULT_LIMITS",
    "FRAME_PATH",
    "PROTOCOL_VERSION",
    "WIRE_DTYPES",
    "Caster",
    "Decoded",
    "Encoded",
    "Exporter",
    "Limits",
    "Placer",
    "Resolver",
    "Widener",
    "decode",
    "dtype_name",
    "encode",
    "encode_payload",
    "first_kind",
    "from_numpy",
    "native_name",
    "peek_meta",
    "restore_kind",
    "tensor_kind",
    "to_numpy",
    "tree_map",
    "wire_dtype",
]
from ._precision import (
    WIRE_DTYPES_ALLOWED,
    Exact,
    Narrowed,
    cast_bounds,
    cast_error_bound,
    castable,
    choose,
    exact,
    from_wire,
    to_wire,
    unit_roundoff,
    unwrap,
    validate_wire_dtype,
    wire_numpy_dtype,
)

__all__ += [
    "WIRE_DTYPES_ALLOWED",
    "Exact",
    "Narrowed",
    "cast_bounds",
    "cast_error_bound",
    "castable",
    "choose",
    "exact",
    "from_wire",
    "to_wire",
    "unit_roundoff",
    "unwrap",
    "validate_wire_dtype",
    "wire_numpy_dtype",
]
