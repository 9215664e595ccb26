"""The environment a report was measured in: CPU, cores, memory, GPU, versions, /dev/shm."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Any

import zmq

from .._version import __version__
from ..codec import _native


def environment() -> dict[str, Any]:
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gb": _meminfo_gb("MemTotal"),
        "gpu": _gpu(),
        "os": platform.platform(),
        "dev_shm": _dev_shm(),
        "versions": _versions(),
        "native_cast": _native.describe(),  # which wire cast runs (codec/_native.py)
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _meminfo_gb(key: str) -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return round(int(line.split()[1]) / (1 << 20), 1)
    except OSError:
        pass
    return None


def _gpu() -> str:
    try:
        import torch
    except ImportError:
        return "unknown (torch not installed)"
    if not torch.cuda.is_available():
        return "none (torch sees no CUDA device)"
    return ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))


def _dev_shm() -> dict[str, float] | None:
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return None
    return {
        "size_gb": round(st.f_blocks * st.f_frsize / (1 << 30), 2),
        "free_gb": round(st.f_bavail * st.f_frsize / (1 << 30), 2),
    }


def _versions() -> dict[str, str]:
    out = {
        "python": platform.python_version(),
        "tensorwire": __version__,
        "libzmq": zmq.zmq_version(),
    }
    for dist in ("numpy", "pyzmq", "msgpack", "torch"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out
