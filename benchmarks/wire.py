"""Wire precision through tensorwire (issue 5): speed over tcp, error on the seed workload, and
"auto" over shared memory, all measured in one run.

    python benchmarks/wire.py [--quick] [--sizes 100MB,10MB] [--shm-size 10MB] [--json FILE]

(a) tcp: a `tensorwire serve --insecure` child on tcp://127.0.0.1, one client with
    transport="zmq"; the same float32 array round trips through `identity` with the per-call
    override wire_dtype=None (float32 on the wire), "bfloat16" and "auto"; beside them, a bare
    ZeroMQ multipart echo over tcp of the float32 bytes and of half of them (the wire alone,
    no codec, no cast: the most a half-size wire can buy). Interleaved round robin, medians.
    Target: 100 MB, bf16 wire >= 1.6x faster than float32 wire (float32 median / bf16 median).
(b) the seed workload (x 2560x1024, w 1024x1024 / 32, b 1024; linear then gelu, one graph
    request, numpy backend) over the same tcp server, by a client with wire_dtype="bfloat16"
    and one with wire_dtype=None: max abs error of the bf16-wire output against the float32-wire
    output, beside the theoretical bound that `tensorwire.precision.seed_workload` derives for
    the same inputs (row "gelu(linear), result cast too": operands cast on the way in, the
    result cast on the way back, as the wire does). That function also replays the casts
    offline; its max abs error equal to the measured one means the per-element bound check it
    makes holds for the tensorwire output too.
(c) shared memory (transport="auto", same host, ipc server): wire_dtype="auto" vs None per call
    on one client, 10 MB. "auto" must cast nothing there (the trace says) and must not be
    slower: ratio of medians (auto / None) <= 1 + the no-cast row's relative p10-p90 half-width.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h  # noqa: E402
import _seed_paths as sp  # noqa: E402

ECHO = str(Path(__file__).resolve().parent / "_echo_server.py")
TCP_TARGET = 1.6  # bf16 wire speedup over float32 wire, tcp, at the largest size
WARMUP = 2  # untimed calls per path before the round robin (their traces are dropped too)

TCP_LABELS = {
    "f32": "tensorwire identity, wire_dtype=None (float32)",
    "bf16": "tensorwire identity, wire_dtype='bfloat16'",
    "auto": "tensorwire identity, wire_dtype='auto'",
    "bare_full": "bare zmq multipart echo, float32 bytes",
    "bare_half": "bare zmq multipart echo, half the bytes",
}
SHM_LABELS = {
    "none": "tensorwire identity, auto transport (shm), wire_dtype=None",
    "auto": "tensorwire identity, auto transport (shm), wire_dtype='auto'",
}


def _paths(trace: dict[str, Any]) -> str:
    p = trace.get("paths") or {}
    req = ",".join(p.get("request", [])) or "-"
    rep = ",".join(p.get("reply", [])) or "-"
    return f"{req} → {rep} (message:{p.get('message', '?')})"


def _casts(trace: dict[str, Any]) -> bool:
    p = trace.get("paths") or {}
    return any("float16" in x for x in [*p.get("request", []), *p.get("reply", [])])


class Traced:
    """Wraps a call: keeps the last trace's paths and each call's stage seconds."""

    def __init__(self, client: Any, fn: Callable[[], Any]) -> None:
        self.client, self.fn = client, fn
        self.stages: list[dict[str, float]] = []
        self.paths = ""
        self.cast = False

    def __call__(self) -> Any:
        out = self.fn()
        tr = self.client.last_trace
        self.stages.append({k: v for k, v in tr.items() if isinstance(v, float)})
        self.paths, self.cast = _paths(tr), _casts(tr)
        return out


@contextlib.contextmanager
def servers(shm_arena: int) -> Iterator[tuple[str, str, str]]:
    """(tensorwire tcp url, tensorwire ipc url, bare echo tcp url)."""
    with h.temp_dir() as tmp:
        common = ["--backend", "numpy", "--device", "cpu", "--shm-max-arena", str(shm_arena)]
        tcp_argv = h.tensorwire_serve_argv("tcp://127.0.0.1:0", common)  # adds --insecure
        ipc_argv = h.tensorwire_serve_argv(h.endpoint("ipc", tmp, "tw"), common)
        echo_argv = [sys.executable, ECHO, "--listen", "tcp://127.0.0.1:0"]
        with (
            h.child_server(tcp_argv, h.TW_READY, timeout=60) as (_, tcp_url),
            h.child_server(ipc_argv, h.TW_READY, timeout=60) as (_, ipc_url),
            h.child_server(echo_argv, r"echo: listening on (\S+)") as (_, echo_url),
        ):
            yield tcp_url, ipc_url, echo_url


# -- (a) tcp ----------------------------------------------------------------------------------


def measure_tcp(gpu: Any, echo: zmq.Socket[Any], nbytes: int, reps: int) -> dict[str, Any]:
    arr = np.random.default_rng(1).standard_normal(nbytes // 4, dtype=np.float32)
    half = np.ascontiguousarray(arr[: arr.size // 2])
    traced = {
        "f32": Traced(gpu, lambda: gpu.identity(arr, wire_dtype=None)),
        "bf16": Traced(gpu, lambda: gpu.identity(arr, wire_dtype="bfloat16")),
        "auto": Traced(gpu, lambda: gpu.identity(arr, wire_dtype="auto")),
    }
    fns: dict[str, Callable[[], Any]] = dict(traced)
    fns["bare_full"] = lambda: sp.round_trip("multipart", echo, arr)
    fns["bare_half"] = lambda: sp.round_trip("multipart", echo, half)
    stats = h.measure_interleaved(fns, dict.fromkeys(fns, reps), warmup=WARMUP)
    # correctness of what came back (outside the timing)
    back = gpu.identity(arr, wire_dtype="bfloat16")
    rel = float(np.max(np.abs(back.astype(np.float64) - arr) / np.maximum(np.abs(arr), 1e-30)))
    f32 = stats["f32"].median
    return {
        "round_trip": stats,
        "speedup_vs_f32": {n: h.ratio(f32, s.median) for n, s in stats.items()},
        "bare_speedup_half_vs_full": h.ratio(stats["bare_full"].median, stats["bare_half"].median),
        "paths": {n: t.paths for n, t in traced.items()},
        "casts": {n: t.cast for n, t in traced.items()},
        "stages": {n: h.median_dicts(t.stages[WARMUP:]) for n, t in traced.items()},
        "bf16_max_rel_error": rel,
        "dtype_back": str(back.dtype),
    }


# -- (b) seed workload ------------------------------------------------------------------------


def seed_error(url: str, rows: int, reps: int) -> dict[str, Any]:
    import tensorwire as tw
    from tensorwire.precision import seed_workload
    from tensorwire.precision._report import seed_inputs

    inp = seed_inputs(rows)  # the inputs the bound below is derived for
    outs: dict[str, np.ndarray] = {}
    times: dict[str, list[float]] = {"f32": [], "bf16": []}
    paths: dict[str, str] = {}
    with (
        tw.Client(url, transport="zmq") as c32,
        tw.Client(url, transport="zmq", wire_dtype="bfloat16") as cbf,
    ):
        runs = {}
        for name, cl in (("f32", c32), ("bf16", cbf)):
            with cl.graph() as g:
                y = g.gelu(g.linear(g.input("x"), g.input("w"), g.input("b")))
            runs[name] = (cl, g, y)
            outs[name] = g.run(y, **inp)  # warm-up; also the value compared below
            paths[name] = _paths(cl.last_trace)
        for r in range(reps):
            order = ["f32", "bf16"] if r % 2 == 0 else ["bf16", "f32"]
            for name in order:
                cl, g, y = runs[name]
                t0 = time.perf_counter()
                out = g.run(y, **inp)
                times[name].append(time.perf_counter() - t0)
                if not np.array_equal(out, outs[name]):
                    raise AssertionError(f"{name}: the seed workload gave different results")
        mode = str(runs["bf16"][1].last_mode)
    ref, got = outs["f32"].astype(np.float64), outs["bf16"].astype(np.float64)
    err = np.abs(got - ref)
    model = seed_workload(["bfloat16"], rows=rows)["bfloat16"]
    bound_row = model["gelu(linear), result cast too"]
    measured = float(err.max())
    return {
        "rows": rows,
        "dtype_out": str(outs["bf16"].dtype),
        "paths": paths,
        "graph_mode": mode,
        "measured_max_abs_error": measured,
        "measured_median_abs_error": float(np.median(err)),
        "measured_max_rel_error_normwise": float(err.max() / np.abs(ref).max()),
        "bound_max_abs": bound_row["bound_max_abs"],
        "model": model,
        "model_max_abs_error": bound_row["max_abs_error"],
        "same_as_model": measured == bound_row["max_abs_error"],
        "end_to_end_s": {n: statistics.median(v) for n, v in times.items() if v},
        "n": reps,
    }


# -- (c) shared memory ------------------------------------------------------------------------


def measure_shm(url: str, nbytes: int, reps: int, shm_size: int) -> dict[str, Any]:
    import tensorwire as tw

    arr = np.random.default_rng(2).standard_normal(nbytes // 4, dtype=np.float32)
    with tw.Client(url, shm_size=shm_size) as gpu:
        traced = {
            "none": Traced(gpu, lambda: gpu.identity(arr, wire_dtype=None)),
            "auto": Traced(gpu, lambda: gpu.identity(arr, wire_dtype="auto")),
        }
        stats = h.measure_interleaved(dict(traced), dict.fromkeys(traced, reps), warmup=WARMUP)
        path = gpu.path
    # the client-wide policy too (not timed): wire_dtype="auto" given to Client
    with tw.Client(url, shm_size=shm_size, wire_dtype="auto") as gauto:
        gauto.identity(arr)
        client_policy = {"paths": _paths(gauto.last_trace), "cast": _casts(gauto.last_trace)}
    base = stats["none"]
    tol = (base.p90 - base.p10) / (2 * base.median)
    return {
        "round_trip": stats,
        "transport_path": path,
        "paths": {n: t.paths for n, t in traced.items()},
        "casts": {n: t.cast for n, t in traced.items()},
        "stages": {n: h.median_dicts(t.stages[WARMUP:]) for n, t in traced.items()},
        "client_policy_auto": client_policy,
        "ratio_auto_vs_none": h.ratio(stats["auto"].median, base.median),
        "noise_tolerance": tol,
    }


# -- run, targets, report ---------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    import tensorwire as tw

    sizes = [h.parse_size(s) for s in args.sizes.split(",") if s.strip()]
    shm_bytes = h.parse_size(args.shm_size)
    shm_arena = max(256 << 20, 4 * max(sizes + [shm_bytes]))
    out: dict[str, Any] = {"machine": h.machine_info(), "config": vars(args), "tcp": {}}
    with servers(shm_arena) as (tcp_url, ipc_url, echo_url):
        ctx: zmq.Context[Any] = zmq.Context()
        echo = sp.dealer(ctx, echo_url)
        try:
            with tw.Client(tcp_url, transport="zmq") as gpu:
                for nbytes in sizes:
                    big = nbytes >= 50 << 20
                    reps = max(1, round((15 if big else 41) * args.reps_scale))
                    if args.quick:
                        reps = 3
                    out["tcp"][h.size_label(nbytes)] = measure_tcp(gpu, echo, nbytes, reps)
        finally:
            echo.close(0)
            ctx.term()
        rows = 256 if args.quick else 2560
        out["seed_workload"] = seed_error(tcp_url, rows, 1 if args.quick else 5)
        shm_reps = 5 if args.quick else max(1, round(101 * args.reps_scale))
        out["shm"] = measure_shm(ipc_url, shm_bytes, shm_reps, shm_arena)
        out["shm"]["size"] = h.size_label(shm_bytes)
    out["targets"] = targets(out, sizes)
    return out


def targets(out: dict[str, Any], sizes: list[int]) -> list[dict[str, Any]]:
    res: list[dict[str, Any]] = []
    for nbytes in sizes:
        label = h.size_label(nbytes)
        t = out["tcp"][label]
        judged = nbytes == max(sizes)
        sp_ = t["speedup_vs_f32"]["bf16"]
        res.append(
            {
                "name": f"tcp {label}: bf16 wire speedup over float32 wire (f32 / bf16 median)",
                "value": t["round_trip"]["bf16"].median,
                "baseline": t["round_trip"]["f32"].median,
                "ratio": sp_,
                "wanted": f">= {TCP_TARGET}×",
                "unit": "s",
                "status": ("PASS" if sp_ is not None and sp_ >= TCP_TARGET else "FAIL")
                if judged
                else "info",
            }
        )
    sw = out["seed_workload"]
    ok = (
        sw["measured_max_abs_error"] <= sw["bound_max_abs"]
        and sw["model"]["gelu(linear), result cast too"]["within_bound"]
    )
    res.append(
        {
            "name": "seed workload, bf16 wire over tcp: max abs error vs float32 wire <= bound",
            "value": sw["measured_max_abs_error"],
            "baseline": sw["bound_max_abs"],
            "ratio": h.ratio(sw["measured_max_abs_error"], sw["bound_max_abs"]),
            "wanted": "<= bound",
            "unit": "abs error",
            "status": "PASS" if ok else "FAIL",
        }
    )
    s = out["shm"]
    r = s["ratio_auto_vs_none"]
    no_cast = not s["casts"]["auto"] and not s["client_policy_auto"]["cast"]
    res.append(
        {
            "name": f"shm {s['size']}: wire_dtype='auto' / None (ratio of medians), no cast",
            "value": s["round_trip"]["auto"].median,
            "baseline": s["round_trip"]["none"].median,
            "ratio": r,
            "wanted": f"<= {1 + s['noise_tolerance']:.2f}× (1 + noise), no cast",
            "unit": "s",
            "status": "PASS"
            if no_cast and r is not None and r <= 1 + s["noise_tolerance"]
            else "FAIL",
        }
    )
    return res


def report(out: dict[str, Any]) -> None:
    h.print_machine(out["machine"])
    for label, t in out["tcp"].items():
        rows = []
        for n, s in t["round_trip"].items():
            rows.append(
                [
                    TCP_LABELS[n],
                    t["paths"].get(n, "-"),
                    h.fmt_time(s.median),
                    f"{h.fmt_time(s.p10)} – {h.fmt_time(s.p90)}",
                    s.n,
                    h.fmt_ratio(t["speedup_vs_f32"][n]),
                ]
            )
        h.print_table(
            f"(a) {label} float32 round trip over tcp (loopback, --insecure, transport=zmq)",
            ["path", "trace: request → reply", "median", "p10 – p90", "n", "speedup vs f32"],
            rows,
            [
                "speedup vs f32 = the wire_dtype=None median / this row's median (same run).",
                f"bare echo, float32 bytes / half the bytes: "
                f"{h.fmt_ratio(t['bare_speedup_half_vs_full'])} (the most halving the bytes buys).",
                f"bf16 wire result: {t['dtype_back']}, "
                f"max rel error {t['bf16_max_rel_error']:.3g}.",
                "Round robin, one timed call per path per round (2 untimed warm-up calls each).",
            ],
        )
        stage_rows = []
        for n, st in t["stages"].items():
            stage_rows.append([TCP_LABELS[n]] + [f"{st.get(k, 0) * 1e3:.2f}" for k in STAGES])
        h.print_table(
            f"(a) {label}: tensorwire trace stages (ms, medians)", ["path", *STAGES], stage_rows
        )
    sw = out["seed_workload"]
    rows = [
        [
            f"{op}",
            f"{st['max_abs_error']:.4g}",
            f"{st['bound_max_abs']:.4g}",
            f"{st['max_error_over_bound']:.3g}",
            "yes" if st["within_bound"] else "NO",
        ]
        for op, st in sw["model"].items()
    ]
    h.print_table(
        f"(b) seed workload ({sw['rows']}x1024 @ 1024x1024 + b, gelu), bf16 wire over tcp",
        ["", "max abs error", "bound (max)", "max err / bound", "every element within bound"],
        [
            [
                "measured through tensorwire (vs float32 wire)",
                f"{sw['measured_max_abs_error']:.4g}",
                f"{sw['bound_max_abs']:.4g}",
                f"{sw['measured_max_abs_error'] / sw['bound_max_abs']:.3g}",
                "-",
            ]
        ]
        + [[f"tensorwire.precision model: {r[0]}", *r[1:]] for r in rows],
        [
            f"measured == model 'gelu(linear), result cast too': {sw['same_as_model']} "
            "(then the model's per-element check applies to the tensorwire output)",
            f"median abs error {sw['measured_median_abs_error']:.3g}; normwise rel error "
            f"{sw['measured_max_rel_error_normwise']:.3g}; output dtype {sw['dtype_out']}",
            f"trace f32: {sw['paths']['f32']}; bf16: {sw['paths']['bf16']}; graph: "
            f"{sw['graph_mode']}",
            "end-to-end (one graph request, medians of "
            f"{sw['n']}): f32 wire {h.fmt_time(sw['end_to_end_s'].get('f32'))}, bf16 wire "
            f"{h.fmt_time(sw['end_to_end_s'].get('bf16'))}",
        ],
    )
    s = out["shm"]
    base = s["round_trip"]["none"].median
    h.print_table(
        f"(c) {s['size']} float32 round trip over shared memory (transport=auto, ipc server; "
        f"client path: {s['transport_path']})",
        ["path", "trace: request → reply", "median", "p10 – p90", "spread ± %", "n", "÷ None"],
        [
            [
                SHM_LABELS[n],
                s["paths"][n],
                h.fmt_time(st.median),
                f"{h.fmt_time(st.p10)} – {h.fmt_time(st.p90)}",
                f"{(st.p90 - st.p10) / (2 * st.median) * 100:.1f}",
                st.n,
                h.fmt_ratio(h.ratio(st.median, base)),
            ]
            for n, st in s["round_trip"].items()
        ],
        [
            f"client-wide wire_dtype='auto': {s['client_policy_auto']['paths']}",
            "spread ± % = (p90 - p10) / 2 / median.",
            "Round robin, one timed call per path per round (2 untimed warm-up calls each).",
        ],
    )
    print("\nTargets (issue 5; ratios of medians measured in this run)")
    for t in out["targets"]:
        r = "-" if t["ratio"] is None else f"{t['ratio']:.3g}"
        v, b = (_v(t[k], t["unit"]) for k in ("value", "baseline"))
        print(f"  {t['status']:4}  {t['name']}: {v} vs {b}, ratio {r} (wanted {t['wanted']})")


STAGES = (
    "client_serialize",
    "send",
    "server_deserialize",
    "compute",
    "server_serialize",
    "receive",
    "client_deserialize",
    "total",
)


def _v(x: float, unit: str) -> str:
    return h.fmt_time(x) if unit == "s" else f"{x:.4g}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, few repetitions (smoke)")
    ap.add_argument("--sizes", default=None, help="tcp sizes (default 100MB,10MB; quick 1MB)")
    ap.add_argument("--shm-size", default=None, help="shm size (default 10MB; quick 1MB)")
    ap.add_argument("--reps-scale", type=float, default=1.0, help="multiply repetition counts")
    ap.add_argument("--json", metavar="FILE", help="write medians, errors and targets here")
    args = ap.parse_args(argv)
    if args.sizes is None:
        args.sizes = "1MB" if args.quick else "100MB,10MB"
    if args.shm_size is None:
        args.shm_size = "1MB" if args.quick else "10MB"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ok, why = h.tensorwire_status()
    if not ok:
        print(f"tensorwire unavailable: {why}")
        return 1
    out = run(args)
    report(out)
    if args.json:
        h.write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
