"""The device check: everything about the GPU path that needs a GPU, in one short run.

    python benchmarks/gpu_check.py [--quick] [--json FILE] [--allow-no-gpu]

Checks, each a row of the printed table (PASS / FAIL against the issue's targets, INFO for
figures without a target, SKIP with the reason):

  ops            every op of the table on CUDA against the torch-CPU result
  timings        the torch backend's CUDA-event stages (host_to_device, device_compute,
                 device_to_host) for a request whose input sits in a page-locked arena
  h2d            host-to-device bandwidth: from a registered arena, torch's own pinned
                 buffer (torch.empty(..., pin_memory=True)) and pageable numpy; target:
                 arena >= 80% of pinned. d2h likewise (staging vs pageable), as INFO
  seed           the seed workload end to end (x 2560x1024 fp32 in the client's arena,
                 h = x @ w + b, y = gelu(h), one fused graph request) against a server started
                 with --backend torch --device cuda; fp32 and bf16 wire; target <= 2 ms.
                 Needs pyzmq (carry it as a wheel); SKIP otherwise
  ipc            the real client path: `gpu.identity(t)` for a 1 GB torch CUDA tensor
                 against a server started with --backend torch --device cuda (the tensor
                 goes by CUDA IPC, its view comes back without bytes): first call, then
                 the steady state (leased import); target <= 100 us per call at any size
                 (1 MB too); and a client with expandable segments is refused clearly
  pipeline       serial (--pipeline-depth 1) against pipelined (4) serving: two clients
                 each with 8 x 16 MB `neg`s of arena tensors in flight, rounds interleaved
                 between two servers; the ratio of round times, target > 1 (copies and
                 kernels of different requests overlap), and every result checked after
                 the clock stops
  ucx            SKIP with the reason: ucx:// is tested by tests/test_ucx.py, not timed here

Without a CUDA device it prints "no CUDA device: nothing measured" and exits 2 (0 with
--allow-no-gpu). With one it exits 1 when any row FAILs, else 0. Budget: < 4 min on an H100.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

NO_GPU = "no CUDA device: nothing measured"
SEED_TARGET_S = 2e-3
H2D_TARGET_RATIO = 0.8
IPC_TARGET_S = 100e-6


class Report:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.details: dict[str, Any] = {}

    def add(self, check: str, what: str, value: str, target: str, status: str,
            note: str = "") -> None:
        self.rows.append({"check": check, "what": what, "value": value, "target": target,
                          "status": status, "note": note})

    @property
    def failed(self) -> bool:
        return any(r["status"] == "FAIL" for r in self.rows)

    def print(self) -> None:
        cols = ("check", "what", "value", "target", "status", "note")
        widths = [max(len(c), *(len(str(r[c])) for r in self.rows)) for c in cols]
        line = "  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))
        print(line)
        print("-" * len(line))
        for r in self.rows:
            print("  ".join(str(r[c]).ljust(w) for c, w in zip(cols, widths, strict=True)))


def _us(s: float) -> str:
    return f"{s * 1e6:.1f} us"


def _ms(s: float) -> str:
    return f"{s * 1e3:.3f} ms"


def _gbs(bps: float) -> str:
    return f"{bps / 1e9:.1f} GB/s"


@contextlib.contextmanager
def _guard(report: Report, check: str) -> Iterator[None]:
    try:
        yield
    except Exception as exc:  # one broken check must not hide the others
        report.add(check, "error", type(exc).__name__, "-", "FAIL", str(exc)[:160])
        report.details.setdefault("errors", {})[check] = traceback.format_exc()


# ------------------------------------------------------------------------------- ops


def op_samples(rng: np.random.Generator) -> dict[str, tuple[list[Any], dict[str, Any]]]:
    """One float32 call per op of the table (args, kwargs)."""
    def x(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape, dtype=np.float32)

    pos = np.abs(x(64, 128)) + 0.5
    return {
        "identity": ([x(64, 128)], {}), "add": ([x(64, 128), x(128)], {}),
        "sub": ([x(64, 128), x(128)], {}), "mul": ([x(64, 128), x(128)], {}),
        "div": ([x(64, 128), pos[0]], {}), "neg": ([x(64, 128)], {}),
        "tanh": ([x(64, 128)], {}), "exp": ([x(64, 128)], {}), "log": ([pos], {}),
        "relu": ([x(64, 128)], {}), "gelu": ([x(64, 128)], {}), "silu": ([x(64, 128)], {}),
        "sigmoid": ([x(64, 128)], {}), "softmax": ([x(64, 128)], {"axis": -1}),
        "matmul": ([x(64, 96), x(96, 32)], {}), "linear": ([x(64, 96), x(32, 96), x(32)], {}),
        "layer_norm": ([x(64, 128)], {}), "sum": ([x(64, 128)], {"axis": 1}),
        "mean": ([x(64, 128)], {"axis": 1}), "max": ([x(64, 128)], {"axis": 1}),
        "transpose": ([x(4, 5, 6)], {}), "permute": ([x(4, 5, 6)], {"dims": [2, 0, 1]}),
        "reshape": ([x(64, 128)], {"shape": [128, 64]}),
        "cast": ([x(64, 128)], {"dtype": "float16"}),
        "concat": ([[x(3, 8), x(5, 8)]], {"axis": 0}),
    }  # fmt: skip


def check_ops(report: Report) -> None:
    from tensorwire.server.ops import default_registry, make_backend
    from tensorwire.server.ops._table import OPS

    registry, cpu, cuda = default_registry(), make_backend("torch", "cpu"), make_backend(
        "torch", "cuda")
    samples = op_samples(np.random.default_rng(0))
    bad: list[str] = []
    for row in OPS:
        if row.name not in samples:
            bad.append(f"{row.name} (no sample)")
            continue
        args, kwargs = samples[row.name]
        want = np.asarray(registry.call(row.name, cpu, args, kwargs))
        got = np.asarray(registry.call(row.name, cuda, args, kwargs))
        tol = 1e-3 if row.name in ("matmul", "linear") else 1e-5
        if got.shape != want.shape or got.dtype != want.dtype or not np.allclose(
                got.astype(np.float64), want.astype(np.float64), rtol=tol, atol=tol):
            bad.append(row.name)
    ok = len(OPS) - len(bad)
    report.add("ops", "ops on CUDA == torch CPU (fp32)", f"{ok}/{len(OPS)}", "all",
               "PASS" if not bad else "FAIL", ", ".join(bad))


# ------------------------------------------------------------------------------- timings


def check_timings(report: Report) -> None:
    import torch

    from tensorwire.channel import Arena
    from tensorwire.channel._cuda import register_host, unregister_host
    from tensorwire.server.ops import default_registry, make_backend

    backend, registry = make_backend("torch", "cuda"), default_registry()
    x = np.random.default_rng(1).standard_normal((2560, 1024), dtype=np.float32)
    arena = Arena.create(x.nbytes)
    reg = register_host(arena.segment.buf)
    try:
        view = arena.segment.ndarray(0, x.shape, x.dtype)
        view[...] = x
        backend.take_timings()  # the server's per-request fence; turns async copies on
        times = []
        for _ in range(5):
            y = registry.call("gelu", backend, [view], {})
            times.append(backend.take_timings())
        torch.cuda.synchronize()
        t = times[-1]
        ok = (reg.active and t.get("h2d") == "pinned" and t.get("host_to_device", 0) > 0
              and t.get("device_to_host", 0) > 0
              and np.allclose(y, registry.call("gelu", make_backend("torch", "cpu"), [x], {}),
                              rtol=1e-5, atol=1e-5))
        report.details["timings"] = times
        report.add("timings", "CUDA-event stages, 10 MB gelu from arena",
                   f"h2d {_us(t.get('host_to_device', 0))} / compute "
                   f"{_us(t.get('device_compute', 0))} / d2h {_us(t.get('device_to_host', 0))}",
                   "present, h2d=pinned", "PASS" if ok else "FAIL",
                   f"path={t.get('h2d')} registered={reg.active} {reg.reason}")
    finally:
        unregister_host(reg)
        arena.segment.close()


# ------------------------------------------------------------------------------- bandwidth


def _copy_bw(fn: Callable[[], Any], nbytes: int, reps: int, stream: Any) -> float:
    import torch

    fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(stream)
        fn()
        b.record(stream)
        b.synchronize()
        samples.append(a.elapsed_time(b) / 1e3)
    return nbytes / statistics.median(samples)


def check_bandwidth(report: Report, size: int, reps: int) -> None:
    import torch

    from tensorwire.channel import Arena
    from tensorwire.channel._cuda import register_host, unregister_host
    from tensorwire.server.ops import make_backend

    stream = torch.cuda.Stream()
    dev = torch.empty(size, dtype=torch.uint8, device="cuda")
    pageable = np.ones(size, dtype=np.uint8)
    pinned = torch.ones(size, dtype=torch.uint8, pin_memory=True)
    arena = Arena.create(size)
    reg = register_host(arena.segment.buf)
    try:
        view = arena.segment.ndarray(0, size, np.uint8)
        view[...] = 1
        arena_t = torch.from_numpy(view)
        page_t = torch.from_numpy(pageable)
        with torch.cuda.stream(stream):
            bw = {
                "arena": _copy_bw(lambda: dev.copy_(arena_t, non_blocking=True), size, reps,
                                  stream),
                "pinned": _copy_bw(lambda: dev.copy_(pinned, non_blocking=True), size, reps,
                                   stream),
                "pageable": _copy_bw(lambda: dev.copy_(page_t), size, reps, stream),
                "d2h_arena": _copy_bw(lambda: arena_t.copy_(dev, non_blocking=True), size, reps,
                                      stream),
                "d2h_pinned": _copy_bw(lambda: pinned.copy_(dev, non_blocking=True), size,
                                       reps, stream),
                "d2h_pageable": _copy_bw(lambda: page_t.copy_(dev), size, reps, stream),
            }
        # the backend's own path (event-timed from_wire out of the arena)
        backend = make_backend("torch", "cuda")
        backend.take_timings()
        h2d = []
        for _ in range(reps):
            backend.from_wire(view)
            h2d.append(backend.take_timings()["host_to_device"])
        bw["backend_from_wire"] = size / statistics.median(h2d)
        report.details["bandwidth_bytes_per_s"] = bw
        ratio = bw["arena"] / bw["pinned"]
        report.add("h2d", f"arena H2D / torch pinned ({size >> 20} MB)",
                   f"{ratio:.0%} ({_gbs(bw['arena'])} vs {_gbs(bw['pinned'])})",
                   f">= {H2D_TARGET_RATIO:.0%}", "PASS" if ratio >= H2D_TARGET_RATIO else "FAIL",
                   f"registered={reg.active} {reg.reason}")
        report.add("h2d", "pageable H2D; backend.from_wire(arena)",
                   f"{_gbs(bw['pageable'])}; {_gbs(bw['backend_from_wire'])}", "-", "INFO")
        report.add("d2h", "D2H arena / pinned / pageable",
                   f"{_gbs(bw['d2h_arena'])} / {_gbs(bw['d2h_pinned'])} / "
                   f"{_gbs(bw['d2h_pageable'])}", "-", "INFO")
    finally:
        unregister_host(reg)
        arena.segment.close()


# ------------------------------------------------------------------------------- seed workload


def check_seed(report: Report, reps: int) -> None:
    try:
        import zmq  # noqa: F401
    except ImportError:
        report.add("seed", "seed workload end to end", "-", f"<= {_ms(SEED_TARGET_S)}",
                   "SKIP", "pyzmq not importable here: carry it as a wheel")
        return
    sys.path.insert(0, str(HERE))
    import _harness as h
    import tensorwire as tw
    from tensorwire.diagnose import seed_inputs

    x, w, b = seed_inputs()
    ref = _gelu(x.astype(np.float64) @ w + b)
    with h.temp_dir() as tmp:
        argv = h.tensorwire_serve_argv(h.endpoint("ipc", tmp, "tw"),
                                       ["--backend", "torch", "--device", "cuda"])
        with h.child_server(argv, h.TW_READY, timeout=120) as (_, url):
            for wire, tol in ((None, 1e-3), ("bfloat16", 5e-2)):
                label = "fp32" if wire is None else "bf16"
                with tw.Client(url, shm_size=128 << 20, wire_dtype=wire) as gpu:
                    wr, br = gpu.put(w, cache=True), gpu.put(b, cache=True)
                    xa = gpu.asarray(x)
                    with gpu.graph() as g:
                        out = g.gelu(g.matmul(g.input("x"), wr) + br)
                    y = np.asarray(g.run(out, x=xa), dtype=np.float64)
                    err = float(np.max(np.abs(y - ref) / (np.abs(ref) + 1)))
                    samples, traces = [], []
                    for _ in range(reps):
                        t0 = time.perf_counter()
                        g.run(out, x=xa)
                        samples.append(time.perf_counter() - t0)
                        traces.append(dict(gpu.last_trace))
                    med = statistics.median(samples)
                    trace = traces[len(traces) // 2]
                    report.details[f"seed_{label}"] = {"samples_s": samples, "trace": trace,
                                                      "max_rel_err": err, "path": gpu.path}
                    stages = " ".join(f"{k}={_us(trace[k])}" for k in
                                      ("compute", "host_to_device", "device_compute",
                                       "device_to_host") if k in trace)
                    ok = med <= SEED_TARGET_S and err <= tol
                    report.add("seed", f"seed fused graph, {label} wire, x in arena",
                               _ms(med), f"<= {_ms(SEED_TARGET_S)}", "PASS" if ok else "FAIL",
                               f"err={err:.1e} path={gpu.path} "
                               f"h2d={trace.get('paths', {}).get('h2d', '?')} {stages}")


def _gelu(v: np.ndarray) -> np.ndarray:
    from math import erf, sqrt

    return v * 0.5 * (1 + np.vectorize(erf)(v / sqrt(2)))


# ------------------------------------------------------------------------------- CUDA IPC

REFUSER = r"""
import sys
sys.path.insert(0, sys.argv[1])
import torch
import tensorwire as tw
from tensorwire.channel._cuda import CudaIpcRefused
with tw.Client(sys.argv[2]) as gpu:
    try:
        gpu.identity(torch.ones(1 << 18, device="cuda"))
        print("sent")
    except CudaIpcRefused as exc:
        print("refused:", exc)
"""


def check_ipc(report: Report, nbytes: int, reps: int) -> None:
    """The real client path: a torch CUDA tensor to `gpu.identity`, its view coming back."""
    import torch

    sys.path.insert(0, str(HERE))
    import _harness as h
    import tensorwire as tw

    with h.temp_dir() as tmp:
        argv = h.tensorwire_serve_argv(h.endpoint("ipc", tmp, "tw"),
                                       ["--backend", "torch", "--device", "cuda"])
        with h.child_server(argv, h.TW_READY, timeout=120) as (_, url):
            with tw.Client(url) as gpu:
                if not gpu.server_info.get("ipc"):
                    report.add("ipc", "CUDA IPC offered", "no", "yes", "FAIL",
                               str(gpu.server_info.get("ipc_reason"))[:120])
                    return
                for name, size in (("big", nbytes), ("small", 1 << 20)):
                    _ipc_pass(report, gpu, torch, name, size, reps)
                small = np.ones(256, np.float32)  # the floor: any call's round trip here
                floor = []
                for _ in range(reps):
                    t0 = time.perf_counter()
                    gpu.identity(small)
                    floor.append(time.perf_counter() - t0)
                report.add("ipc", "1 KB numpy identity, same client (the call floor)",
                           _us(statistics.median(floor)), "-", "INFO",
                           f"path={gpu.last_trace.get('paths', {}).get('message')}")
            env = {**os.environ, "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}
            proc = subprocess.run([sys.executable, "-c", REFUSER, str(SRC), url], env=env,
                                  capture_output=True, text=True, timeout=120)
            out = proc.stdout.strip()
            ok = out.startswith("refused:") and "expandable" in out
            report.add("ipc", "expandable segments refused clearly",
                       "refused" if ok else (out or "crashed")[:20], "refused",
                       "PASS" if ok else "FAIL", (out or proc.stderr)[-100:])


def _ipc_pass(report: Report, gpu: Any, torch: Any, name: str, nbytes: int, reps: int) -> None:
    t = torch.arange(nbytes // 4, dtype=torch.int32, device="cuda")
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    back = gpu.identity(t)  # the first pass opens the allocation on the server
    cold = time.perf_counter() - t0
    ok = back.data_ptr() == t.data_ptr() and back.device == t.device and torch.equal(back, t)
    warm, traces = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        gpu.identity(t)
        warm.append(time.perf_counter() - t0)
        traces.append(dict(gpu.last_trace))
    med = statistics.median(warm)
    stages = {k: statistics.median(tr[k] for tr in traces) for k, v in traces[0].items()
              if isinstance(v, float)}
    report.details[f"ipc_{name}"] = {"cold_s": cold, "warm_s": warm, "correct": ok,
                                     "trace": traces[-1], "median_stages_s": stages}
    report.add("ipc", f"CUDA IPC pass via Client, {nbytes >> 20} MB identity",
               _us(med), f"<= {_us(IPC_TARGET_S)}",
               "PASS" if med <= IPC_TARGET_S and ok else "FAIL",
               f"first call {_us(cold)}; view of the argument {'ok' if ok else 'WRONG'}; "
               f"paths={traces[-1].get('paths', {}).get('request')}; medians: "
               + " ".join(f"{k}={v * 1e6:.0f}" for k, v in stages.items() if k != "total"))
    del t, back


# ------------------------------------------------------------------------------- pipeline

PIPELINE_DEPTH = 4
PIPELINE_CLIENTS = 2


def check_pipeline(report: Report, nbytes: int, calls: int, rounds: int,
                   device: str = "cuda") -> None:
    """Serial against pipelined serving, same requests: two clients, each with `calls`
    `neg`s of an `nbytes` arena tensor in flight; two servers, rounds interleaved. Only the
    requests are timed: results are checked after the clock stops (a 16 MB `-x` and compare
    cost the clients more host time than the GPU spends on the request). `device="cpu"`
    is a dry run of the row's code, where nothing can overlap."""
    try:
        import zmq  # noqa: F401
    except ImportError:
        report.add("pipeline", "pipelined vs serial serving", "-", "> 1.00x", "SKIP",
                   "pyzmq not importable here: carry it as a wheel")
        return
    sys.path.insert(0, str(HERE))
    import _harness as h
    import tensorwire as tw

    rng = np.random.default_rng(5)
    xs = [rng.standard_normal(nbytes // 4, dtype=np.float32) for _ in range(calls)]
    expected = [-x for x in xs]
    with h.temp_dir() as tmp, contextlib.ExitStack() as stack:
        clients: dict[int, list[Any]] = {}
        for depth in (1, PIPELINE_DEPTH):
            argv = h.tensorwire_serve_argv(
                h.endpoint("ipc", tmp, f"d{depth}"),
                ["--backend", "torch", "--device", device, "--pipeline-depth", str(depth)])
            _, url = stack.enter_context(h.child_server(argv, h.TW_READY, timeout=120))
            # Room for the arguments (c2s) and for every result held until checked (s2c).
            clients[depth] = [stack.enter_context(tw.Client(url, shm_size=2 * calls * nbytes))
                              for _ in range(PIPELINE_CLIENTS)]
        args = {d: [[gpu.asarray(x) for x in xs] for gpu in cs] for d, cs in clients.items()}
        seconds: dict[int, list[float]] = {d: [] for d in clients}
        wrong = 0
        for r in range(rounds + 1):  # the first round warms both servers up
            for depth in clients:
                took, results = _pipelined_round(clients[depth], args[depth])
                wrong += sum(not np.array_equal(y, e) for ys in results
                             for y, e in zip(ys, expected, strict=True))
                del results  # their arena blocks go back with the next requests
                if r:
                    seconds[depth].append(took)
        traces = {d: _device_stages(cs[0].last_trace) for d, cs in clients.items()}
        # Evidence that the deep server did launch requests behind running ones.
        behind = clients[PIPELINE_DEPTH][0]._request("stats", "", (), {})["launched_behind"]
    serial = statistics.median(seconds[1])
    piped = statistics.median(seconds[PIPELINE_DEPTH])
    ratio = serial / piped
    report.details["pipeline"] = {"nbytes": nbytes, "calls": calls, "launched_behind": behind,
                                  "clients": PIPELINE_CLIENTS, "device": device,
                                  "seconds": seconds, "last_call_stages_s": traces}
    report.add("pipeline", f"{PIPELINE_CLIENTS} clients x {calls} x {nbytes >> 20} MB neg "
               f"in flight: depth {PIPELINE_DEPTH} vs 1", f"{ratio:.2f}x", "> 1.00x",
               "PASS" if ratio > 1.0 and behind > 0 and not wrong else "FAIL",
               f"round {_ms(piped)} vs {_ms(serial)}; launched behind others: {behind}; "
               f"wrong results: {wrong}; a call's device stages (serial): "
               + " ".join(f"{k}={_us(v)}" for k, v in traces[1].items()))


def _device_stages(trace: dict[str, Any]) -> dict[str, float]:
    return {k: trace[k] for k in ("host_to_device", "device_compute", "device_to_host",
                                  "total") if k in trace}


def _pipelined_round(clients: list[Any],
                     args: list[list[np.ndarray]]) -> tuple[float, list[list[Any]]]:
    """Every client submits all of its calls at once; seconds until the last result, and
    the results (per client, in order)."""
    import threading

    start = threading.Barrier(len(clients) + 1)
    results: list[list[Any]] = [[] for _ in clients]
    errors: list[BaseException] = []

    def work(gpu: Any, xs: list[np.ndarray], out: list[Any]) -> None:
        start.wait()
        try:
            futures = [gpu.submit("neg", x) for x in xs]
            out.extend(future.result(timeout=120) for future in futures)
        except Exception as exc:  # raised below, in the check's own thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=job)
               for job in zip(clients, args, results, strict=True)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    took = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return took, results


# ------------------------------------------------------------------------------- main


def check_ucx(report: Report) -> None:
    try:
        import ucxx  # noqa: F401

        note = ("ucxx imports; the ucx:// transport is tested by tests/test_ucx.py, "
                "not timed here")
    except ImportError:
        note = "ucxx not importable (pip install 'tensorwire[ucx]'); ucx:// not measured"
    report.add("ucx", "ucx:// transport", "-", "-", "SKIP", note)


def run(args: argparse.Namespace) -> Report:
    import torch

    report = Report()
    props = torch.cuda.get_device_properties(0)
    report.details["device"] = {"name": props.name, "torch": torch.__version__,
                                "cuda": torch.version.cuda,
                                "memory_gib": round(props.total_memory / 2**30, 1)}
    size = (64 if args.quick else 256) << 20
    reps = 5 if args.quick else 20
    steps: list[tuple[str, Callable[[], None]]] = [
        ("ops", lambda: check_ops(report)),
        ("timings", lambda: check_timings(report)),
        ("h2d", lambda: check_bandwidth(report, size, reps)),
        ("seed", lambda: check_seed(report, 20 if args.quick else 50)),
        ("ipc", lambda: check_ipc(report, (64 << 20) if args.quick else (1 << 30), 200)),
        ("pipeline", lambda: check_pipeline(report, 16 << 20, 8, 5 if args.quick else 15)),
        ("ucx", lambda: check_ucx(report)),
    ]
    for name, step in steps:
        if args.only and name not in args.only:
            continue
        t0 = time.perf_counter()
        with _guard(report, name):
            step()
        report.details.setdefault("seconds", {})[name] = time.perf_counter() - t0
        print(f"[{name}] done in {time.perf_counter() - t0:.1f} s", flush=True)
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", metavar="FILE", help="write rows and details as JSON")
    p.add_argument("--quick", action="store_true", help="smaller sizes and fewer repetitions")
    p.add_argument("--only", nargs="*", default=None,
                   help="run only these checks: ops timings h2d seed ipc pipeline ucx")
    p.add_argument("--allow-no-gpu", action="store_true",
                   help="exit 0 (not 2) when there is no CUDA device")
    args = p.parse_args(argv)
    from tensorwire.channel._cuda import cuda_available

    if not cuda_available():
        print(NO_GPU)
        if args.json:
            Path(args.json).write_text(json.dumps({"status": "no-gpu", "message": NO_GPU,
                                                   "rows": []}, indent=2))
        return 0 if args.allow_no_gpu else 2
    report = run(args)
    name = report.details["device"]["name"]
    print(f"\ndevice: {name}, torch {report.details['device']['torch']}")
    report.print()
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"status": "failed" if report.failed else "ok", "rows": report.rows,
             "details": report.details}, indent=2, default=str))
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
