"""`tensorwire diagnose`: the seed's performance report, measured on this machine."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "diagnose",
        help="measure where a request's time goes; write a report",
        description="Measure the seed-style report (stage table, latency "
        "budget, optimisation ladder, findings) on this machine.",
    )
    p.add_argument(
        "--connect", metavar="URL", help="measure a running server (default: start a local one)"
    )
    p.add_argument("--sizes", default="1KB,1MB,10MB", help="array sizes for the stage table")
    p.add_argument("--transports", default="ipc,tcp,shm", help="comma-separated: ipc,tcp,shm")
    p.add_argument(
        "--workload",
        default="seed",
        choices=["seed", "none"],
        help="the workload of the latency budget and ladder (none: skip them)",
    )
    p.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "numpy", "torch"],
        help="backend of the local servers (tensorwire and the seed baseline)",
    )
    p.add_argument("--out", metavar="FILE", help="also write the markdown report here")
    p.add_argument("--plots", metavar="DIR", help="write PNG charts into DIR")
    p.add_argument("--json", metavar="FILE", help="write the measured data as JSON")
    p.add_argument("--quick", action="store_true", help="fewer repetitions (make demo)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..diagnose import Settings, parse_sizes, progress, run_diagnose

    try:
        settings = Settings(
            sizes=parse_sizes(args.sizes),
            transports=[t.strip() for t in args.transports.split(",") if t.strip()],
            workload=args.workload,
            connect=args.connect,
            backend=args.backend,
            quick=args.quick,
        )
    except ValueError as exc:
        print(f"tensorwire diagnose: error: {exc}", file=sys.stderr)
        return 2
    with progress(settings.steps(), "tensorwire diagnose") as tick:
        data = run_diagnose(settings, tick)
    _write_outputs(data, args)
    return 0


def _write_outputs(data: dict[str, Any], args: argparse.Namespace) -> None:
    from ..diagnose import findings, render, write_charts

    data["findings"] = findings(data)
    charts = write_charts(data, args.plots) if args.plots else {}
    base = os.path.dirname(os.path.abspath(args.out)) if args.out else os.getcwd()
    report = render(data, {t: os.path.relpath(p, base) for t, p in charts.items()})
    print(report, end="")
    if args.out:
        _write(args.out, report)
    if args.json:
        _write(args.json, json.dumps(data, indent=2) + "\n")


def _write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
