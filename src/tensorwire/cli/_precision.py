"""`tensorwire precision`: measure the error of each wire precision policy on your data."""

from __future__ import annotations

import argparse

from ..codec import WIRE_DTYPES_ALLOWED


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "precision",
        help="error of bfloat16/float16 on the wire, on your .npy data or random normal data",
    )
    p.add_argument(
        "--data",
        nargs="+",
        default=[],
        metavar="FILE.npy",
        help="float32/float64 .npy files (default: random normal data)",
    )
    p.add_argument(
        "--size",
        type=int,
        default=1_000_000,
        help="elements of random normal data when no --data (default 1000000)",
    )
    p.add_argument(
        "--wire",
        default=",".join(WIRE_DTYPES_ALLOWED),
        help="comma-separated policies (default: bfloat16,float16)",
    )
    p.add_argument(
        "--workload-rows",
        type=int,
        default=2560,
        help="rows of x in the seed workload (default 2560; 0 skips it)",
    )
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..precision import render, write_json
    from ..precision import run as measure

    wires = [w.strip() for w in args.wire.split(",") if w.strip()]
    bad = [w for w in wires if w not in WIRE_DTYPES_ALLOWED]
    if bad or not wires:
        raise SystemExit(f"tensorwire precision: --wire takes {', '.join(WIRE_DTYPES_ALLOWED)}")
    if args.size < 1 or args.workload_rows < 0:
        raise SystemExit("tensorwire precision: --size must be >= 1 and --workload-rows >= 0")
    try:
        report = measure(args.data, args.size, wires, args.workload_rows)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"tensorwire precision: {exc}") from None
    print(render(report))
    if args.json:
        write_json(report, args.json)
    return 0
