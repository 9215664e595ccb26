"""T8 child: runs inside a private mount namespace whose shm dir is a tiny tmpfs."""

from __future__ import annotations

import json
import os
import sys

import numpy as np

import tensorwire as tw
from chaos._common import Server, cleanup

shm_dir, sock, calls = sys.argv[1], sys.argv[2], int(sys.argv[3])
out: dict[str, object] = {}
server = Server(f"ipc://{sock}", "--shm-dir", shm_dir)
x = np.arange(1 << 16, dtype=np.float32)  # 256 KiB: through the arena
try:
    with tw.Client(server.url, shm_size=1 << 20, require="shm") as early:
        filler = os.path.join(shm_dir, "filler")
        with open(filler, "wb") as f:  # fill the tmpfs to the last byte
            try:
                while True:
                    f.write(b"\1" * (64 << 10))
                    f.flush()
            except OSError as exc:
                out["fill"] = exc.strerror
        ok = 0
        for _ in range(calls):  # arenas were fallocated: writing them cannot SIGBUS
            ok += bool(np.array_equal(early.call("add", x, x), 2 * x))
        out["early_ok"] = f"{ok}/{calls}"
        out["early_paths"] = early.last_trace["paths"]["request"]
        with tw.Client(server.url, shm_size=1 << 20) as late:
            out["late"] = [late.path, late.shm_reason]
            out["late_ok"] = bool(np.array_equal(late.call("add", x, x), 2 * x))
        try:
            tw.Client(server.url, shm_size=1 << 20, require="shm").close()
            out["required"] = "no error"
        except tw.TensorwireError as exc:
            out["required"] = f"{type(exc).__name__}: {exc}"
        os.unlink(filler)
        with tw.Client(server.url, shm_size=1 << 20, require="shm") as after:
            out["after_free_ok"] = bool(np.array_equal(after.call("add", x, x), 2 * x))
    out["server_alive"] = server.proc.poll() is None
finally:
    out["server_rc"] = server.stop()
    out["left"] = sorted(os.listdir(shm_dir))
    out["traceback"] = "Traceback" in server.stderr()
    server.discard_log()
    cleanup()
print(json.dumps(out))
