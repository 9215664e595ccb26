"""Client: call ops on a tensorwire server."""

from ._client import Client

__all__ = ["Client"]
