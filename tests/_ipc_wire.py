"""A CUDA IPC descriptor map as a client would send it, for the tests that need one."""

from __future__ import annotations

from typing import Any

PID = 4242
RC = f"/torch_{PID}_123456_7"  # torch's ref-counter file name for that producer pid


def descriptor(**over: Any) -> dict[str, Any]:
    d = {
        "v": 1, "dev": 0, "uuid": "GPU-1234abcd", "h": bytes([2, ord("c")]) + bytes(64),
        "so": 512, "ss": 4096, "off": 2, "dt": "float32", "sh": [4, 8], "st": [8, 1],
        "rc": RC, "ro": 3, "ev": bytes(64), "pid": PID,
    }  # fmt: skip
    d.update(over)
    return d
