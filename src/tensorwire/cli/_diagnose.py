"""`tensorwire diagnose`: measure where a request's time goes on this machine."""

from __future__ import annotations

import argparse

from ..diagnose import render, run_quick, write_json


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("diagnose", help="measure the seed-style stage table on this machine")
    p.add_argument("--transports", default="ipc,tcp", help="comma-separated: ipc,tcp")
    p.add_argument("--quick", action="store_true", help="fewer repetitions (what make demo runs)")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    transports = [t.strip() for t in args.transports.split(",") if t.strip()]
    rows = run_quick(transports, repeats=10 if args.quick else 50)
    print(render(rows))
    if args.json:
        write_json(rows, args.json)
    return 0
