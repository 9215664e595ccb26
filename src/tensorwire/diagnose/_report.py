"""The markdown report, built from the data of `run_diagnose` (or a recorded JSON file)."""

from __future__ import annotations

from typing import Any

from ._findings import findings
from ._sizes import format_size

NA = "not available"
TREE_ORDER = (
    "serialize",
    "transport",
    "deserialize",
    "queue",
    "host_to_device",
    "compute",
    "device_to_host",
    "other",
)


def render(data: dict[str, Any], charts: dict[str, str] | None = None) -> str:
    """The whole report; `charts` maps a chart's title to its path relative to the report."""
    sections = [_header(data), _environment(data), _stage_table(data)]
    if data.get("ladder"):
        sections += [_budgets(data), _ladder(data)]
    sections.append(_findings(data))
    if charts:
        sections.append("## Charts\n\n" + "\n".join(f"![{t}]({p})" for t, p in charts.items()))
    return "\n\n".join(sections) + "\n"


def _header(data: dict[str, Any]) -> str:
    s = data["settings"]
    where = s.get("connect") or f"a local `tensorwire serve --backend {s['backend']}`"
    server = data.get("server") or {}
    return (
        f"# tensorwire diagnose — where a request's time goes\n\n"
        f"tensorwire {data['version']}, run {data.get('started', '?')} in "
        f"{data.get('elapsed_s', 0):.0f} s against {where} (backend {server.get('backend')}, "
        f"device {server.get('device')}){' — quick mode' if s.get('quick') else ''}.\n"
        "Every figure below was measured in this run, except the column labelled "
        "**seed's prediction**, which is copied from the seed diagnosis for comparison."
    )


def _environment(data: dict[str, Any]) -> str:
    env = data["environment"]
    v = env.get("versions", {})
    shm = env.get("dev_shm") or {}
    viable = ", ".join(
        f"{t}: {w if w == 'yes' else 'no (' + w + ')'}"
        for t, w in (data.get("viable") or {}).items()
    )
    rows = [
        (
            "CPU",
            f"{env.get('cpu')} — {env.get('cores')} cores "
            f"({env.get('cores_usable')} usable), {env.get('memory_gb')} GB RAM",
        ),
        ("GPU", env.get("gpu")),
        ("OS", env.get("os")),
        ("versions", ", ".join(f"{k} {val}" for k, val in v.items())),
        (
            "/dev/shm",
            f"{shm.get('size_gb', '?')} GB ({shm.get('free_gb', '?')} GB free)"
            if shm
            else "absent",
        ),
        ("wire casts", env.get("native_cast", "?")),
        ("transports viable", viable or "?"),
    ]
    return "## Environment\n\n| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def _stage_table(data: dict[str, Any]) -> str:
    lines = [
        "## Stage table — `identity` round trip of a float32 array, medians",
        "",
        "| path | size | serialize ms | send ms | receive ms | deserialize ms | total ms "
        "| p10–p90 ms | MB/s | n |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in data.get("stages", []):
        lines.append(
            f"| {r['transport']} | {format_size(r['nbytes'])} | {r['serialize_ms']:.3f} "
            f"| {r['send_ms']:.3f} | {r['receive_ms']:.3f} | {r['deserialize_ms']:.3f} "
            f"| {r['total_ms']:.3f} | {r['p10_ms']:.3f}–{r['p90_ms']:.3f} "
            f"| {r['mb_per_s']:.0f} | {r['samples']} |"
        )
    lines += [
        "",
        "Both directions: serialize = client encode + server encode; receive = time "
        "on the wire both ways plus server queueing (the round trip less every other "
        "stage); deserialize = both decodes; MB/s counts the bytes sent both ways. "
        "ipc/tcp: tensorwire with transport='zmq'; shm: transport='auto' on an ipc "
        "server; seed-binary / seed-tolist: the seed's msgpack of tobytes() / tolist() "
        "over ZeroMQ ipc to a seed-style server.",
    ]
    return "\n".join(lines)


def _budgets(data: dict[str, Any]) -> str:
    measured = [r for r in data["ladder"] if r.get("measured")]
    best = min(measured, key=lambda r: r["measured"]["total_ms"])
    shown = [measured[0]] + ([best] if best is not measured[0] else [])
    out = [
        f"## Latency budget — seed workload\n\n{data['workload']['description']}. "
        "The run with the median total; stages summed over its calls, each stage a "
        "difference of timestamps on one side, so no clock alignment is needed."
    ]
    for row in shown:
        out.append(f"**{row['step']}** ({row['how']}):\n\n```\n{tree(row['measured'])}\n```")
    return "\n\n".join(out)


def tree(measured: dict[str, Any]) -> str:
    b = measured["budget"]
    total, parts = b["total_ms"], b["parts"]
    names = [n for n in TREE_ORDER if n in parts]
    lines = [f"total {total:.1f} ms ({b['calls']} calls)"]
    for i, name in enumerate(names):
        branch = "└─" if i == len(names) - 1 else "├─"
        value = parts[name]
        if value is None:
            lines.append(f"{branch} {name:<15} n/a (the server does not report it)")
        else:
            share = value / total if total else 0.0
            lines.append(f"{branch} {name:<15} {value:9.2f} ms ({share:4.0%})")
    return "\n".join(lines)


def _ladder(data: dict[str, Any]) -> str:
    lines = [
        "## Optimisation ladder — seed workload, measured",
        "",
        "| step | how | measured ms (median) | p10–p90 ms | speedup vs baseline "
        "| seed's prediction ms |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in data["ladder"]:
        m, pred = r.get("measured"), r.get("predicted_ms")
        pred_s = f"{pred:g} (predicted)" if pred is not None else "— (part of the 10)"
        if m:
            cells = (
                f"{m['total_ms']:.1f}",
                f"{m['p10_ms']:.1f}–{m['p90_ms']:.1f}",
                f"{r['speedup']:.1f}x",
            )
        else:
            cells = (f"{NA}: {r['reason']}", "—", "—")
        lines.append(f"| {r['step']} | {r['how']} | {' | '.join(cells)} | {pred_s} |")
    lines += [
        "",
        "The seed's predictions are for its own GPU setup and one request; the "
        "measured column is this machine, this run.",
    ]
    return "\n".join(lines)


def _findings(data: dict[str, Any]) -> str:
    items = data.get("findings") or findings(data)
    return "## Findings\n\n" + "\n".join(f"- {f}" for f in items)
