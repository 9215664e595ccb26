"""A chaos client process: runs requests, checks every result exactly, logs each one.

    python _worker.py URL LOG TOKEN_BASE START COUNT [--timeout S] [--retries N]
                     [--transport auto|zmq] [--until-file PATH]

One line per finished request in LOG: "<index> <token> <outcome> <seconds> <end time>",
outcome
"ok", "wrong" (a result that is not the expected one: a misrouted or duplicated reply),
"dup" (the server ran this token more than once) or "err:<ExceptionType>". A request
in flight when the process is killed leaves no line. With --until-file the worker keeps
going (past COUNT) until that file exists.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

import tensorwire as tw

SMALL = 16  # float32 elements: inline frames / the message pipe
MEDIUM = 64 << 10  # 256 KiB: through the shared-memory arena (or a frame over zmq)


def one(gpu: tw.Client, i: int, token: int, rng: np.random.Generator, count_only: bool) -> str:
    kind = 4 if count_only else i % 5
    n = MEDIUM if kind in (1, 3) or (count_only and i % 2) else SMALL
    x = rng.standard_normal(n).astype(np.float32)
    if kind in (0, 1):
        got, want = gpu.call("identity", x), x
    elif kind in (2, 3):
        factor = 2.0 ** int(rng.integers(-3, 4))  # exact in float32
        got, want = gpu.call("mul", x, factor), x * np.float32(factor)
    else:
        count, got = gpu.call("chaos_count", token, x)
        want = x
        if count != 1:
            return "dup"
    if not (isinstance(got, np.ndarray) and got.dtype == want.dtype
            and np.array_equal(got, want)):
        return "wrong"
    return "ok"


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("log")
    p.add_argument("token_base", type=int)
    p.add_argument("start", type=int)
    p.add_argument("count", type=int)
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--retries", type=int, default=2)
    p.add_argument("--transport", default="auto")
    p.add_argument("--shm-size", type=int, default=4 << 20)
    p.add_argument("--connect-timeout", type=float, default=0.0)
    p.add_argument("--until-file")
    p.add_argument("--count-only", action="store_true", help="every request a chaos_count")
    a = p.parse_args()
    rng = np.random.default_rng(a.token_base)
    with open(a.log, "a", buffering=1) as log:
        gpu, attempts = None, 0
        while gpu is None:
            attempts += 1  # T2: the server may be down; T4: the hello may be cut
            try:
                # hello is never resent (a resend would open a second session), so a
                # hello lost to a cut connection costs its whole timeout: keep it short.
                gpu = tw.Client(a.url, timeout=a.connect_timeout or a.timeout,
                                retries=a.retries, transport=a.transport,
                                shm_size=a.shm_size)
                gpu.timeout = a.timeout
            except tw.TensorwireError as exc:
                log.write(f"-1 -1 connect:{type(exc).__name__} 0 {time.time():.6f}\n")
                if not a.until_file and attempts >= 20:
                    raise
                if a.until_file and os.path.exists(a.until_file):
                    return 0
        try:
            i = a.start
            while i < a.start + a.count or (a.until_file and not os.path.exists(a.until_file)):
                token = a.token_base + i
                t0 = time.perf_counter()
                try:
                    outcome = one(gpu, i, token, rng, a.count_only)
                except tw.TensorwireError as exc:
                    outcome = f"err:{type(exc).__name__}"
                except Exception as exc:  # noqa: BLE001 - an unclear error: logged as such
                    outcome = f"unclear:{type(exc).__name__}"
                took = time.perf_counter() - t0
                log.write(f"{i} {token} {outcome} {took:.6f} {time.time():.6f}\n")
                i += 1
        finally:
            gpu.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
