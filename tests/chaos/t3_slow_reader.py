"""T3: one client sends requests and never reads its replies.

Claims: the other clients' p99 latency stays within 2x their baseline (measured in the
same run, without the bad client), and the server's memory stays bounded.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import _logs
from ._common import HERE, Server, cleanup, mb, ms, percentile, reap, scaled, spawn

WORKER = str(HERE / "_worker.py")
BAD = str(HERE / "_bad_reader.py")


def _phase(url: str, logs: list[Path], calls: int, rss: Callable[[], int],
           phase: int) -> tuple[list[float], int, dict[str, int]]:
    for p in logs:
        p.unlink(missing_ok=True)
    workers = [
        spawn([sys.executable, WORKER, url, str(p), str((phase * 10 + k) * 10**9), "0",
               str(calls), "--timeout", "10", "--transport", ("zmq", "auto")[k % 2]])
        for k, p in enumerate(logs)
    ]
    peak = 0
    while any(w.poll() is None for w in workers):
        peak = max(peak, rss())
        time.sleep(0.05)
    lines = [line for p in logs for line in _logs.read(p)]
    outcomes: dict[str, int] = {}
    for line in lines:
        outcomes[line.outcome] = outcomes.get(line.outcome, 0) + 1
    # Skip each client's first calls: connecting and first-touch costs, not the steady state.
    latencies = [line.seconds for line in lines if line.index >= 20]
    return latencies, peak, outcomes


def run(scale: float = 1.0, log: Callable[[str], None] = print) -> dict[str, Any]:
    calls = scaled(2000, scale, 150)
    problems: list[str] = []
    out: dict[str, Any] = {"good_clients": 2, "calls_per_client": calls}
    with tempfile.TemporaryDirectory(prefix="twchaos-t3-") as tmp:
        tmpdir = Path(tmp)
        server = Server(f"ipc://{tmpdir}/tw.sock", log_dir=tmp)
        bad = None
        try:
            logs = [tmpdir / "good0.log", tmpdir / "good1.log"]
            base, base_peak, base_out = _phase(server.url, logs, calls, server.rss, 0)
            rss_before_bad = server.rss()
            bad = spawn([sys.executable, BAD, server.url, "4000", "200"],
                        stdout=subprocess.PIPE, text=True)
            assert bad.stdout is not None
            burst = bad.stdout.readline().strip()
            peaks: list[int] = []
            sampler_stop = threading.Event()

            def sample() -> None:
                while not sampler_stop.is_set():
                    peaks.append(server.rss())
                    time.sleep(0.05)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            time.sleep(0.5)
            with_bad, _, bad_out = _phase(server.url, logs, calls, server.rss, 1)
            time.sleep(1.0)  # the bad client keeps sending: memory must not keep growing
            sampler_stop.set()
            sampler.join()
            half = len(peaks) // 2
            p99_base, p99_bad = percentile(base, 99), percentile(with_bad, 99)
            out.update(
                bad_client=burst,
                baseline_p50_ms=ms(percentile(base, 50)), baseline_p99_ms=ms(p99_base),
                with_bad_p50_ms=ms(percentile(with_bad, 50)), with_bad_p99_ms=ms(p99_bad),
                p99_ratio=round(p99_bad / p99_base, 2),
                outcomes_baseline=base_out, outcomes_with_bad=bad_out,
                rss_before_bad_mb=mb(rss_before_bad),
                rss_peak_with_bad_mb=mb(max(peaks, default=0)),
                rss_growth_second_half_mb=mb(max(peaks[half:], default=0)
                                             - max(peaks[:half], default=0)),
            )
            errors = {o: n for o, n in bad_out.items() if o != "ok"}
            if errors or any(o != "ok" for o in base_out):
                problems.append(f"good clients saw errors: {base_out} / {bad_out}")
            if p99_bad > 2 * p99_base:
                problems.append(f"p99 {ms(p99_bad)} ms with the bad client > 2 x "
                                f"{ms(p99_base)} ms")
            growth_late = out["rss_growth_second_half_mb"]
            if growth_late > 20:
                problems.append(f"server RSS still growing with the bad client: +{growth_late} MB")
            if bad.poll() is not None:
                problems.append("the bad client died")
        finally:
            if bad is not None:
                reap(bad)
            server.stop()
            cleanup()
        server.discard_log()
    out["problems"] = problems
    log(f"T3 {out}")
    return out
