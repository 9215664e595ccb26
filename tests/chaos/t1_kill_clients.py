"""T1: N client processes x M requests, a random client SIGKILLed every 0.5 s and respawned.

Claims: 0 lost and 0 duplicated replies for requests whose client survived to see them;
0 shared-memory segments left once the server reaped the dead clients; server RSS
growth after warm-up < 50 MB.
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tensorwire as tw

from . import _logs
from ._common import (
    HERE,
    Server,
    cleanup,
    entries,
    global_segments,
    kill,
    mb,
    private_shm_dir,
    scaled,
    spawn,
    wait_until,
)

WORKER = str(HERE / "_worker.py")
RSS_LIMIT = 50e6


def run(scale: float = 1.0, log: Callable[[str], None] = print, seed: int = 1) -> dict[str, Any]:
    n_clients, per_client = scaled(16, scale, 3), scaled(2000, scale, 60)
    kill_every = 0.5
    rnd = random.Random(seed)
    problems: list[str] = []
    out: dict[str, Any] = {"clients": n_clients, "requests_per_client": per_client,
                           "kill_every_s": kill_every}
    with tempfile.TemporaryDirectory(prefix="twchaos-t1-") as tmp, private_shm_dir() as shm:
        tmpdir = Path(tmp)
        server = Server(f"ipc://{tmpdir}/tw.sock", "--shm-dir", str(shm), log_dir=tmp)
        worker_pids: set[int] = set()
        try:
            logs = [tmpdir / f"slot{k}.log" for k in range(n_clients)]
            gens = [0] * n_clients
            procs: list[Any] = [None] * n_clients
            finished = [False] * n_clients

            def start(k: int) -> None:
                done = _logs.completed(logs[k])
                token_base = (k * 1000 + gens[k]) * 1_000_000
                procs[k] = spawn([sys.executable, WORKER, server.url, str(logs[k]),
                                  str(token_base), str(done), str(per_client - done)])
                worker_pids.add(procs[k].pid)

            for k in range(n_clients):
                start(k)
            t0 = time.monotonic()
            deadline = t0 + max(60.0, 600.0 * scale)
            next_kill = t0 + kill_every
            kills, warm_rss, max_rss = 0, 0, 0
            total = n_clients * per_client
            while not all(finished):
                now = time.monotonic()
                if now > deadline:
                    problems.append(f"not done after {now - t0:.0f} s (a client hung?)")
                    break
                for k, proc in enumerate(procs):
                    if not finished[k] and proc.poll() is not None:
                        if proc.returncode != 0:
                            problems.append(f"client {k} exited with {proc.returncode}")
                        finished[k] = True
                if now >= next_kill:
                    next_kill += kill_every
                    # A random client of all N (one that already finished is spared):
                    # each is killed every N x 0.5 s on average, however few remain.
                    k = rnd.randrange(n_clients)
                    if not finished[k]:
                        kill(procs[k])
                        if _logs.completed(logs[k]) < per_client:
                            kills += 1
                            gens[k] += 1
                            start(k)
                        else:
                            finished[k] = True  # it had just finished its last request
                rss = server.rss()
                if not warm_rss and sum(_logs.completed(p) for p in logs[:4]) >= per_client * 0.4:
                    warm_rss = rss  # warm-up: the first clients are 10% through
                if warm_rss:
                    max_rss = max(max_rss, rss)
                time.sleep(0.02)
            elapsed = time.monotonic() - t0

            tally = _logs.Tally([line for p in logs for line in _logs.read(p)])
            outcomes = tally.outcomes
            lost = sum(n for o, n in outcomes.items() if o.startswith(("err:", "unclear:")))
            with tw.Client(server.url, transport="zmq", timeout=10) as gpu:
                stats = gpu.call("chaos_stats")
            counted_ok = sum(1 for line in tally.lines if line.outcome == "ok"
                             and line.index % 5 == 4)
            # Segments: every session of a killed client must be reclaimed by the server.
            reaped = wait_until(lambda: entries(shm) == [], timeout=10.0)
            left = entries(shm)
            max_rss = max(max_rss, server.rss())
            out.update(
                requests_logged=tally.requests,
                outcomes=dict(outcomes),
                lost=lost,
                wrong=outcomes.get("wrong", 0),
                duplicated_client=outcomes.get("dup", 0),
                duplicated_server=stats["duplicated"],
                kills=kills,
                count_op_executions=stats["executions"],
                count_op_answered=counted_ok,
                executed_unanswered=stats["executions"] - counted_ok,
                elapsed_s=round(elapsed, 1),
                requests_per_s=round(tally.requests / elapsed),
                shm_left=len(left),
                rss_warm_mb=mb(warm_rss),
                rss_max_mb=mb(max_rss),
                rss_growth_mb=mb(max_rss - warm_rss),
            )
            if tally.requests < total:
                problems.append(f"only {tally.requests} of {total} requests completed")
            if lost:
                problems.append(f"{lost} requests of surviving clients failed: {dict(outcomes)}")
            if outcomes.get("wrong", 0):
                problems.append(f"{outcomes['wrong']} wrong (misrouted) results")
            if outcomes.get("dup", 0) or stats["duplicated"]:
                problems.append(f"duplicated executions: {outcomes.get('dup', 0)} seen by "
                                f"clients, {stats['duplicated']} counted by the server")
            if stats["executions"] - counted_ok > kills:
                problems.append(f"{stats['executions'] - counted_ok} count-op runs without a "
                                f"logged reply, but only {kills} kills")
            if not reaped:
                problems.append(f"{len(left)} entries left in the shm dir: {left[:5]}")
            if warm_rss and max_rss - warm_rss > RSS_LIMIT:
                problems.append(f"server RSS grew {mb(max_rss - warm_rss)} MB after warm-up")
        finally:
            code = server.stop()
            cleanup()
        stray = global_segments(worker_pids | {server.pid})
        out["global_shm_left"] = len(stray)
        if stray:
            problems.append(f"segments left in /dev/shm: {stray[:5]}")
        if code != 0:
            problems.append(f"server exit code {code}")
        if "Traceback" in server.stderr():
            problems.append("server printed a traceback: " + server.stderr()[-1500:])
        server.discard_log()
    out["problems"] = problems
    log(f"T1 {out}")
    return out
