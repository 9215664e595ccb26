"""`make chaos`: every fault scenario at full size; prints the figures (and --json).

    PYTHONPATH=tests python -m chaos [--scale 1.0] [--only T1,T4] [--json FILE]
                                     [--server-flags "--pipeline-depth 4"]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

from . import MODULES, _common, scenario
from ._common import cleanup


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m chaos")
    p.add_argument("--scale", type=float, default=1.0, help="1.0 = the sizes of issue 7")
    p.add_argument("--only", default="", help="comma-separated scenarios, e.g. T1,T4")
    p.add_argument("--json", metavar="FILE", help="write all figures here")
    p.add_argument("--server-flags", default="", metavar="FLAGS",
                   help="more `tensorwire serve` flags for every scenario's server")
    a = p.parse_args()
    _common.SERVER_FLAGS[:] = a.server_flags.split()
    names = [n.strip() for n in a.only.split(",") if n.strip()] or list(MODULES)
    machine = {"python": platform.python_version(), "platform": platform.platform(),
               "cpus": os.cpu_count(), "scale": a.scale, "server_flags": a.server_flags}
    print(f"# chaos run: {machine}", flush=True)
    results, failed = {}, []
    for name in names:
        t0 = time.monotonic()
        print(f"## {name} ...", flush=True)
        try:
            result = scenario(name)(a.scale, log=lambda s: None)
        except Exception as exc:  # noqa: BLE001 - one broken scenario must not hide the rest
            result = {"problems": [f"scenario raised {type(exc).__name__}: {exc}"]}
        finally:
            cleanup()
        result["wall_s"] = round(time.monotonic() - t0, 1)
        results[name] = result
        for key, value in result.items():
            if key != "problems":
                print(f"  {key}: {value}", flush=True)
        verdict = "PASS" if not result["problems"] else "FAIL: " + "; ".join(result["problems"])
        print(f"  => {verdict}", flush=True)
        if result["problems"]:
            failed.append(name)
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            json.dump({"machine": machine, "results": results}, f, indent=2, default=str)
    print(f"# {len(names) - len(failed)}/{len(names)} scenarios passed"
          + (f"; failed: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
