"""Wire precision: cast float32/float64 tensors to bfloat16 or float16 for the trip, and back.

Pure functions; the message codec records the cast so the receiver can undo it.

    to_wire(arr, "bfloat16")   -> (bf16 array, "float32")     float32/float64 in
    to_wire(arr, "bfloat16")   -> (arr, None)                 anything else: untouched
    from_wire(bf16, "float32") -> float32 array               exact (a widening)

Rounding is IEEE round-to-nearest-even, so each element's relative error is at most the unit
roundoff u (`unit_roundoff`): 2**-8 for bfloat16 (8 significand bits, implicit bit included),
2**-11 for float16, for values in the normal range. Below it (bfloat16 < 1.18e-38, float16 <
6.1e-5) the absolute error is at most half the subnormal spacing instead (`cast_bounds`).

Special values:
- NaN stays NaN (its payload may change); +-Inf stays +-Inf; -0.0 stays -0.0.
- float16 overflow: |x| >= 65520 becomes +-Inf (65504 is the largest finite float16).
  bfloat16 has float32's exponent range: only |x| >= 3.3961e38 (float32's very top, just
  below its max 3.4028e38) becomes +-Inf; float64 values beyond that range also become +-Inf.
- float64 sources are first rounded to float32 *to odd*, then to the wire format to nearest
  even: the result is the correctly rounded float64 -> wire value (a plain float64 ->
  float32 -> bfloat16 chain, which torch and ml_dtypes both use, rounds twice and is off
  by one ulp on rare near-ties).

Never cast: integers, bools, complex, float16/bfloat16 already, and anything wrapped in
`Exact` (`exact(x)`). `to_wire` returns those unchanged (an `Exact` unwrapped) with None.

Speed: from 1 MiB, float32 <-> bfloat16/float16 goes through tensorwire's own kernel where
the install built it (`_native`: no OpenMP workers left spinning after the cast, streaming
stores). Otherwise torch (when importable; imported on the first large cast, never at
module import) converts into a numpy-allocated output (numpy's large allocations get huge
pages; torch's own allocator's fresh pages fault one 4 KiB page at a time, which costs
more than the cast), using torch's intra-op threads. Without torch: ml_dtypes for
bfloat16, numpy for float16.
Read-only inputs (received frames) are read through a writable alias, never written.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from typing import Any, Final, Generic, Literal, TypeVar

import ml_dtypes
import numpy as np

from ..errors import ProtocolError
from . import _native
from ._pool import BufferPool

WIRE_DTYPES_ALLOWED: Final = ("bfloat16", "float16")
WIRE_POLICIES: Final = (None, "bfloat16", "float16", "auto")
BACKENDS: Final = ("auto", "native", "torch", "ml_dtypes", "numpy")

# "auto" casts to bfloat16 only over these transports and from this many bytes (the
# tensor's size before the cast). Shared memory, ipc frames and inproc are never cast:
# there the copy the cast saves costs about what the cast itself costs.
AUTO_WIRE: Final = "bfloat16"
AUTO_MIN_BYTES: Final = 1 << 20
AUTO_TRANSPORTS: Final = frozenset({"tcp"})

# Below this many source bytes the plain numpy/ml_dtypes cast beats torch's call overhead.
TORCH_MIN_BYTES: Final = 1 << 16

_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)
_BF16 = np.dtype(ml_dtypes.bfloat16)
_F16 = np.dtype(np.float16)
_WIRE_NP: Final[dict[str, np.dtype[Any]]] = {"bfloat16": _BF16, "float16": _F16}
_ORIGINALS: Final[dict[str, np.dtype[Any]]] = {"float32": _F32, "float64": _F64}

T = TypeVar("T")


# ---------------------------------------------------------------------------------------------
# policy


def validate_wire_dtype(wire: object) -> str | None:
    """`wire` itself when it is None, "bfloat16", "float16" or "auto"; ValueError otherwise."""
    if wire is None or (isinstance(wire, str) and wire in WIRE_POLICIES):
        return wire
    raise ValueError(
        f"unknown wire dtype {wire!r}; allowed: None, "
        + ", ".join(repr(w) for w in WIRE_POLICIES if w is not None)
    )


def choose(wire: str | None, *, transport_path: str, nbytes: int) -> str | None:
    """The wire dtype to use for one tensor of `nbytes` bytes going over `transport_path`
    ("tcp", "ipc", "inproc", "shm", ...). None and explicit dtypes pass through; "auto" is
    bfloat16 over tcp from AUTO_MIN_BYTES (1 MiB) up, None everywhere else."""
    wire = validate_wire_dtype(wire)
    if wire != "auto":
        return wire
    if transport_path in AUTO_TRANSPORTS and nbytes >= AUTO_MIN_BYTES:
        return AUTO_WIRE
    return None


@dataclass(frozen=True, slots=True)
class Exact(Generic[T]):
    """A tensor marked never to be cast for the wire. Unwrap with `.value` (or `unwrap`)."""

    value: T


def exact(x: T) -> Exact[T]:
    """Mark `x` as exact: it crosses the wire in its own dtype whatever the wire policy."""
    return x if isinstance(x, Exact) else Exact(x)


def unwrap(x: Any) -> tuple[Any, bool]:
    """(the value, whether it was marked exact)."""
    if isinstance(x, Exact):
        return x.value, True
    return x, False


@dataclass(frozen=True, slots=True)
class Narrowed:
    """A tensor that arrived narrowed and is not widened yet: `value` (bfloat16/float16) was
    cast from `original` ("float32"/"float64"). A receiver that only moves elements around
    can keep it narrow (the bits come out the same); `to_wire` sends it on as it is when
    the reply narrows to the same format, and widens it otherwise."""

    value: np.ndarray
    original: str

    @classmethod
    def checked(cls, value: np.ndarray, original: str) -> Narrowed:
        """A Narrowed from a peer's names, validated as `from_wire` validates them."""
        _widened_dtype(value, original)
        return cls(value, original)

    @property
    def nbytes(self) -> int:
        """Its size widened: what the sender's wire policy saw."""
        return self.value.size * _ORIGINALS[self.original].itemsize

    def widen(self, pool: BufferPool | None = None) -> np.ndarray:
        return from_wire(self.value, self.original, pool=pool)


def wire_numpy_dtype(wire: str) -> np.dtype[Any]:
    """The numpy dtype of a wire format: "bfloat16" (ml_dtypes') or "float16"."""
    found = _WIRE_NP.get(wire)
    if found is None:
        raise ValueError(f"unknown wire dtype {wire!r}; allowed: {', '.join(WIRE_DTYPES_ALLOWED)}")
    return found


def castable(arr: Any) -> bool:
    """Whether `to_wire` would cast `arr`: a float32 or float64 numpy array, not marked exact."""
    return isinstance(arr, np.ndarray) and arr.dtype.kind == "f" and arr.dtype.itemsize in (4, 8)


# ---------------------------------------------------------------------------------------------
# the casts


def to_wire(
    arr: Any,
    wire: str | None,
    *,
    backend: str = "auto",
    out: np.ndarray | None = None,
    pool: BufferPool | None = None,
) -> tuple[Any, str | None]:
    """(arr cast to `wire`, the original dtype's name), or (arr, None) when it is not cast:
    `wire` is None, or arr is not a float32/float64 ndarray, or it is `Exact` (unwrapped).
    `wire` must be "bfloat16", "float16" or None ("auto" is resolved by `choose` first).
    The result is C-contiguous, or F-contiguous when arr is; arr is never modified.
    A `Narrowed` arr already in `wire`'s format goes as it is; otherwise it is widened first.

    `out`: a writable array of arr's shape and the wire dtype to write into; `pool`: where
    to get that array when `out` is None (at 100 MB a fresh output's page faults and zeroing
    cost more than the cast itself). Both are ignored when arr is not cast.
    `backend`: "auto" | "native" | "torch" | "ml_dtypes" | "numpy". "native" takes the
    kernel at any size where it applies (float32 <-> bfloat16/float16), and "auto"'s choice
    elsewhere."""
    if isinstance(arr, Exact):
        return arr.value, None
    if isinstance(arr, Narrowed):
        if wire is not None and arr.value.dtype == _WIRE_NP.get(wire):
            return arr.value, arr.original
        arr = arr.widen(pool)
    if wire is None:
        return arr, None
    if wire not in _WIRE_NP:
        validate_wire_dtype(wire)
        raise ValueError("wire dtype 'auto' must be resolved with choose() before to_wire()")
    _check_backend(backend)
    if not castable(arr):
        return arr, None
    original = "float64" if arr.dtype.itemsize == 8 else "float32"
    src = arr if arr.dtype.isnative else arr.astype(arr.dtype.newbyteorder("="))
    if src.dtype == _F64:
        src = _f64_to_f32_round_to_odd(src)
    target = _WIRE_NP[wire]
    _check_out(out, src.shape, target)
    return _cast(src, target, backend, out, pool), original


def from_wire(
    arr: np.ndarray,
    original: str,
    *,
    backend: str = "auto",
    out: np.ndarray | None = None,
    pool: BufferPool | None = None,
) -> np.ndarray:
    """Undo `to_wire`: a bfloat16/float16 array back to `original` ("float32"/"float64").
    Exact (a widening). ProtocolError for any other pair: the names come from a peer.
    `out`, `pool`: as for `to_wire` (arr's shape, the original dtype). arr may be read-only."""
    target = _widened_dtype(arr, original)
    _check_backend(backend)
    _check_out(out, arr.shape, target)
    return _cast(arr, target, backend, out, pool)


def _widened_dtype(arr: Any, original: Any) -> np.dtype[Any]:
    target = _ORIGINALS.get(original) if isinstance(original, str) else None
    if target is None:
        raise ProtocolError(
            f"tensor was cast for the wire from {original!r}; only float32 and float64 are"
        )
    if not isinstance(arr, np.ndarray) or arr.dtype not in (_BF16, _F16):
        got = arr.dtype if isinstance(arr, np.ndarray) else type(arr).__name__
        raise ProtocolError(f"a tensor cast for the wire must be bfloat16 or float16, got {got}")
    return target


# ---------------------------------------------------------------------------------------------
# theory


def unit_roundoff(wire: str) -> float:
    """u = 2**-p for a format with p significand bits (the implicit one included): the bound
    on the relative error of a round-to-nearest cast in the normal range."""
    if wire == "bfloat16":
        return 2.0**-8
    if wire == "float16":
        return 2.0**-11
    raise ValueError(f"unknown wire dtype {wire!r}; allowed: {', '.join(WIRE_DTYPES_ALLOWED)}")


def cast_bounds(wire: str) -> dict[str, float]:
    """The error model of a round-to-nearest cast into `wire`:

    - min_normal <= |x| <= max_finite: |fl(x) - x| <= u |x|   (u = unit_roundoff)
    - |x| < min_normal:                |fl(x) - x| <= subnormal_abs_error (half a spacing)
    - |x| >= overflow_threshold:       fl(x) = +-Inf
    - ulp(fl(x)) errors: at most 0.5 ulp of the wire format everywhere finite.
    """
    u = unit_roundoff(wire)
    if wire == "bfloat16":
        max_finite, min_normal, min_sub = (2 - 2.0**-7) * 2.0**127, 2.0**-126, 2.0**-133
    else:
        max_finite, min_normal, min_sub = 65504.0, 2.0**-14, 2.0**-24
    # Halfway between max_finite and the next power of two; ties round to even (Inf).
    overflow = max_finite + 2.0 ** (math.floor(math.log2(max_finite)) - round(-math.log2(u)))
    return {
        "unit_roundoff": u,
        "relative_error_max": u,
        "max_ulp_error": 0.5,
        "max_finite": max_finite,
        "overflow_threshold": overflow,
        "min_normal": min_normal,
        "min_subnormal": min_sub,
        "subnormal_abs_error": min_sub / 2,
    }


def cast_error_bound(x: np.ndarray, wire: str) -> np.ndarray:
    """Elementwise bound on |fl(x) - x| for finite x below the overflow threshold:
    max(u |x|, half the smallest subnormal)."""
    b = cast_bounds(wire)
    return np.maximum(b["unit_roundoff"] * np.abs(x.astype(np.float64)), b["subnormal_abs_error"])


# ---------------------------------------------------------------------------------------------
# internals


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"unknown cast backend {backend!r}; known: {', '.join(BACKENDS)}")


_torch_mod: Any = None
_torch_checked = False


def _torch() -> Any:
    """torch, imported on first need; None when it is not installed."""
    global _torch_mod, _torch_checked
    if not _torch_checked:
        if importlib.util.find_spec("torch") is not None:
            import torch

            _torch_mod = torch
        _torch_checked = True
    return _torch_mod


def torch_available() -> bool:
    return _torch() is not None


# numpy dtype -> (numpy dtype of the same width torch can wrap, torch dtype name)
_TORCH_VIEW: Final[dict[np.dtype[Any], tuple[np.dtype[Any], str]]] = {
    _F32: (_F32, "float32"),
    _F64: (_F64, "float64"),
    _F16: (_F16, "float16"),
    _BF16: (np.dtype(np.int16), "bfloat16"),  # torch cannot wrap ml_dtypes' bfloat16
}


def _check_out(out: np.ndarray | None, shape: tuple[int, ...], dtype: np.dtype) -> None:
    if out is None:
        return
    if not isinstance(out, np.ndarray) or out.shape != shape or out.dtype != dtype:
        got = f"{out.dtype} {out.shape}" if isinstance(out, np.ndarray) else type(out).__name__
        raise ValueError(f"out must be a {dtype} array of shape {shape}, got {got}")
    if not out.flags.writeable:
        raise ValueError("out must be writable")


def _cast(
    src: np.ndarray,
    target: np.dtype[Any],
    backend: str,
    out: np.ndarray | None,
    pool: BufferPool | None,
) -> np.ndarray:
    if out is None:  # C order, or F when src is F-contiguous only
        order: Literal["C", "F"] = (
            "F" if src.flags.f_contiguous and not src.flags.c_contiguous else "C"
        )
        if pool is not None:
            out = pool.empty(src.shape, target, order=order)
        else:
            out = np.empty(src.shape, dtype=target, order=order)
    if _native_cast(src, backend, out):
        return out
    if not _torch_cast(src, backend, out):
        with np.errstate(over="ignore", invalid="ignore"):
            np.copyto(out, src, casting="unsafe")
    return out


def _native_cast(src: np.ndarray, backend: str, out: np.ndarray) -> bool:
    """Cast src into out with the native kernel; False: use torch or numpy instead.
    "auto" takes it from NATIVE_MIN_BYTES (below, torch's call costs little either way)."""
    if backend == "native" or (
        backend == "auto" and max(src.nbytes, out.nbytes) >= _native.NATIVE_MIN_BYTES
    ):
        return _native.cast(src, out)
    return False


def _torch_cast(src: np.ndarray, backend: str, out: np.ndarray) -> bool:
    """Cast src into out with torch; False: use numpy instead."""
    if backend in ("numpy", "ml_dtypes"):
        return False
    if backend in ("auto", "native") and src.nbytes < TORCH_MIN_BYTES:
        return False
    torch = _torch()
    if torch is None:
        if backend == "torch":
            raise ValueError("cast backend 'torch' requested but torch is not installed")
        return False
    if any(s < 0 for s in (*src.strides, *out.strides)) or not src.dtype.isnative:
        return False  # torch.from_numpy refuses these; numpy handles them
    if out.size:
        s_np, s_name = _TORCH_VIEW[src.dtype]
        o_np, o_name = _TORCH_VIEW[out.dtype]
        s_t = torch.from_numpy(_writable_alias(src).view(s_np)).view(getattr(torch, s_name))
        o_t = torch.from_numpy(out.view(o_np)).view(getattr(torch, o_name))
        o_t.copy_(s_t)
    return True


class _Alias:
    """Exposes an array's memory as writable through the array interface, and keeps the
    array alive. Only ever read through: torch.from_numpy warns (an error under strict
    warnings) on read-only arrays, although a copy_ source is never written."""

    __slots__ = ("__array_interface__", "_keep")

    def __init__(self, arr: np.ndarray) -> None:
        self._keep = arr
        self.__array_interface__ = {
            "version": 3,
            "shape": arr.shape,
            "typestr": arr.dtype.str if arr.dtype != _BF16 else "<i2",
            "strides": arr.strides,
            "data": (arr.__array_interface__["data"][0], False),
        }


def _writable_alias(arr: np.ndarray) -> np.ndarray:
    if arr.flags.writeable:
        return arr
    alias = np.asarray(_Alias(arr))
    return alias.view(arr.dtype) if arr.dtype == _BF16 else alias


def _f64_to_f32_round_to_odd(a: np.ndarray) -> np.ndarray:
    """float64 -> float32 rounded to odd: an inexact result gets an odd last bit. float32
    keeps more than 2 extra bits over both wire formats, so rounding this to nearest-even
    gives the correctly rounded float64 -> wire value (no double rounding)."""
    with np.errstate(over="ignore", invalid="ignore"):
        r = a.astype(_F32)
        back = r.astype(_F64)
    inexact = (back != a) & (a == a)  # NaN: leave alone
    if not inexact.any():
        return r
    bits = r.view(np.uint32)
    even = (bits & 1) == 0
    fix = inexact & even
    if fix.any():
        # r is the nearest float32; its neighbour toward a has the odd last bit.
        up = a[fix] > back[fix]
        r[fix] = np.nextafter(r[fix], np.where(up, np.float32(np.inf), np.float32(-np.inf)))
    return r


__all__ = [
    "AUTO_MIN_BYTES",
    "AUTO_TRANSPORTS",
    "AUTO_WIRE",
    "WIRE_DTYPES_ALLOWED",
    "Exact",
    "Narrowed",
    "cast_bounds",
    "cast_error_bound",
    "castable",
    "choose",
    "exact",
    "from_wire",
    "to_wire",
    "torch_available",
    "unit_roundoff",
    "unwrap",
    "validate_wire_dtype",
]
