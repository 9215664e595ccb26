"""Ratios, targets and tables for seed_baseline.py. Every ratio divides two medians of one run."""

from __future__ import annotations

from typing import Any

import _harness as h
import _seed_paths as sp

TW_ROWS = ("tw_zmq", "tw_auto")
ROW_LABELS = {
    "tw_zmq": "tensorwire transport=zmq (ZeroMQ frames)",
    "tw_auto": "tensorwire transport=auto (default: shared memory)",
}

_TEN = "10 MB ipc: tensorwire"
# (name, transport, size, measured key, comparison, threshold)
TARGETS = (
    (f"{_TEN} vs seed binary msgpack (speedup)", "ipc", "10 MB", "vs_binary", ">=", 5.0),
    (f"{_TEN} vs seed tolist msgpack (speedup)", "ipc", "10 MB", "vs_tolist", ">=", 60.0),
    (f"{_TEN} / bare zmq multipart (ratio)", "ipc", "10 MB", "vs_multipart", "<=", 1.2),
    (
        "1 KB ipc: tensorwire / bare 1 KB ping-pong (ratio)",
        "ipc",
        "small",
        "vs_pingpong",
        "<=",
        1.5,
    ),
)


def _med(stats: Any) -> float | None:
    if stats is None:
        return None
    return float(stats["median"] if isinstance(stats, dict) else stats.median)


def path_ratios(rt: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per path: speedups vs the seed paths (baseline / path) and ratios vs the limits."""
    base = {k: _med(rt.get(k)) for k in sp.SEED_PATHS}
    out: dict[str, dict[str, Any]] = {}
    for name, stats in rt.items():
        m = _med(stats)
        r = {
            "vs_tolist": h.ratio(base["tolist"], m),
            "vs_binary": h.ratio(base["binary"], m),
            "vs_multipart": h.ratio(m, base["multipart"]),
        }
        out[name] = r
    return out


def build(results: dict[str, Any]) -> dict[str, Any]:
    ratios: dict[str, Any] = {}
    for transport, tres in results.items():
        ratios[transport] = {
            label: path_ratios(sres["round_trip"]) for label, sres in tres["sizes"].items()
        }
        lim = tres["limits"]
        ratios[transport]["small"] = {
            name: {"vs_pingpong": h.ratio(_med(s), _med(lim["pingpong_1KB"]))}
            for name, s in lim.items()
        }
    targets = []
    for name, transport, size, key, op, thr in TARGETS:
        tres = results.get(transport, {})
        for row in TW_ROWS:
            col = f"{row}_1KB" if size == "small" else row
            value = ratios.get(transport, {}).get(size, {}).get(col, {}).get(key)
            paths = tres.get("sizes", {}).get(size, {}).get("tw_paths", {}).get(row)
            status = "SKIP" if value is None else _check(value, op, thr)
            entry = {"name": name, "row": row, "value": value, "op": op, "target": thr}
            entry["paths"] = paths
            if value is None and row == "tw_auto" and tres.get("auto_path") not in (None, "shm"):
                entry["why"] = f"auto had no shared memory: {tres.get('auto_reason') or '?'}"
            targets.append({**entry, "status": status})
    return {"ratios": ratios, "targets": targets}


def _check(value: float, op: str, thr: float) -> str:
    ok = value >= thr if op == ">=" else value <= thr
    return "PASS" if ok else "FAIL"


# ---------------------------------------------------------------------------------------------
# printing


def _label(name: str, res: dict[str, Any]) -> str:
    label = sp.LABELS.get(name, name)
    paths = res.get("tw_paths", {}).get(name)
    if name == "tw_auto" and paths is not None:
        label += f" [{','.join(paths) or 'path not reported'}]"
    return label


SMALL_LABELS = {
    "pingpong_1B": "bare pyzmq ping-pong, 1 byte",
    "pingpong_1KB": "bare pyzmq ping-pong, 1 KB single frame",
    "multipart_1KB": "bare zmq multipart echo, 1 KB",
    "tw_zmq_1KB": "tensorwire identity 1 KB, transport=zmq",
    "tw_auto_1KB": "tensorwire identity 1 KB, transport=auto",
}


def print_limits(results: dict[str, Any], summary: dict[str, Any]) -> None:
    rows = []
    for transport, tres in results.items():
        for key, s in tres["limits"].items():
            r = summary["ratios"][transport]["small"][key]["vs_pingpong"]
            rows.append(
                [
                    f"{transport}: {SMALL_LABELS.get(key, key)}",
                    h.fmt_time(s.median),
                    h.fmt_time(s.p10),
                    h.fmt_time(s.p90),
                    s.n,
                    h.fmt_ratio(r),
                ]
            )
    h.print_table(
        "Small messages and limits: round trip DEALER -> ROUTER echo (or tensorwire) -> DEALER,"
        " interleaved",
        ["path", "median", "p10", "p90", "n", "÷ 1KB ping-pong"],
        rows,
        [
            "÷ 1KB ping-pong = this median / the bare 1 KB single-frame ping-pong median, same"
            " transport, same run.",
            "Round robin in turns of 10 timed calls, each turn after one untimed call.",
        ],
    )


def print_seed_stages(results: dict[str, Any]) -> None:
    rows = []
    for transport, tres in results.items():
        for label, sres in tres["sizes"].items():
            for p in sp.SEED_PATHS:
                st = sres["stages"][p]
                mbps = sres["bytes"] / st["total"] / 1e6 if st["total"] > 0 else None
                rows.append(
                    [
                        f"{transport} {label}",
                        sp.LABELS[p],
                        *(
                            st[k] * 1e3
                            for k in ("serialize", "send", "receive", "deserialize", "total")
                        ),
                        mbps,
                    ]
                )
    h.print_table(
        "Seed-style one-way stages (ms, medians; MB/s = array bytes / one-way total, 1 MB=1e6 B)",
        ["transport size", "path", "serialize", "send", "receive", "deserialize", "total", "MB/s"],
        rows,
        [
            "receive = from the send call's return until the echo server held the whole",
            "message (its host-wide monotonic stamp); deserialize = decoding the echoed bytes on",
            "the client. With few cores the send call may return only after the peer has the",
            "message (its process is preempted by its own I/O thread): then receive reads 0;",
            "send + receive is the one-way transport either way.",
        ],
    )


def print_tw_stages(results: dict[str, Any]) -> None:
    keys: list[str] = []
    rows_src = []
    for transport, tres in results.items():
        for label, sres in tres["sizes"].items():
            for name in TW_ROWS:
                st = sres["stages"].get(name)
                if st:
                    keys.extend(k for k in st if k not in keys)
                    rows_src.append((f"{transport} {label}", _label(name, sres), st))
    if not rows_src:
        return
    rows = [
        [where, lab, *(st[k] * 1e3 if k in st else None for k in keys)]
        for where, lab, st in rows_src
    ]
    h.print_table(
        "tensorwire client trace, per round trip (ms, medians of last_trace entries)",
        ["transport size", "client", *keys],
        rows,
        [
            "call_wall = the same calls timed around Client.call: the gap to 'total' is time",
            "the trace does not see.",
        ],
    )


def print_round_trips(results: dict[str, Any], summary: dict[str, Any]) -> None:
    for transport, tres in results.items():
        rows = []
        for label, sres in tres["sizes"].items():
            for name, s in sres["round_trip"].items():
                r = summary["ratios"][transport][label][name]
                rows.append(
                    [
                        label,
                        _label(name, sres),
                        h.fmt_time(s.median),
                        f"{h.fmt_time(s.p10)} – {h.fmt_time(s.p90)}",
                        s.n,
                        round(s.faults),
                        h.fmt_ratio(r["vs_tolist"]),
                        h.fmt_ratio(r["vs_binary"]),
                        h.fmt_ratio(r["vs_multipart"]),
                    ]
                )
        h.print_table(
            f"Round trip client -> server -> client over {transport} (medians of this run)",
            [
                "size",
                "path",
                "median",
                "p10 – p90",
                "n",
                "faults",
                "speedup vs tolist",
                "speedup vs binary",
                "÷ multipart",
            ],
            rows,
            [
                "speedup vs X = X's median / this path's median; ÷ multipart = this path's",
                "median / the bare multipart median (same size, transport and run). faults =",
                "median minor page faults per round trip in the client (fresh receive buffers).",
                "Round robin over paths; up to 64 KB in turns of 10 timed calls, each turn after",
                "one untimed call (the cost of waking that path's server after another ran).",
            ],
        )
        for label, sres in tres["sizes"].items():
            for note in sres.get("notes", []):
                print(f"  {transport} {label}: {note}")
            if sres["tolist_reps"] < sres["reps"]:
                print(
                    f"  {transport} {label}: tolist capped at {sres['tolist_reps']} repetitions "
                    f"(others {sres['reps']}) because it is slow."
                )


def print_targets(summary: dict[str, Any], tw_ok: bool, reason: str) -> None:
    rows = [
        [
            t["name"],
            ROW_LABELS.get(t["row"], t["row"]),
            h.fmt_paths(t.get("paths")),
            h.fmt_ratio(t["value"]),
            f"{t['op']} {t['target']}",
            t["status"],
        ]
        for t in summary["targets"]
    ]
    notes = [] if tw_ok else [f"SKIP: tensorwire not measured ({reason})"]
    notes += [f"{t['row']}: {t['why']}" for t in summary["targets"] if t.get("why")]
    notes.append("trace = the path each tensor took (request → reply), from Client.last_trace.")
    h.print_table(
        "Targets (issue 2; ratios of medians measured in this run)",
        ["target", "tensorwire client", "trace", "measured", "wanted", "status"],
        rows,
        notes,
    )


def print_all(results: dict[str, Any], summary: dict[str, Any], tw_ok: bool, reason: str) -> None:
    print_limits(results, summary)
    print_seed_stages(results)
    print_tw_stages(results)
    print_round_trips(results, summary)
    print_targets(summary, tw_ok, reason)
