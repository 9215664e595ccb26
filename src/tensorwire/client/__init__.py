"""Client: call ops on a tensorwire server."""

from ._async import AsyncClient
from ._client import Client

__all__ = ["AsyncClient", "Client"]
