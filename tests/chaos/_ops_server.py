"""A `tensorwire serve` with the custom ops the chaos scenarios need.

Run as a script: `python _ops_server.py serve --listen URL ...` (same flags as the CLI).
Custom ops live only in the server process, so they are registered here before the CLI
starts. With CHAOS_RLIMIT_AS_EXTRA=BYTES the address space is capped at what the process
maps after its imports plus that many bytes: a big allocation then raises MemoryError.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from collections import Counter
from typing import Any

import numpy as np

import tensorwire as tw
from tensorwire.cli import main

COUNTS: Counter[Any] = Counter()


@tw.register_op("chaos_count")
def chaos_count(token: Any, x: Any = None) -> Any:
    """Count executions per token; return [times this token ran, x]."""
    COUNTS[token] += 1
    return [COUNTS[token], x]


@tw.register_op("chaos_stats")
def chaos_stats() -> Any:
    """How often the tokens ran: proof of exactly-once execution."""
    runs = list(COUNTS.values())
    return {"tokens": len(runs), "executions": sum(runs),
            "duplicated": sum(1 for c in runs if c > 1), "max": max(runs, default=0)}


@tw.register_op("chaos_sleep")
def chaos_sleep(seconds: float, x: Any = None) -> Any:
    time.sleep(min(float(seconds), 5.0))
    return x


@tw.register_op("chaos_hog")
def chaos_hog(nbytes: int) -> Any:
    """Allocate and touch `nbytes` (MemoryError beyond the address-space limit)."""
    block = np.ones(int(nbytes), np.uint8)
    return int(block[::4096].sum())


@tw.register_op("chaos_oom")
def chaos_oom() -> Any:
    raise MemoryError("simulated out-of-memory inside an op")


def _vm_size() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


if __name__ == "__main__":
    extra = os.environ.get("CHAOS_RLIMIT_AS_EXTRA")
    if extra:
        limit = _vm_size() + int(extra)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    sys.exit(main(sys.argv[1:]))
