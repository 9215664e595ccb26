"""Byte sizes as people write them: "1KB", "10MB" (powers of 1024, as in the seed's 10 MB)."""

from __future__ import annotations

import re

_UNITS = {"": 1, "B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30,
          "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30}  # fmt: skip
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")


def parse_size(text: str) -> int:
    """Bytes in "10MB", "1KB", "512" (1 KB = 1024 bytes)."""
    m = _SIZE.match(text)
    unit = m.group(2).upper() if m else ""
    if m is None or unit not in _UNITS:
        raise ValueError(f"size {text!r}: expected a number and one of B, KB, MB, GB")
    nbytes = int(float(m.group(1)) * _UNITS[unit])
    if nbytes <= 0:
        raise ValueError(f"size {text!r}: must be positive")
    return nbytes


def parse_sizes(text: str) -> list[int]:
    """Bytes in a comma-separated list: "1KB,1MB,10MB"."""
    return [parse_size(part) for part in text.split(",") if part.strip()]


def format_size(nbytes: int) -> str:
    """ "10 MB", "1 KB", "12 B"."""
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if nbytes >= scale:
            return f"{nbytes / scale:g} {unit}"
    return f"{nbytes} B"
