"""What glibc huge pages buy a large tcp round trip: server and client, each with and without.

    python benchmarks/huge_pages.py [--size 100MB] [--reps 15] [--rounds 2] [--json FILE]

Two `tensorwire serve --insecure` children on tcp://127.0.0.1: one as shipped (it restarts
itself with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 where glibc supports it) and one with
TENSORWIRE_HUGE_PAGES=0. Client processes (this script, re-run with --client) time a float32
`identity` round trip (transport="zmq", wire_dtype=None) against both servers, interleaved;
one client process runs with the tunable and one without, alternating for --rounds rounds.
Medians over all rounds; every ratio is against the no-huge-pages pair of the same run.
Minor page faults per call in the client are counted too (getrusage).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h  # noqa: E402

TUNABLE = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
NO_HUGE = {"TENSORWIRE_HUGE_PAGES": "0", "GLIBC_TUNABLES": ""}


def client(urls: dict[str, str], nbytes: int, reps: int) -> dict[str, Any]:
    """In a client process: time identity against each server, interleaved."""
    import tensorwire as tw

    arr = np.random.default_rng(0).standard_normal(nbytes // 4, dtype=np.float32)
    clients = {name: tw.Client(url, transport="zmq") for name, url in urls.items()}
    out: dict[str, Any] = {name: {"samples_s": [], "faults": []} for name in clients}
    try:
        for c in clients.values():
            for _ in range(2):  # warm-up
                c.identity(arr, wire_dtype=None)
        for r in range(reps):
            names = list(clients)[r % 2 :] + list(clients)[: r % 2]  # alternate who goes first
            for name in names:
                ns, flt = h.time_call(lambda c=clients[name]: c.identity(arr, wire_dtype=None))
                out[name]["samples_s"].append(ns / 1e9)
                out[name]["faults"].append(flt)
    finally:
        for c in clients.values():
            c.close()
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    h.parse_size(args.size)  # a bad size fails here, before any server starts
    common = ["--backend", "numpy", "--device", "cpu"]
    argv = h.tensorwire_serve_argv("tcp://127.0.0.1:0", common)
    with (
        h.child_server(argv, h.TW_READY, timeout=60) as (huge, huge_url),
        h.child_server(argv, h.TW_READY, timeout=60, env=NO_HUGE) as (plain, plain_url),
    ):
        servers = {"server_huge": huge_url, "server_plain": plain_url}
        server_tunables = {"server_huge": _tunables(huge.pid), "server_plain": _tunables(plain.pid)}
        samples: dict[tuple[str, str], list[float]] = {}
        faults: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.rounds):
            for mode, env in (("client_plain", NO_HUGE), ("client_huge", TUNABLE)):
                cmd = [sys.executable, __file__, "--client", json.dumps(servers),
                       "--size", args.size, "--reps", str(args.reps)]  # fmt: skip
                proc = subprocess.run(cmd, env=h.child_env(env), capture_output=True,
                                      text=True, timeout=600, check=True)  # fmt: skip
                for server, res in json.loads(proc.stdout).items():
                    samples.setdefault((mode, server), []).extend(res["samples_s"])
                    faults.setdefault((mode, server), []).extend(res["faults"])
    rows = {
        f"{mode}+{server}": {
            "stats": h.summarize([int(s * 1e9) for s in vals]),
            "client_faults_per_call": float(np.median(faults[(mode, server)])),
        }
        for (mode, server), vals in samples.items()
    }
    base = rows["client_plain+server_plain"]["stats"].median
    for r in rows.values():
        r["speedup"] = h.ratio(base, r["stats"].median)
    return {
        "machine": h.machine_info(),
        "config": vars(args),
        "server_glibc_tunables": server_tunables,
        "rows": rows,
    }


def _tunables(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return "?"
    env = dict(i.decode(errors="replace").split("=", 1) for i in raw if b"=" in i)
    return env.get("GLIBC_TUNABLES", "")


def report(out: dict[str, Any]) -> None:
    h.print_machine(out["machine"])
    h.print_table(
        f"{out['config']['size']} float32 identity round trip over tcp (loopback), "
        "glibc huge pages on/off",
        ["client + server", "median", "p10 – p90", "n", "client faults/call", "speedup"],
        [
            [
                name,
                h.fmt_time(r["stats"].median),
                f"{h.fmt_time(r['stats'].p10)} – {h.fmt_time(r['stats'].p90)}",
                r["stats"].n,
                f"{r['client_faults_per_call']:.0f}",
                h.fmt_ratio(r["speedup"]),
            ]
            for name, r in sorted(out["rows"].items())
        ],
        [
            "speedup = client_plain+server_plain median / this row's median (same run).",
            f"server GLIBC_TUNABLES: {out['server_glibc_tunables']}",
        ],
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="100MB")
    ap.add_argument("--reps", type=int, default=15, help="timed calls per server per client")
    ap.add_argument("--rounds", type=int, default=2, help="client processes per mode")
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--client", metavar="URLS", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client:
        print(json.dumps(client(json.loads(args.client), h.parse_size(args.size), args.reps)))
        return 0
    out = run(args)
    report(out)
    if args.json:
        h.write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
