"""Findings in the seed's spirit: which stage dominates, and what to change — from the data."""

from __future__ import annotations

from typing import Any

ADVICE = {
    "serialize": "encode tensors as raw binary frames instead of msgpack lists (tensorwire "
    "does); on one host, build inputs in the arena (gpu.empty / gpu.asarray) so "
    "sending them costs no copy",
    "transport": "move bulk bytes through same-host shared memory (transport='auto') instead "
    "of socket frames; across hosts, a faster link or fewer bytes (bf16 wire)",
    "deserialize": "decode into views of the received buffers instead of rebuilding arrays",
    "queue": "the server is busy: add server capacity or spread clients over servers",
    "compute": "transfers are no longer the bottleneck; run the ops on a GPU "
    "(serve --device cuda), keep weights resident (gpu.put) and fuse ops (gpu.graph)",
    "host_to_device": "send inputs from the shared-memory arena (pinned on CUDA servers)",
    "device_to_host": "keep results on the server (out='remote') until they are needed",
    "other": "client-side work between calls (Python, result wrapping) dominates: batch "
    "calls or submit() several in flight",
}


def dominant(budget: dict[str, Any]) -> tuple[str, float]:
    """The largest budget part and its share of the total (0..1)."""
    parts = {k: v for k, v in budget["parts"].items() if v is not None}
    name = max(parts, key=lambda k: parts[k])
    return name, parts[name] / budget["total_ms"] if budget["total_ms"] else 0.0


def findings(data: dict[str, Any]) -> list[str]:
    out = _ladder_findings(data.get("ladder") or [])
    out += _stage_findings(data.get("stages") or [])
    out += _viability_findings(data.get("viable") or {})
    return out


def _ladder_findings(ladder: list[dict[str, Any]]) -> list[str]:
    measured = [r for r in ladder if r.get("measured")]
    if not measured:
        return []
    base, best = measured[0], min(measured, key=lambda r: r["measured"]["total_ms"])
    out = [_budget_finding("Seed baseline", base)]
    if best is not base:
        out.append(_budget_finding(f"Fastest measured step ({best['step']})", best))
        out.append(
            f"Seed workload: {base['measured']['total_ms']:.1f} ms (seed baseline) → "
            f"{best['measured']['total_ms']:.1f} ms ({best['step']}), "
            f"{best['speedup']:.1f}x faster, measured here. The seed predicted 332 → "
            f"{best['predicted_ms'] or 10:g} ms for its own GPU setup (a prediction, not "
            "a measurement)."
        )
    missing = [r["step"] for r in ladder if r["status"] != "measured"]
    if missing:
        out.append("Not available yet, so not measured: " + "; ".join(missing) + ".")
    return out


def _budget_finding(label: str, row: dict[str, Any]) -> str:
    name, share = dominant(row["measured"]["budget"])
    return (
        f"{label}: **{name}** dominates ({share:.0%} of "
        f"{row['measured']['budget']['total_ms']:.1f} ms). To change: {ADVICE[name]}."
    )


def _stage_findings(stages: list[dict[str, Any]]) -> list[str]:
    if not stages:
        return []
    largest = max(r["nbytes"] for r in stages)
    at = {r["transport"]: r for r in stages if r["nbytes"] == largest}
    fastest = min(at.values(), key=lambda r: r["total_ms"])
    out = [
        f"At {largest / (1 << 20):g} MB the fastest path is {fastest['transport']} "
        f"({fastest['total_ms']:.2f} ms round trip, {fastest['mb_per_s']:.0f} MB/s)."
    ]
    if "seed-tolist" in at and fastest["transport"] != "seed-tolist":
        ratio = at["seed-tolist"]["total_ms"] / fastest["total_ms"]
        out.append(
            f"The seed's tolist() path takes {at['seed-tolist']['total_ms']:.1f} ms "
            f"for the same round trip: {ratio:.0f}x slower."
        )
    if "ipc" in at and "tcp" in at:
        ratio = at["tcp"]["total_ms"] / at["ipc"]["total_ms"]
        verdict = (
            "matters little next to serialization and copies"
            if 0.67 < ratio < 1.5
            else "matters at this size"
        )
        out.append(
            f"tcp/ipc round-trip ratio at that size: {ratio:.2f}x — the choice "
            f"between the two {verdict}."
        )
    return out


def _viability_findings(viable: dict[str, str]) -> list[str]:
    return [f"Transport {t} not usable here: {why}" for t, why in viable.items() if why != "yes"]
