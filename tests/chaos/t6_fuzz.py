"""T6: fuzzing header and frame parsing: every input decodes or raises ProtocolError.

A fast mutation loop over a corpus of valid messages (bit flips, interesting bytes,
inserts, deletes, truncation, splices, frame drops/extras/resizes), plus atheris
(coverage-guided libFuzzer) when it is installed, plus mutated messages sent to a live
server, which must answer or ignore each and keep serving. The suite also runs the
hypothesis fuzzers of tests/test_codec_fuzz.py.
"""

from __future__ import annotations

import random
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np
import zmq

import tensorwire as tw

from . import _fuzz_target
from ._common import HERE, Server, child_env, cleanup, scaled

INTERESTING = [0x00, 0x01, 0x7F, 0x80, 0xFF, 0xC0, 0xC1, 0xC2, 0xC3, 0xC4, 0xC7, 0xCC, 0xCF,
               0xD0, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8, 0xD9, 0xDC, 0xDD, 0xDE, 0xDF, 0x90,
               0x93, 0x9F, 0x80, 0x8F, 0xA0, 0xBF, 0xE0]


def mutate(rnd: random.Random, seeds: list[list[bytes]]) -> list[Any]:
    frames = list(rnd.choice(seeds))
    header = bytearray(frames[0])
    for _ in range(rnd.randint(1, 4)):
        op = rnd.randrange(9)
        pos = rnd.randrange(len(header) + 1)
        if op == 0 and header:
            header[min(pos, len(header) - 1)] ^= 1 << rnd.randrange(8)
        elif op == 1 and header:
            header[min(pos, len(header) - 1)] = rnd.choice(INTERESTING)
        elif op == 2:
            header[pos:pos] = rnd.randbytes(rnd.randint(1, 8))
        elif op == 3:
            del header[pos:pos + rnd.randint(1, 8)]
        elif op == 4:
            del header[pos:]
        elif op == 5:
            other = rnd.choice(seeds)[0]
            cut = rnd.randrange(len(other) + 1)
            header[pos:] = other[cut:]
        elif op == 6 and header:
            start = rnd.randrange(len(header))
            header[pos:pos] = header[start:start + rnd.randint(1, 16)]
        elif op == 7 and header:  # a big-endian length field set to an extreme
            header[min(pos, len(header) - 1)] = 0xFF
            header[pos + 1:pos + 1] = b"\xff\xff\xff"
        elif op == 8:
            header = bytearray(rnd.randbytes(rnd.randint(0, 64)))
    frames[0] = bytes(header)
    edit = rnd.randrange(8)
    if edit == 1 and len(frames) > 1:
        frames.pop(rnd.randrange(1, len(frames)))
    elif edit == 2:
        frames.append(rnd.randbytes(rnd.choice([0, 1, 3, 8, 64])))
    elif edit == 3 and len(frames) > 1:
        k = rnd.randrange(1, len(frames))
        frames[k] = frames[k][: max(0, len(frames[k]) - rnd.randint(1, 4))]
    elif edit == 4 and len(frames) > 1:
        k = rnd.randrange(1, len(frames))
        frames[k] = frames[k] + b"\0" * rnd.randint(1, 4)
    elif edit == 5 and len(frames) > 2:
        frames[1], frames[2] = frames[2], frames[1]
    kind = rnd.randrange(3)
    if kind == 1:
        return [memoryview(f) for f in frames]
    if kind == 2:
        return [np.frombuffer(f, np.uint8) for f in frames]
    return frames


def mutation_loop(n: int, seed: int = 0) -> dict[str, Any]:
    rnd = random.Random(seed)
    seeds = _fuzz_target.corpus()
    crashes: dict[str, str] = {}
    decoded_ok = 0
    t0 = time.perf_counter()
    for _ in range(n):
        frames = mutate(rnd, seeds)
        try:
            _fuzz_target.check(frames)
        except Exception as exc:  # noqa: BLE001 - a crash: record one reproducer per kind
            key = f"{type(exc).__name__}: {str(exc)[:80]}"
            if key not in crashes:
                crashes[key] = repr([bytes(memoryview(f)) for f in frames])[:400] + "\n" + \
                    "".join(traceback.format_exception(exc)[-3:])
        else:
            decoded_ok += 1
    elapsed = time.perf_counter() - t0
    return {"inputs": n, "decode_calls": 2 * n, "seconds": round(elapsed, 1),
            "inputs_per_s": round(n / elapsed), "crashes": len(crashes),
            "crash_examples": list(crashes.values())[:3]}


def atheris_run(runs: int) -> dict[str, Any]:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return {"skipped": "atheris is not installed (pip install atheris)"}
    with tempfile.TemporaryDirectory(prefix="twchaos-atheris-") as tmp:
        t0 = time.perf_counter()
        done = subprocess.run(
            [sys.executable, str(HERE / "_atheris_decode.py"), f"-runs={runs}",
             "-max_len=4096", f"-artifact_prefix={tmp}/", "-print_final_stats=1"],
            capture_output=True, text=True, env=child_env(CHAOS_SEED_DIR=tmp), cwd=str(HERE),
            timeout=max(120, runs / 2000),
        )
        elapsed = time.perf_counter() - t0
    tail = done.stderr[-3000:]
    cov = [line for line in done.stderr.splitlines() if line.startswith("#") and "cov:" in line]
    return {"runs": runs, "exit_code": done.returncode, "seconds": round(elapsed, 1),
            "runs_per_s": round(runs / elapsed), "last_status": cov[-1] if cov else "",
            "crashed": done.returncode != 0, "tail": tail if done.returncode else ""}


def live_server(n: int, seed: int = 1) -> dict[str, Any]:
    """Mutated messages to a real server over a raw socket: it must keep serving."""
    rnd = random.Random(seed)
    seeds = _fuzz_target.corpus()[:5]
    with tempfile.TemporaryDirectory(prefix="twchaos-t6-") as tmp:
        server = Server(f"ipc://{tmp}/tw.sock", log_dir=tmp)
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(server.url)
        replies = 0
        try:
            with tw.Client(server.url, timeout=10) as gpu:
                for i in range(n):
                    sock.send_multipart([bytes(memoryview(f)) for f in mutate(rnd, seeds)])
                    while sock.poll(0):
                        sock.recv_multipart()
                        replies += 1
                    if i % 100 == 0:
                        x = np.arange(i % 1000, dtype=np.float32)
                        assert np.array_equal(gpu.identity(x), x)
                deadline = time.monotonic() + 3
                while time.monotonic() < deadline and sock.poll(200):
                    sock.recv_multipart()
                    replies += 1
                alive = bool(np.array_equal(gpu.identity(np.ones(3)), np.ones(3)))
        finally:
            sock.close()
            ctx.term()
            code = server.stop()
            cleanup()
        traceback_seen = "Traceback" in server.stderr()
        server.discard_log()
    return {"messages": n, "replies": replies, "server_alive": alive, "exit_code": code,
            "server_traceback": traceback_seen}


def run(scale: float = 1.0, log: Callable[[str], None] = print) -> dict[str, Any]:
    problems: list[str] = []
    loop = mutation_loop(scaled(1_000_000, scale, 10_000))
    out: dict[str, Any] = {"mutation_loop": loop}
    if loop["crashes"]:
        problems.append(f"{loop['crashes']} crash kinds: {loop['crash_examples']}")
    if scale >= 1.0:
        ath = atheris_run(1_000_000)
        out["atheris"] = ath
        if ath.get("crashed"):
            problems.append(f"atheris found a crash: {ath['tail'][-1500:]}")
    live = live_server(scaled(20_000, scale, 1000))
    out["live_server"] = live
    if not live["server_alive"] or live["exit_code"] != 0 or live["server_traceback"]:
        problems.append(f"live server: {live}")
    out["problems"] = problems
    log(f"T6 {out}")
    return out
