"""Client: call ops on a tensorwire server."""

from ._async import AsyncClient
from ._client import Client
from ._remote import RemoteTensor

__all__ = ["AsyncClient", "Client", "RemoteTensor"]
