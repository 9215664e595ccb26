"""Fault scenarios of issue 7 (T1-T8), each `run(scale)` -> figures.

The same code runs short in the test suite (tests/test_chaos.py, small `scale`) and at
full size under `make chaos` (`python -m chaos`, scale 1.0), which prints the figures
recorded in RELIABILITY.md. Every scenario returns a dict with its figures and a list
`problems`: empty when the scenario's claims held.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

MODULES = {
    "T1": "t1_kill_clients",
    "T2": "t2_kill_server",
    "T3": "t3_slow_reader",
    "T4": "t4_fault_proxy",
    "T5": "t5_auth",
    "T6": "t6_fuzz",
    "T7": "t7_quota_oom",
    "T8": "t8_full_shm",
}


def scenario(name: str) -> Callable[..., dict[str, Any]]:
    """The `run(scale)` function of scenario T1..T8."""
    module = importlib.import_module(f"{__name__}.{MODULES[name]}")
    run: Callable[..., dict[str, Any]] = module.run
    return run
