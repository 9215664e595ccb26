"""Size limits checked before anything received is allocated."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    max_header_bytes: int = 16 << 20
    max_frames: int = 1024
    max_ndim: int = 32
    max_tensor_bytes: int = 16 << 30
    max_message_bytes: int = 32 << 30


DEFAULT_LIMITS = Limits()
