"""PNG charts of the report's data (matplotlib, Agg backend): every axis labelled with units."""

from __future__ import annotations

import os
from typing import Any

from ._report import TREE_ORDER
from ._sizes import format_size

STAGES = ("serialize", "send", "receive", "deserialize")


def write_charts(data: dict[str, Any], outdir: str) -> dict[str, str]:
    """Write the charts into outdir; return {title: file path}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(outdir, exist_ok=True)
    charts = {
        "Stage times per path": ("stages.png", _stages),
        "Round-trip latency vs size": ("latency.png", _latency),
    }
    if data.get("ladder"):
        charts["Optimisation ladder"] = ("ladder.png", _ladder)
        charts["Latency budget per ladder step"] = ("budget.png", _budget)
    written = {}
    for title, (name, draw) in charts.items():
        fig = draw(plt, data)
        fig.suptitle(title)
        fig.tight_layout()
        path = os.path.join(outdir, name)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written[title] = path
    return written


def _stages(plt: Any, data: dict[str, Any]) -> Any:
    rows = data.get("stages") or []
    sizes = sorted({r["nbytes"] for r in rows}) or [0]
    fig, axes = plt.subplots(1, len(sizes), figsize=(4.5 * len(sizes), 4.2), squeeze=False)
    for ax, size in zip(axes[0], sizes, strict=True):
        at = [r for r in rows if r["nbytes"] == size]
        bottom = [0.0] * len(at)
        for stage in STAGES:
            values = [r[f"{stage}_ms"] for r in at]
            ax.bar([r["transport"] for r in at], values, bottom=bottom, label=stage)
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        _clip_outliers(ax, bottom)
        ax.set_title(f"{format_size(size)} round trip")
        ax.set_xlabel("path")
        ax.set_ylabel("time (ms, median per stage)")
        ax.tick_params(axis="x", rotation=30)
    axes[0][0].legend(fontsize="small")
    return fig


def _clip_outliers(ax: Any, heights: list[float]) -> None:
    """Keep the small bars readable: cut the axis above them and print the cut bars' totals."""
    small = sorted(heights)[:-1] or heights
    top = max(small) * 1.4
    if max(heights) <= 4 * top:
        return
    ax.set_ylim(0, top)
    for i, h in enumerate(heights):
        if h > top:
            ax.text(
                i,
                top * 0.97,
                f"{h:.0f} ms\n(cut)",
                ha="center",
                va="top",
                fontsize="small",
                color="white",
                fontweight="bold",
            )


def _latency(plt: Any, data: dict[str, Any]) -> Any:
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    rows = data.get("stages") or []
    for path in dict.fromkeys(r["transport"] for r in rows):
        pts = sorted((r for r in rows if r["transport"] == path), key=lambda r: r["nbytes"])
        x = [r["nbytes"] for r in pts]
        y = [r["total_ms"] for r in pts]
        err = [
            [r["total_ms"] - r["p10_ms"] for r in pts],
            [r["p90_ms"] - r["total_ms"] for r in pts],
        ]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=path)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("array size (bytes)")
    ax.set_ylabel("round-trip latency (ms, median; bars p10–p90)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def _ladder(plt: Any, data: dict[str, Any]) -> Any:
    ladder = data["ladder"]
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(ladder) + 1.5))
    ys = list(range(len(ladder)))[::-1]
    measured = [r["measured"]["total_ms"] if r.get("measured") else 0 for r in ladder]
    predicted = [r["predicted_ms"] or 0 for r in ladder]
    ax.barh([y + 0.2 for y in ys], measured, height=0.4, label="measured here (median)")
    ax.barh(
        [y - 0.2 for y in ys],
        predicted,
        height=0.4,
        fill=False,
        hatch="//",
        label="seed's prediction (not measured)",
    )
    ax.set_xscale("log")
    positive = [v for v in measured + predicted if v > 0] or [1.0]
    left = min(positive) / 3
    ax.set_xlim(left, max(positive) * 3)
    for y, value in zip(ys, measured, strict=True):
        label = f"{value:.1f} ms" if value else "not available (not measured)"
        ax.text(
            value * 1.05 if value else left * 1.1, y + 0.2, label, va="center", fontsize="small"
        )
    ax.set_yticks(ys, [r["step"] for r in ladder])
    ax.set_xlabel("seed workload latency (ms, log scale)")
    ax.legend(fontsize="small", loc="lower right")
    return fig


def _budget(plt: Any, data: dict[str, Any]) -> Any:
    rows = [r for r in data["ladder"] if r.get("measured")]
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(rows) + 1.8))
    ys = list(range(len(rows)))[::-1]
    left = [0.0] * len(rows)
    for part in TREE_ORDER:
        values = [r["measured"]["budget"]["parts"].get(part) or 0.0 for r in rows]
        if not any(values):
            continue
        shares = [
            v / r["measured"]["budget"]["total_ms"] * 100 for v, r in zip(values, rows, strict=True)
        ]
        ax.barh(ys, shares, left=left, label=part)
        left = [a + b for a, b in zip(left, shares, strict=True)]
    ax.set_yticks(ys, [f"{r['step']}\n({r['measured']['total_ms']:.1f} ms)" for r in rows])
    ax.set_xlabel("share of the request's latency (%)")
    ax.set_xlim(0, 100)
    ax.legend(fontsize="small", ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.25))
    return fig
