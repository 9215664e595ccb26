"""Errors of the shared-memory channel, under ``TransportError`` in the one tree.

    TransportError
    └── ChannelError        a channel cannot be used (closed segment, bad arguments)
        ├── ShmFullError    the shared-memory filesystem lacks room for a new segment
        └── SegmentRefused  a name or file offered for attaching failed validation

Messages never contain segment names: they may travel to a client inside a reply.
"""

from __future__ import annotations

from ..errors import TransportError

__all__ = ["ChannelError", "SegmentRefused", "ShmFullError"]


class ChannelError(TransportError):
    """A shared-memory channel cannot be used."""


class ShmFullError(ChannelError):
    """Creating a segment failed: no space (or quota) on its filesystem."""

    def __init__(self, directory: str, size: int, reason: str) -> None:
        super().__init__(
            f"{directory} is full: cannot reserve a {size}-byte shared-memory segment "
            f"({reason}); free space there, enlarge it (docker: --shm-size), "
            "or use the frame path"
        )
        self.directory = directory
        self.size = size


class SegmentRefused(ChannelError):
    """A segment offered for attaching is not one tensorwire created as claimed."""
