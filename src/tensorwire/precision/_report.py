"""Measure what a wire precision policy does to numbers: per element and on the seed workload.

It measures the casts themselves (to_wire then from_wire, exactly what the wire does), so no
server is needed. Every measured figure sits beside its theoretical bound.

Element statistics (per data set and policy), over finite inputs below the overflow threshold:
    abs error      |fl(x) - x|
    rel error      |fl(x) - x| / |x|  over normal-range inputs; bound u (unit_roundoff)
    ulp error      |fl(x) - x| / ulp_wire(x), ulp of the wire format in x's binade; bound 0.5
    within bound   every |fl(x) - x| <= max(u |x|, half the smallest wire subnormal)
    overflow       finite inputs that became +-Inf (float16: |x| >= 65520)

Seed workload: x 2560x1024 ~ N(0,1), w 1024x1024 ~ N(0,1)/sqrt(1024), b 1024 ~ N(0,1);
linear(x, w, b) = x @ w.T + b, then gelu (exact, erf-based), computed in float32 by the
server's numpy kernels from wire-cast inputs vs from the float32 inputs. Bounds, per output j
(k = 1024, S_j = sum_i |x_i w_ji|, u the wire's unit roundoff, u32 = 2**-24,
g = (k+1) u32 / (1 - (k+1) u32) for float32 accumulation in any order, on both sides):
    linear   |dy_j| <= (2u + u^2) S_j + u |b_j| + g ((1+u)^2 S_j + (1+u)|b_j|) + g (S_j + |b_j|)
    gelu     |dg_j| <= L |dy_j| (1 + u32) + 2 u32 |gelu(y_j)|,  L = max |gelu'| = 1.1289
    + result cast back over the wire (round trip): bound + u (|ref_j| + bound)
    rms estimate (independent rounding errors, each ~ U(-u, u)): u sqrt(2/3 sum_i (x_i w_ji)^2)
"""

from __future__ import annotations

import json
import math
import platform
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..codec._precision import (
    WIRE_DTYPES_ALLOWED,
    cast_bounds,
    from_wire,
    to_wire,
    torch_available,
    unit_roundoff,
)

GELU_LIPSCHITZ = 1.1289  # max of Phi(z) + z phi(z), at z = sqrt(2): 0.92135 + 0.20755
U32 = 2.0**-24
SEED_SHAPES = {"x": (2560, 1024), "w": (1024, 1024), "b": (1024,)}


@dataclass
class Report:
    config: dict[str, Any]
    data: dict[str, dict[str, Any]] = field(default_factory=dict)  # source -> policy -> stats
    workload: dict[str, Any] = field(default_factory=dict)  # policy -> op -> stats
    skipped: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "machine": {"platform": platform.platform(), "python": platform.python_version()},
            "bounds": {w: cast_bounds(w) for w in WIRE_DTYPES_ALLOWED},
            "formulas": FORMULAS,
            "data": self.data,
            "skipped": self.skipped,
            "seed_workload": self.workload,
        }


FORMULAS = {
    "cast": "|fl(x)-x| <= u|x| (normal range), <= min_subnormal/2 below; ulp error <= 0.5",
    "linear": "|dy_j| <= (2u+u^2) S_j + u|b_j| + g((1+u)^2 S_j + (1+u)|b_j|) + g(S_j+|b_j|), "
    "S_j = sum_i |x_i w_ji|, g = (k+1) 2^-24 / (1-(k+1) 2^-24)",
    "gelu": "|dg_j| <= 1.1289 |dy_j| (1+2^-24) + 2^-23 |gelu(y_j)|",
    "round_trip": "bound + u(|ref_j| + bound) (the result is cast for the wire too)",
    "rms_estimate": "u sqrt(2/3 sum_i (x_i w_ji)^2)",
}


# ---------------------------------------------------------------------------------------------
# element statistics


def _ulp(x: np.ndarray, wire: str) -> np.ndarray:
    """Spacing of the wire format in the binade of each |x| (subnormal spacing below)."""
    b = cast_bounds(wire)
    p = round(-math.log2(unit_roundoff(wire)))  # significand bits, implicit one included
    ax = np.maximum(np.abs(x), b["min_normal"])
    ulp: np.ndarray = np.ldexp(1.0, np.frexp(ax)[1] - p)  # frexp: ax = m 2^e, m in [0.5, 1)
    return ulp


def element_stats(x: np.ndarray, wire: str) -> dict[str, Any]:
    """Cast `x` (float32/float64) to `wire` and back; error statistics beside the bounds."""
    cast, original = to_wire(x, wire)
    if original is None:
        raise ValueError(f"{x.dtype} arrays are never cast for the wire")
    back = from_wire(cast, original).astype(np.float64).ravel()
    x64 = x.astype(np.float64).ravel()
    b = cast_bounds(wire)
    u = b["unit_roundoff"]
    finite = np.isfinite(x64)
    in_range = finite & (np.abs(x64) < b["overflow_threshold"])
    xs, ys = x64[in_range], back[in_range]
    err = np.abs(ys - xs)
    normal = np.abs(xs) >= b["min_normal"]
    rel = err[normal] / np.abs(xs[normal])
    ulps = err / _ulp(xs, wire)
    bound = np.maximum(u * np.abs(xs), b["subnormal_abs_error"])
    nan_in, nan_out = np.isnan(x64), np.isnan(back)
    inf_in = np.isinf(x64)
    return {
        "n": int(x64.size),
        "n_measured": int(xs.size),
        "max_abs_error": float(err.max()) if err.size else 0.0,
        "max_rel_error": float(rel.max()) if rel.size else 0.0,
        "median_rel_error": float(np.median(rel)) if rel.size else 0.0,
        "rel_error_bound": u,
        "max_ulp_error": float(ulps.max()) if ulps.size else 0.0,
        "mean_ulp_error": float(ulps.mean()) if ulps.size else 0.0,
        "ulp_error_bound": 0.5,
        "within_bound": bool(np.all(err <= bound)),
        "overflow_to_inf": int(np.count_nonzero(finite & np.isinf(back))),
        "underflow_to_zero": int(np.count_nonzero((x64 != 0) & finite & (back == 0))),
        "subnormal_inputs": int(
            np.count_nonzero(finite & (x64 != 0) & ~(np.abs(x64) >= b["min_normal"]))
        ),
        "nan_preserved": bool(np.array_equal(nan_in, nan_out)),
        "inf_preserved": bool(np.array_equal(back[inf_in], x64[inf_in])),
        "wire_bytes": int(cast.nbytes),
        "original_bytes": int(x.nbytes),
    }


# ---------------------------------------------------------------------------------------------
# seed workload


def seed_inputs(rows: int = 2560, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    k = SEED_SHAPES["w"][1]
    return {
        "x": rng.standard_normal((rows, k), dtype=np.float32),
        "w": (rng.standard_normal(SEED_SHAPES["w"], dtype=np.float32) / np.float32(math.sqrt(k))),
        "b": rng.standard_normal(SEED_SHAPES["b"], dtype=np.float32),
    }


def _kernels() -> tuple[Any, Any]:
    from ..server.ops import make_backend

    kernels = make_backend("numpy").kernels
    return kernels["linear"], kernels["gelu"]


def _cast_round(a: np.ndarray, wire: str) -> np.ndarray:
    cast, original = to_wire(a, wire)
    assert original is not None
    return from_wire(cast, original)


def _op_stats(
    out: np.ndarray, ref: np.ndarray, bound: np.ndarray, rms: np.ndarray
) -> dict[str, Any]:
    err = np.abs(out.astype(np.float64) - ref.astype(np.float64))
    aref = np.abs(ref.astype(np.float64))
    nz = aref > 0
    return {
        "max_abs_error": float(err.max()),
        "max_rel_error_normwise": float(err.max() / aref.max()),
        "median_rel_error": float(np.median(err[nz] / aref[nz])),
        "bound_max_abs": float(bound.max()),
        "max_error_over_bound": float((err / bound).max()),
        "within_bound": bool(np.all(err <= bound)),
        "rms_estimate_median": float(np.median(rms)),
        "median_abs_error": float(np.median(err)),
    }


def seed_workload(wires: Iterable[str], rows: int = 2560) -> dict[str, Any]:
    linear, gelu = _kernels()
    inp = seed_inputs(rows)
    x, w, b = inp["x"], inp["w"], inp["b"]
    ref_lin = linear(x, w, b)
    ref_gelu = gelu(ref_lin)
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    s = np.abs(x64) @ np.abs(w64).T  # S_j per output
    sq = (x64 * x64) @ (w64 * w64).T
    ab = np.abs(b.astype(np.float64))
    k = x.shape[1]
    g = (k + 1) * U32 / (1 - (k + 1) * U32)
    out: dict[str, Any] = {}
    for wire in wires:
        u = unit_roundoff(wire)
        xc, wc, bc = (_cast_round(a, wire) for a in (x, w, b))
        lin = linear(xc, wc, bc)
        gel = gelu(lin)
        b_lin = (2 * u + u * u) * s + u * ab + g * ((1 + u) ** 2 * s + (1 + u) * ab) + g * (s + ab)
        b_gelu = GELU_LIPSCHITZ * b_lin * (1 + U32) + 2 * U32 * np.abs(ref_gelu)
        rms = u * np.sqrt(2.0 / 3.0 * sq)
        rms_gelu = GELU_LIPSCHITZ * rms
        out[wire] = {
            "linear": _op_stats(lin, ref_lin, b_lin, rms),
            "gelu(linear)": _op_stats(gel, ref_gelu, b_gelu, rms_gelu),
            "gelu(linear), result cast too": _op_stats(
                _cast_round(gel, wire),
                ref_gelu,
                b_gelu + u * (np.abs(ref_gelu) + b_gelu),
                rms_gelu,
            ),
        }
    return out


# ---------------------------------------------------------------------------------------------
# the report


def load_npy(path: str) -> np.ndarray:
    arr = np.load(path, allow_pickle=False)  # never unpickle
    if not isinstance(arr, np.ndarray):
        raise ValueError(f"{path}: not a single .npy array")
    return arr


def run(
    data: Iterable[str] = (),
    size: int = 1_000_000,
    wires: Iterable[str] = WIRE_DTYPES_ALLOWED,
    workload_rows: int = 2560,
    seed: int = 0,
) -> Report:
    wires = list(wires)
    report = Report(
        config={
            "wires": wires,
            "data": list(data),
            "size": size,
            "workload_rows": workload_rows,
            "seed": seed,
            "torch_casts": torch_available(),
        }
    )
    sources: list[tuple[str, np.ndarray]] = []
    for path in data:
        arr = load_npy(path)
        if arr.dtype.kind != "f" or arr.dtype.itemsize not in (4, 8):
            report.skipped[path] = f"{arr.dtype} is never cast for the wire"
            continue
        sources.append((path, arr))
    if not data:
        rng = np.random.default_rng(seed)
        sources.append((f"normal({size})", rng.standard_normal(size, dtype=np.float32)))
    for name, arr in sources:
        report.data[name] = {w: element_stats(arr, w) for w in wires}
    if workload_rows > 0:
        report.workload = seed_workload(wires, workload_rows)
    return report


def _g(v: float) -> str:
    return f"{v:.3g}"


def render(report: Report) -> str:
    lines = [
        "Wire precision: cast to the wire format and back (what the wire does), vs the input",
        "",
    ]
    head = (
        "| data | wire | max abs err | max rel err | median rel err | rel bound u "
        "| max ulp (bound 0.5) | within bound | overflow->Inf | NaN/Inf kept |"
    )
    for name, per in report.data.items():
        lines += [head, "|" + "---|" * 10] if len(lines) == 2 else []
        for w, st in per.items():
            lines.append(
                f"| {name} | {w} | {_g(st['max_abs_error'])} | {_g(st['max_rel_error'])} "
                f"| {_g(st['median_rel_error'])} | {_g(st['rel_error_bound'])} "
                f"| {_g(st['max_ulp_error'])} | {'yes' if st['within_bound'] else 'NO'} "
                f"| {st['overflow_to_inf']} "
                f"| {'yes' if st['nan_preserved'] and st['inf_preserved'] else 'NO'} |"
            )
    for path, why in report.skipped.items():
        lines.append(f"skipped {path}: {why}")
    if report.workload:
        rows = report.config["workload_rows"]
        lines += [
            "",
            f"Seed workload, x {rows}x1024 ~ N(0,1), w 1024x1024 / 32, b 1024, float32 compute "
            "from wire-cast inputs vs from float32 inputs",
            "",
            "| wire | op | max abs err | bound (max) | max err/bound | normwise rel err "
            "| median rel err | rms estimate | within bound |",
            "|" + "---|" * 9,
        ]
        for w, ops in report.workload.items():
            for op, st in ops.items():
                lines.append(
                    f"| {w} | {op} | {_g(st['max_abs_error'])} | {_g(st['bound_max_abs'])} "
                    f"| {_g(st['max_error_over_bound'])} | {_g(st['max_rel_error_normwise'])} "
                    f"| {_g(st['median_rel_error'])} | {_g(st['rms_estimate_median'])} "
                    f"| {'yes' if st['within_bound'] else 'NO'} |"
                )
    lines += ["", "Bounds:"] + [f"  {k}: {v}" for k, v in FORMULAS.items()]
    for w in report.config["wires"]:
        b = cast_bounds(w)
        lines.append(
            f"  {w}: u = {_g(b['unit_roundoff'])}, max finite {_g(b['max_finite'])}, "
            f"|x| >= {_g(b['overflow_threshold'])} -> Inf, subnormal below {_g(b['min_normal'])}"
        )
    return "\n".join(lines)


def write_json(report: Report, path: str) -> None:
    Path(path).write_text(json.dumps(report.as_dict(), indent=2) + "\n")
