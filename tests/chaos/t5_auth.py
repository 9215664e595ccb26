"""T5: the auth matrix, and connections sending random bytes while a valid client works.

Matrix: no key, wrong server key, unknown client key, revoked key, valid key: only the
valid one is served. Storm: N connections (from 8 threads at once; half of them open
with a well-formed ZMTP 3.0 CURVE greeting, then junk) while a valid client keeps
calling: 0 errors for it. tests/test_auth.py has the short matrix in the suite; the
suite runs only this scenario's storm (`matrix=False`).
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import tensorwire as tw
from tensorwire.transport import generate

from ._common import Server, cleanup, mb, ms, percentile, scaled

QUICK = 1.5
GREETING = (b"\xff" + b"\0" * 8 + b"\x7f" + b"\x03\x00" + b"CURVE".ljust(20, b"\0")
            + b"\0" + b"\0" * 31)


def _served(url: str, **kwargs: Any) -> bool:
    try:
        with tw.Client(url, timeout=QUICK, retries=0, **kwargs) as gpu:
            return bool(np.array_equal(gpu.identity(np.arange(3)), np.arange(3)))
    except tw.TimeoutError:
        return False


def _matrix(url: str, keys: Path, tmp: Path) -> dict[str, bool]:
    other = tmp / "other"
    generate(other, "alice")  # a keypair made for another server
    shutil.copyfile(keys / "alice.key_secret", other / "alice_real.key_secret")
    result = {
        "valid key": _served(url, auth_dir=str(keys), key_name="alice"),
        "no key": _served(url),
        "unknown client key": _served(url, auth_dir=str(keys), key_name="mallory"),
        "wrong server key": _served(url, auth_dir=str(other), key_name="alice_real"),
    }
    assert _served(url, auth_dir=str(keys), key_name="bob")
    os.remove(keys / "clients" / "bob.key")
    time.sleep(2.5)  # the allow-list is re-read every 2 s
    result["revoked key"] = _served(url, auth_dir=str(keys), key_name="bob")
    return result


def run(scale: float = 1.0, log: Callable[[str], None] = print,
        matrix: bool = True) -> dict[str, Any]:
    n_garbage = scaled(1000, scale, 100)
    problems: list[str] = []
    out: dict[str, Any] = {"garbage_connections": n_garbage}
    with tempfile.TemporaryDirectory(prefix="twchaos-t5-") as tmp:
        tmpdir = Path(tmp)
        keys = tmpdir / "keys"
        for name in ("alice", "bob", "mallory"):
            generate(keys, name)
        os.remove(keys / "clients" / "mallory.key")
        server = Server("tcp://127.0.0.1:0", "--auth-dir", str(keys), log_dir=tmp)
        try:
            if matrix:
                served = _matrix(server.url, keys, tmpdir)
                out["matrix_served"] = served
                wrong = {k: v for k, v in served.items() if v != (k == "valid key")}
                if wrong:
                    problems.append(f"auth matrix wrong: {wrong}")
            host, port = server.url.removeprefix("tcp://").rsplit(":", 1)
            rss0 = server.rss()
            with tw.Client(server.url, auth_dir=str(keys), key_name="alice", timeout=10) as gpu:
                x = np.arange(256, dtype=np.float32)
                quiet = []
                for _ in range(200):
                    t = time.perf_counter()
                    gpu.identity(x)
                    quiet.append(time.perf_counter() - t)
                counter = iter(range(n_garbage))
                lock = threading.Lock()
                sent = [0]

                def storm(seed: int) -> None:
                    rnd = random.Random(seed)
                    while True:
                        with lock:
                            if next(counter, None) is None:
                                return
                        junk = rnd.randbytes(rnd.randrange(1, 2048))
                        if rnd.random() < 0.5:
                            junk = GREETING + junk
                        try:
                            with socket.create_connection((host, int(port)), timeout=2) as raw:
                                raw.sendall(junk)
                                if rnd.random() < 0.3:
                                    time.sleep(rnd.uniform(0, 0.02))  # hold it open a bit
                        except OSError:
                            pass  # the server may close on us: that is its right
                        with lock:
                            sent[0] += 1

                threads = [threading.Thread(target=storm, args=(k,)) for k in range(8)]
                t0 = time.monotonic()
                for t in threads:
                    t.start()
                during, errors = [], 0
                while any(t.is_alive() for t in threads):
                    t = time.perf_counter()
                    try:
                        if not np.array_equal(gpu.identity(x), x):
                            errors += 1
                    except tw.TensorwireError:
                        errors += 1
                    during.append(time.perf_counter() - t)
                for t in threads:
                    t.join()
                storm_s = time.monotonic() - t0
            still = _served(server.url, auth_dir=str(keys), key_name="alice")
            out.update(
                garbage_sent=sent[0], storm_s=round(storm_s, 1),
                connections_per_s=round(sent[0] / storm_s),
                valid_calls_during=len(during), valid_errors=errors,
                quiet_p99_ms=ms(percentile(quiet, 99)), storm_p50_ms=ms(percentile(during, 50)),
                storm_p99_ms=ms(percentile(during, 99)),
                new_valid_client_after=still,
                rss_growth_mb=mb(server.rss() - rss0),
            )
            if errors:
                problems.append(f"the valid client saw {errors} errors during the storm")
            if not still:
                problems.append("a new valid client is not served after the storm")
            if server.proc.poll() is not None:
                problems.append("the server died")
        finally:
            server.stop()
            cleanup()
        if "Traceback" in server.stderr():
            problems.append("server traceback: " + server.stderr()[-1000:])
        server.discard_log()
    out["problems"] = problems
    log(f"T5 {out}")
    return out
