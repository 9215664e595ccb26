"""T7: one client over its quotas and one forcing out-of-memory, while others work.

Claims: the well-behaved clients (1,000 requests in all at full size) see 0 errors; the
bad ones get clear errors: QuotaExceeded for resident bytes, handle count and requests
in flight; RemoteError(MemoryError) for an op that raises MemoryError and for one that
allocates beyond the server's address-space limit (RLIMIT_AS); the server keeps serving.
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import tensorwire as tw

from . import _logs
from ._common import HERE, Server, cleanup, mb, reap, scaled, spawn

WORKER = str(HERE / "_worker.py")
QUOTA_BYTES, QUOTA_HANDLES, QUOTA_INFLIGHT = 1 << 20, 16, 8


def _name(exc: BaseException) -> str:
    if isinstance(exc, tw.RemoteError):
        return f"RemoteError({exc.remote_type})"
    return type(exc).__name__


def _over_quota(url: str, stop: threading.Event, seen: Counter[str]) -> None:
    with tw.Client(url, timeout=30) as gpu:
        while not stop.is_set():
            held = []
            try:  # resident bytes: 256 KiB each, the 5th is over 1 MiB
                for _ in range(8):
                    held.append(gpu.put(np.ones(64 << 10, np.float32)))
            except tw.TensorwireError as exc:
                seen[f"bytes:{_name(exc)}"] += 1
            gpu.free(*held)
            held = []
            try:  # handle count
                for _ in range(QUOTA_HANDLES + 4):
                    held.append(gpu.put(np.ones(4, np.float32)))
            except tw.TensorwireError as exc:
                seen[f"handles:{_name(exc)}"] += 1
            gpu.free(*held)
            futures = [gpu.submit("chaos_sleep", 0.002) for _ in range(40)]
            for f in futures:
                try:
                    f.result(timeout=30)
                    seen["inflight:ok"] += 1
                except tw.TensorwireError as exc:
                    seen[f"inflight:{_name(exc)}"] += 1


def _out_of_memory(url: str, stop: threading.Event, seen: Counter[str]) -> None:
    with tw.Client(url, timeout=30) as gpu:
        while not stop.is_set():
            for op, args in (("chaos_oom", ()), ("chaos_hog", (8 << 30,))):
                try:
                    gpu.call(op, *args)
                    seen[f"{op}:no error"] += 1
                except tw.TensorwireError as exc:
                    seen[f"{op}:{_name(exc)}"] += 1
            time.sleep(0.01)


def run(scale: float = 1.0, log: Callable[[str], None] = print) -> dict[str, Any]:
    n_good, total = 3, scaled(1000, scale, 150)
    per = -(-total // n_good)
    problems: list[str] = []
    out: dict[str, Any] = {"good_clients": n_good, "good_requests": per * n_good,
                           "quotas": {"resident_bytes": QUOTA_BYTES, "handles": QUOTA_HANDLES,
                                      "inflight": QUOTA_INFLIGHT}}
    with tempfile.TemporaryDirectory(prefix="twchaos-t7-") as tmp:
        tmpdir = Path(tmp)
        server = Server(f"ipc://{tmpdir}/tw.sock", "--quota-resident-bytes", str(QUOTA_BYTES),
                        "--quota-handles", str(QUOTA_HANDLES), "--quota-inflight",
                        str(QUOTA_INFLIGHT), rlimit_as_extra=1536 << 20, log_dir=tmp)
        stop = threading.Event()
        quota_seen: Counter[str] = Counter()
        oom_seen: Counter[str] = Counter()
        bad = [threading.Thread(target=_over_quota, args=(server.url, stop, quota_seen)),
               threading.Thread(target=_out_of_memory, args=(server.url, stop, oom_seen))]
        try:
            rss0 = server.rss()
            for t in bad:
                t.start()
            time.sleep(0.3)
            logs = [tmpdir / f"good{k}.log" for k in range(n_good)]
            workers = [spawn([sys.executable, WORKER, server.url, str(p), str(k * 10**9), "0",
                              str(per)]) for k, p in enumerate(logs)]
            for w in workers:
                w.wait(max(60.0, 300 * scale))
            stop.set()
            for t in bad:
                t.join(60)
            tally = _logs.Tally([line for p in logs for line in _logs.read(p)])
            with tw.Client(server.url, timeout=10) as gpu:
                alive = bool(np.array_equal(gpu.identity(np.arange(5)), np.arange(5)))
            out.update(good_outcomes=dict(tally.outcomes), good_logged=tally.requests,
                       over_quota_client=dict(quota_seen), oom_client=dict(oom_seen),
                       server_alive=alive, rss_start_mb=mb(rss0), rss_end_mb=mb(server.rss()))
            errors = {o: n for o, n in tally.outcomes.items() if o != "ok"}
            if errors or tally.requests != per * n_good:
                problems.append(f"good clients: {dict(tally.outcomes)} of {per * n_good}")
            for key in ("bytes:QuotaExceeded", "handles:QuotaExceeded",
                        "inflight:QuotaExceeded", "chaos_oom:RemoteError(MemoryError)",
                        "chaos_hog:RemoteError(MemoryError)"):
                if not (quota_seen | oom_seen)[key]:
                    problems.append(f"never saw {key}")
            unexpected = [k for k in (quota_seen | oom_seen)
                          if not k.endswith(("QuotaExceeded", "(MemoryError)", "inflight:ok"))]
            if unexpected:
                problems.append(f"bad clients saw unclear outcomes: {unexpected}")
            if not alive:
                problems.append("server stopped serving")
        finally:
            stop.set()
            code = server.stop()
            for w in workers if "workers" in locals() else []:
                reap(w)
            cleanup()
        if code != 0:
            problems.append(f"server exit code {code}")
        server.discard_log()
    out["problems"] = problems
    log(f"T7 {out}")
    return out
