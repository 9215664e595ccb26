"""float32 <-> bfloat16 / float16 casts in C (`_fastcast.c`), where the install built them.

Why not torch: after a parallel cast, torch's OpenMP workers keep spinning, and on a small
machine they take the CPUs the transfer that follows needs. On the 2-vCPU test VM a 10 MB
bfloat16 round trip over tcp took 9.2 ms with torch's casts and 4.8 ms with these
(BENCHMARKS.md, issue 5), although torch's cast alone is a little faster below 32 MB. This
kernel runs on the calling thread, or from `parallel_min_bytes()` on pooled threads that
sleep (never spin) between casts (TENSORWIRE_CAST_POOL=0: threads started per cast, as
before), and writes with streaming stores (a tensor that size would only flush the cache).
Without the library (no compiler at install, or a source tree used in place)
`available()` is False and the casts go through torch or ml_dtypes; so with
TENSORWIRE_NATIVE_CAST=0 in the environment.

The kernel trusts its pointers, so `cast` checks everything first: dtypes, equal sizes,
both arrays contiguous in the same order, the output writable and aligned.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.machinery
import os
from pathlib import Path
from typing import Any, Final

import ml_dtypes
import numpy as np

ABI: Final = 2
ISAS: Final = ("scalar", "avx2", "avx512")  # index = the kernel's TW_ISA_* value
NATIVE_MIN_BYTES: Final = 1 << 20  # float32 bytes: from "auto"'s smallest cast up
# From these float32 bytes a cast runs on threads. With few CPUs late: on the 2-vCPU VM the
# threads took the CPU the transfer needed, below 32 MiB. With many, early: on the H200's
# 16-core host a 10 MB cast took 0.52-0.59 ms on one thread and 0.19-0.25 ms on four, twice
# per bf16 round trip; eight threads were no faster (BENCHMARKS.md, runs 6 and 7).
PARALLEL_MIN_BYTES: Final = 32 << 20
PARALLEL_MIN_BYTES_MANY_CPUS: Final = 4 << 20
MANY_CPUS: Final = 8
MAX_THREADS: Final = 4  # memory-bound: more threads only queue on the same channels
DISABLE_ENV: Final = "TENSORWIRE_NATIVE_CAST"  # "0": never load the kernel (comparisons)

_F32 = np.dtype(np.float32)
_BF16 = np.dtype(ml_dtypes.bfloat16)
_F16 = np.dtype(np.float16)
# (source dtype, output dtype) -> the kernel's kind (TW_NARROW_BF16, ...)
_KINDS: Final = {(_F32, _BF16): 0, (_BF16, _F32): 1, (_F32, _F16): 2, (_F16, _F32): 3}

_lib: Any = None
_best = 0  # the kernel's best instruction set here (TW_ISA_*), asked once at load
_loaded = False


def _load() -> Any:
    global _lib, _best, _loaded
    if not _loaded:
        _loaded = True
        if os.environ.get(DISABLE_ENV) == "0":
            return None
        here = Path(__file__).resolve().parent
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = here / f"_fastcast{suffix}"
            if path.is_file():
                _lib = _open(path)
                _best = _lib.tw_fastcast_best_isa() if _lib is not None else 0
                break
    return _lib


def _open(path: Path) -> Any:
    try:
        lib = ctypes.CDLL(str(path))
        lib.tw_fastcast_abi.restype = ctypes.c_int
        if lib.tw_fastcast_abi() != ABI:
            return None  # a stale build from another version
    except (OSError, AttributeError):
        return None
    lib.tw_fastcast_best_isa.restype = ctypes.c_int
    lib.tw_fastcast.restype = ctypes.c_int
    lib.tw_fastcast.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    lib.tw_fastcast.argtypes += [ctypes.c_int] * 4  # kind, threads, isa, stream
    return lib


def available() -> bool:
    return _load() is not None


def best_isa() -> str | None:
    """The widest instruction set the kernel uses on this CPU; None without the kernel."""
    return None if _load() is None else ISAS[_best]


def describe() -> str:
    """Which cast wire tensors get here, in words (reports and benchmark headers)."""
    if _load() is not None:
        return f"tensorwire's kernel ({ISAS[_best]})"
    if os.environ.get(DISABLE_ENV) == "0":
        return f"torch / ml_dtypes ({DISABLE_ENV}=0)"
    return "torch / ml_dtypes (the kernel was not built: no C compiler at install?)"


@functools.cache
def _cpus() -> int:
    """CPUs this process may run on (asked once: the affinity call is a syscall)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return cpus or 1


def default_threads() -> int:
    """Threads for a large cast."""
    return max(1, min(MAX_THREADS, _cpus()))


@functools.cache
def parallel_min_bytes() -> int:
    """From how many float32 bytes a cast runs on threads, on this machine."""
    return PARALLEL_MIN_BYTES_MANY_CPUS if _cpus() >= MANY_CPUS else PARALLEL_MIN_BYTES


def _threads_for(float32_bytes: int) -> int:
    return default_threads() if float32_bytes >= parallel_min_bytes() else 1


def applies(src: np.ndarray, out: np.ndarray) -> bool:
    """Whether `cast(src, out)` can take this pair: float32 <-> bfloat16 or float16, the same
    element count, both C- or both F-contiguous, out writable and element-aligned."""
    if (src.dtype, out.dtype) not in _KINDS:
        return False
    if src.size != out.size or not out.flags.writeable or not out.flags.aligned:
        return False
    same_c = src.flags.c_contiguous and out.flags.c_contiguous
    same_f = src.flags.f_contiguous and out.flags.f_contiguous
    return same_c or same_f


def cast(
    src: np.ndarray,
    out: np.ndarray,
    *,
    threads: int | None = None,
    isa: str | None = None,
    stream: bool = True,
) -> bool:
    """Cast src into out (float32 -> bfloat16 or float16, round-to-nearest-even; or back,
    exact).
    False, with out untouched, when the kernel is missing or the pair does not qualify
    (`applies`). `isa`: force "scalar" | "avx2" | "avx512" (tests); ValueError when this
    CPU lacks it. src may be read-only: the kernel only reads it."""
    lib = _load()
    if lib is None or not applies(src, out):
        return False
    level = _best if isa is None else _isa_level(isa)
    if src.size:
        kind = _KINDS[src.dtype, out.dtype]
        rc = lib.tw_fastcast(
            src.__array_interface__["data"][0],
            out.__array_interface__["data"][0],
            src.size,
            kind,
            threads or _threads_for(max(src.nbytes, out.nbytes)),
            level,
            int(stream),
        )
        if rc != 0:
            return False
    return True


def _isa_level(isa: str) -> int:
    if isa not in ISAS:
        raise ValueError(f"unknown instruction set {isa!r}; known: {', '.join(ISAS)}")
    level = ISAS.index(isa)
    if level > _best:
        raise ValueError(f"this CPU lacks {isa}")
    return level
