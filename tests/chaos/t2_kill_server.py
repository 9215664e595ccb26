"""T2: the server SIGKILLed and restarted (same URL) 10 times under load.

Claims: no client hangs (every call ends in a result or a clear tensorwire error, and
within a bounded time), and every client is served again after each restart.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import _logs
from ._common import (
    HERE,
    Server,
    cleanup,
    entries,
    global_segments,
    mb,
    private_shm_dir,
    reap,  # fmt: skip
    scaled,
    spawn,
)

WORKER = str(HERE / "_worker.py")
TIMEOUT = 2.0  # each client's timeout (split over retries+1 attempts)
# A call that meets a restart: its attempts (TIMEOUT), a new hello (TIMEOUT) and one
# more try (TIMEOUT): 3 x TIMEOUT is the most a call may take, plus scheduling slack.
HANG_LIMIT = 3 * TIMEOUT + 1.0


def run(scale: float = 1.0, log: Callable[[str], None] = print) -> dict[str, Any]:
    restarts, n_clients = scaled(10, scale, 2), 3
    up_time = 1.5  # seconds the server lives between kills
    problems: list[str] = []
    out: dict[str, Any] = {"restarts": restarts, "clients": n_clients, "timeout_s": TIMEOUT,
                           "server_uptime_s": up_time}
    with tempfile.TemporaryDirectory(prefix="twchaos-t2-") as tmp, private_shm_dir() as shm:
        tmpdir = Path(tmp)
        url = f"ipc://{tmpdir}/tw.sock"
        stop_file = tmpdir / "stop"
        flags = ("--shm-dir", str(shm))
        server = Server(url, *flags, log_dir=tmp)
        pids = {server.pid}
        logs = [tmpdir / f"c{k}.log" for k in range(n_clients)]
        workers = []
        try:
            for k in range(n_clients):
                transport = "zmq" if k == 0 else "auto"  # one plain zmq, the others shm
                workers.append(spawn([sys.executable, WORKER, url, str(logs[k]),
                                      str(k * 10**9), "0", "0", "--timeout", str(TIMEOUT),
                                      "--transport", transport, "--until-file",
                                      str(stop_file)]))
                pids.add(workers[-1].pid)
            time.sleep(up_time)
            epochs = []  # (listening again at, killed at)
            for _ in range(restarts):
                server.kill()
                server.stop()
                server.discard_log()
                server = Server(url, *flags, log_dir=tmp)
                pids.add(server.pid)
                up = time.time()
                time.sleep(up_time)
                epochs.append((up, time.time()))
            stop_file.touch()
            stuck = []
            for k, w in enumerate(workers):
                try:
                    w.wait(HANG_LIMIT + 5)
                except Exception:  # noqa: BLE001 - a hung client: reported, then killed
                    stuck.append(k)
            if stuck:
                problems.append(f"clients {stuck} did not finish (hung)")
            lines = [_logs.read(p) for p in logs]
            outcomes: dict[str, int] = {}
            longest = 0.0
            for per in lines:
                for line in per:
                    outcomes[line.outcome] = outcomes.get(line.outcome, 0) + 1
                    longest = max(longest, line.seconds)
            unclear = {o: n for o, n in outcomes.items()
                       if not (o == "ok" or o.startswith(("err:", "connect:")))}
            served_after = 0
            for up, down in epochs:
                for per in lines:
                    if any(line.outcome == "ok" and up < line.end <= down for line in per):
                        served_after += 1
            missed = restarts * n_clients - served_after
            out.update(outcomes=outcomes, calls=sum(outcomes.values()),
                       longest_call_s=round(longest, 2),
                       served_after_restart=f"{served_after}/{restarts * n_clients}",
                       rss_end_mb=mb(server.rss()))
            if unclear:
                problems.append(f"calls ending in something other than a result or a "
                                f"tensorwire error: {unclear}")
            if longest > HANG_LIMIT:
                problems.append(f"a call took {longest:.1f} s (limit {HANG_LIMIT} s)")
            if missed:
                problems.append(f"{missed} (client, restart) pairs without a successful call "
                                f"after the restart")
        finally:
            code = server.stop()
            for w in workers:
                reap(w)
            cleanup()
        left = entries(shm)
        out["shm_left_after_stop"] = len(left)
        if left:
            problems.append(f"left in the shm dir after the last server stopped: {left[:4]}")
        if global_segments(pids):
            problems.append("segments left in /dev/shm")
        if code != 0:
            problems.append(f"last server exit code {code}")
        server.discard_log()
    out["problems"] = problems
    log(f"T2 {out}")
    return out
