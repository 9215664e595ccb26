"""tcp is authenticated: CurveZMQ with a ZAP allow-list (issue 7's T5 auth matrix, short)."""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest

import tensorwire as tw
from conftest import ServerProcess
from tensorwire.transport import generate

QUICK = 1.5  # seconds: a refused client gets no reply at all, so it times out


@pytest.fixture
def keyed_server(tmp_path: Path):
    keys = tmp_path / "keys"
    for name in ("alice", "bob", "mallory"):
        generate(keys, name)
    os.remove(keys / "clients" / "mallory.key")  # mallory has a keypair, but is not allowed
    server = ServerProcess(["tcp://127.0.0.1:0"], "--auth-dir", str(keys), "--backend", "numpy")
    try:
        yield server, keys
    finally:
        server.stop()


def _served(url: str, **kwargs) -> bool:
    try:
        with tw.Client(url, timeout=QUICK, **kwargs) as gpu:
            return bool(np.array_equal(gpu.identity(np.arange(3)), np.arange(3)))
    except tw.TimeoutError:
        return False


def test_only_allowed_keys_are_served(keyed_server, tmp_path):
    server, keys = keyed_server
    other = tmp_path / "other"
    generate(other, "alice")  # a valid-looking keypair, but for another server's key
    shutil.copyfile(keys / "alice.key_secret", other / "alice_real.key_secret")
    assert _served(server.url, auth_dir=str(keys), key_name="alice")
    assert not _served(server.url)  # no key at all
    assert not _served(server.url, auth_dir=str(keys), key_name="mallory")  # unknown key
    # the right client key, but the wrong server key: the handshake fails
    assert not _served(server.url, auth_dir=str(other), key_name="alice_real")


def test_revoked_key_stops_working(keyed_server):
    server, keys = keyed_server
    assert _served(server.url, auth_dir=str(keys), key_name="bob")
    os.remove(keys / "clients" / "bob.key")
    time.sleep(2.5)  # the server re-reads its allow-list every 2 s
    assert not _served(server.url, auth_dir=str(keys), key_name="bob")
    assert _served(server.url, auth_dir=str(keys), key_name="alice")


def test_timeout_hints_at_keys(keyed_server):
    server, _ = keyed_server
    with pytest.raises(tw.TimeoutError, match="auth_dir"):
        tw.Client(server.url, timeout=0.5)


def test_sessions_belong_to_their_key(keyed_server):
    """Bob cannot use Alice's session id (and with it her resident tensors)."""
    server, keys = keyed_server
    with tw.Client(server.url, auth_dir=str(keys), key_name="alice") as alice, \
         tw.Client(server.url, auth_dir=str(keys), key_name="bob") as bob:  # fmt: skip
        handle = alice.put(np.ones(4))
        bob._session = alice._session  # forge: bob presents alice's session id...
        with pytest.raises(tw.RemoteError, match="unknown tensor handle"):
            bob.identity(handle)  # ...is refused; bob reconnects with his own, which lacks it
        assert bob._session != alice._session
        np.testing.assert_array_equal(alice.fetch(handle), np.ones(4))


def test_garbage_connections_do_not_disturb_a_valid_client(keyed_server):
    server, keys = keyed_server
    host, port = server.url.removeprefix("tcp://").rsplit(":", 1)
    rng = np.random.default_rng(0)
    with tw.Client(server.url, auth_dir=str(keys), key_name="alice") as gpu:
        for i in range(100):
            with socket.create_connection((host, int(port)), timeout=2) as raw:
                raw.sendall(rng.bytes(int(rng.integers(1, 512))))
            if i % 10 == 0:
                np.testing.assert_array_equal(gpu.identity(np.arange(i)), np.arange(i))


def test_tcp_without_keys_or_insecure_is_refused():
    with pytest.raises(tw.AuthError, match="--insecure"):
        tw.Server(listen=["tcp://127.0.0.1:0"])
