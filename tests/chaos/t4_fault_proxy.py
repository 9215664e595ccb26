"""T4: clients reach a plain-tcp server through a proxy that delays and cuts connections.

Claims: 0 lost, 0 duplicated. Every request is `chaos_count(token, x)`, which counts on
the server how often each token ran: exactly once per token, and every token answered.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tensorwire as tw

from . import _logs
from ._common import HERE, Server, cleanup, scaled, spawn

WORKER = str(HERE / "_worker.py")
PROXY = str(HERE / "_proxy.py")


def run(scale: float = 1.0, log: Callable[[str], None] = print) -> dict[str, Any]:
    n_clients, per_client = 3, scaled(1000, scale, 60)
    mean_life, max_delay = 0.5, 0.05
    timeout, retries = 30.0, 29  # ~1 s per attempt before a resend
    problems: list[str] = []
    out: dict[str, Any] = {"clients": n_clients, "requests_per_client": per_client,
                           "mean_connection_life_s": mean_life, "max_delay_s": max_delay,
                           "client_timeout_s": timeout, "client_retries": retries}
    with tempfile.TemporaryDirectory(prefix="twchaos-t4-") as tmp:
        tmpdir = Path(tmp)
        server = Server("tcp://127.0.0.1:0", "--insecure", log_dir=tmp)
        proxy_log = open(tmpdir / "proxy.log", "w+")  # noqa: SIM115 - closed below
        try:
            host, port = server.url.removeprefix("tcp://").rsplit(":", 1)
            proxy = spawn([sys.executable, PROXY, host, port, "7", str(mean_life),
                           str(max_delay)], stdout=subprocess.PIPE, stderr=proxy_log, text=True)
            assert proxy.stdout is not None
            proxy_url = f"tcp://127.0.0.1:{proxy.stdout.readline().split()[1]}"
            logs = [tmpdir / f"c{k}.log" for k in range(n_clients)]
            t0 = time.monotonic()
            workers = [spawn([sys.executable, WORKER, proxy_url, str(p), str(k * 10**9), "0",
                              str(per_client), "--timeout", str(timeout), "--retries",
                              str(retries), "--transport", "zmq", "--count-only",
                              "--connect-timeout", "3"])
                       for k, p in enumerate(logs)]
            for w in workers:
                try:
                    w.wait(max(60.0, 900 * scale))
                except subprocess.TimeoutExpired:
                    problems.append("a client did not finish in time")
            elapsed = time.monotonic() - t0
            lines = [line for p in logs for line in _logs.read(p)]
            tally = _logs.Tally(lines)
            outcomes = tally.outcomes
            with tw.Client(server.url, transport="zmq", timeout=10) as direct:
                stats = direct.call("chaos_stats")
            proxy_stats = (tmpdir / "proxy.log").read_text().split("\n")
            last = [line for line in proxy_stats if line.startswith("connections")]
            connects = sum(1 for line in lines if line.outcome.startswith("connect:"))
            latencies = sorted(line.seconds for line in lines if line.index >= 0)
            resent = sum(1 for s in latencies if s > 0.9)
            out.update(
                requests=tally.requests,
                outcomes=dict(outcomes),
                lost=tally.requests - outcomes.get("ok", 0) - outcomes.get("dup", 0)
                + (n_clients * per_client - tally.requests),
                duplicated=outcomes.get("dup", 0) + stats["duplicated"],
                server_tokens=stats["tokens"],
                server_executions=stats["executions"],
                proxy=last[-1] if last else "",
                hello_retries=connects,
                calls_resent_after_silence=resent,
                elapsed_s=round(elapsed, 1),
            )
            if out["lost"]:
                problems.append(f"{out['lost']} requests lost: {dict(outcomes)}")
            if out["duplicated"]:
                problems.append(f"{out['duplicated']} duplicated executions")
            if stats["executions"] != stats["tokens"] or stats["tokens"] != tally.requests:
                problems.append(f"server ran {stats['executions']} times for "
                                f"{stats['tokens']} tokens; clients logged {tally.requests}")
            if not last or last[-1].endswith("cuts 0"):
                problems.append("the proxy cut no connection: the scenario tested nothing")
        finally:
            server.stop()
            cleanup()
            proxy_log.close()
        server.discard_log()
    out["problems"] = problems
    log(f"T4 {out}")
    return out
