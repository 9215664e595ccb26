"""CurveZMQ keys and the ZAP allow-list for tcp.

CURVE alone encrypts but accepts ANY client key; the allow-list is the point.
Layout of an auth directory:

    DIR/server.key, DIR/server.key_secret      the server's keypair
    DIR/clients/NAME.key                       one public key per allowed client
    DIR/NAME.key, DIR/NAME.key_secret          a client's keypair (give it to that client)

`tensorwire keys generate DIR --name NAME` makes the server pair (first time) and a
client pair, and allows the client. Revoking = deleting DIR/clients/NAME.key: the
server re-reads the allow-list every RELOAD_INTERVAL seconds.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from ..errors import AuthError

log = logging.getLogger("tensorwire.auth")

RELOAD_INTERVAL = 2.0
SERVER = "server"
ZAP_DOMAIN = "tensorwire"


def generate(directory: str | os.PathLike[str], name: str) -> Path:
    """Create the server keypair if missing, and an allowed client keypair `name`."""
    if not name.isidentifier() or name == SERVER:
        raise ValueError(f"client key name must be an identifier other than {SERVER!r}")
    root = Path(directory)
    (root / "clients").mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(root, 0o700)
    if not (root / f"{SERVER}.key_secret").exists():
        _create(root, SERVER)
    public, _ = _create(root, name)
    shutil.copyfile(public, root / "clients" / f"{name}.key")
    return root / f"{name}.key_secret"


def _create(root: Path, name: str) -> tuple[str, str]:
    public, secret = zmq.auth.create_certificates(root, name)
    os.chmod(secret, 0o600)
    return public, secret


@dataclass(frozen=True)
class ClientKeys:
    """What a client needs: its keypair and the server's public key."""

    public: bytes
    secret: bytes
    server_public: bytes

    @classmethod
    def load(cls, secret_file: str | os.PathLike[str],
             server_key_file: str | os.PathLike[str]) -> ClientKeys:
        try:
            public, secret = zmq.auth.load_certificate(secret_file)
            server_public, _ = zmq.auth.load_certificate(server_key_file)
        except (OSError, ValueError) as exc:
            raise AuthError(f"cannot load CurveZMQ keys: {exc.__class__.__name__}") from None
        if secret is None:
            raise AuthError("the client key file holds no secret key")
        return cls(public, secret, server_public)

    @classmethod
    def from_dir(cls, directory: str | os.PathLike[str], name: str) -> ClientKeys:
        root = Path(directory)
        return cls.load(root / f"{name}.key_secret", root / f"{SERVER}.key")

    def apply(self, sock: zmq.Socket[bytes]) -> None:
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret
        sock.curve_serverkey = self.server_public


class ServerAuth:
    """The server's keypair plus a ZAP handler that admits only allow-listed clients."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], directory: str) -> None:
        root = Path(directory)
        self.clients = root / "clients"
        try:
            self.public, self.secret = zmq.auth.load_certificate(root / f"{SERVER}.key_secret")
        except (OSError, ValueError):
            raise AuthError(
                "no server keypair in the auth directory; create one with "
                "`tensorwire keys generate DIR --name CLIENT`"
            ) from None
        if not self.clients.is_dir():
            raise AuthError("the auth directory has no clients/ allow-list")
        self._authenticator = ThreadAuthenticator(ctx, log=log)
        self._authenticator.start()
        self._loaded: tuple[tuple[str, float], ...] = ()
        self._next_reload = 0.0
        self.reload()

    def apply(self, sock: zmq.Socket[bytes]) -> None:
        sock.curve_server = True
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret
        sock.zap_domain = ZAP_DOMAIN.encode()

    def reload(self) -> None:
        """Re-read the allow-list when its files changed (a revoked key stops working)."""
        now = time.monotonic()
        if now < self._next_reload:
            return
        self._next_reload = now + RELOAD_INTERVAL
        state = tuple(sorted((p.name, p.stat().st_mtime) for p in self.clients.glob("*.key")))
        if state != self._loaded:
            self._authenticator.configure_curve(domain=ZAP_DOMAIN, location=str(self.clients))
            self._loaded = state

    def stop(self) -> None:
        self._authenticator.stop()
