"""Codec: message headers (MessagePack) plus out-of-band tensor frames. Never pickle."""

from ._dtypes import WIRE_DTYPES, dtype_name, wire_dtype
from ._limits import DEFAULT_LIMITS, Limits
from ._message import (
    COPIED_PATH,
    FRAME_PATH,
    PROTOCOL_VERSION,
    Decoded,
    Encoded,
    Placer,
    Resolver,
    decode,
    encode,
    encode_payload,
    peek_meta,
)
from ._tensors import first_kind, from_numpy, restore_kind, tensor_kind, to_numpy

__all__ = [
    "COPIED_PATH",
    "DEFAULT_LIMITS",
    "FRAME_PATH",
    "PROTOCOL_VERSION",
    "WIRE_DTYPES",
    "Decoded",
    "Encoded",
    "Limits",
    "Placer",
    "Resolver",
    "decode",
    "dtype_name",
    "encode",
    "encode_payload",
    "first_kind",
    "from_numpy",
    "peek_meta",
    "restore_kind",
    "tensor_kind",
    "to_numpy",
    "wire_dtype",
]
