"""The torch backend: CPU or one CUDA device. torch is imported only when this is built.

On CUDA, all of the backend's work runs on one CUDA stream of its own (made the current
stream of the thread that serves requests), and CUDA events around every host-to-device
copy (from_wire) and device-to-host copy (to_wire) time them. `take_timings()` returns the
per-request totals (seconds) and resets them: the server calls it once per request, before
replying, and adds them to the reply's trace. Sources in a page-locked arena (registered
with `channel._cuda.register_host`) are copied with `non_blocking=True` once the caller has
shown (by calling take_timings, which waits for the stream) that it fences every request.
Results come back through page-locked staging buffers (torch's pinned host allocator), or
straight into the reply's arena; float32 results the client's wire policy narrows are
narrowed on the device first (`device_casts`), as narrowed arguments are widened there.
On the CPU nothing of this runs: from_wire/to_wire are the zero-copy views they always were.
"""

from __future__ import annotations

import threading
import warnings
from typing import Any

import ml_dtypes
import numpy as np
import torch

from ...channel._cuda import is_registered
from ...codec import Narrowed
from ._backend import Backend, contiguous
from ._output import reply_narrowing, reply_output
from ._table import check_kernels
from ._torch_kernels import KERNELS

_BF16 = np.dtype(ml_dtypes.bfloat16)
_KERNELS = check_kernels("torch", KERNELS)
PINNED_D2H_MIN = 64 << 10  # bytes; below this a pageable copy costs no more
MAX_SPANS = 4096  # copies timed per request before the timer resets itself


def resolve_device(device: str) -> str:
    """ "auto" -> CUDA when available, else CPU; "cuda" -> "cuda:N" for the current device."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    if not torch.cuda.is_available():
        raise ValueError(
            f"device {device!r} requested, but CUDA is not available to torch {torch.__version__}"
        )
    index = torch.cuda.current_device() if device == "cuda" else int(device.split(":")[1])
    if index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s)")
    return f"cuda:{index}"


def _host_tensor(arr: np.ndarray) -> torch.Tensor:
    """A CPU tensor viewing `arr` (bfloat16 through an int16 view)."""
    if arr.dtype == _BF16:
        return torch.from_numpy(arr.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(arr)


_NUMPY_DTYPES: dict[torch.dtype, np.dtype[Any]] = {torch.bfloat16: _BF16}
_WIDE = {"float32": torch.float32, "float64": torch.float64}  # what narrowed tensors were
_NARROW = {"bfloat16": torch.bfloat16, "float16": torch.float16}  # wire formats


def _numpy_dtype(dtype: torch.dtype) -> np.dtype[Any]:
    found = _NUMPY_DTYPES.get(dtype)
    if found is None:
        found = _NUMPY_DTYPES[dtype] = torch.empty(0, dtype=dtype).numpy().dtype
    return found


def _host_numpy(t: torch.Tensor) -> np.ndarray:
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(_BF16)
    return t.numpy()


class DeviceTimer:
    """CUDA events around copies on one stream; per-request totals, events pooled."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self._free: list[Any] = []
        self._spans: dict[str, list[tuple[Any, Any]]] = {"h2d": [], "d2h": []}
        self._first: Any = None
        self.h2d_pinned = self.h2d_pageable = 0  # bytes this request, by source kind

    def event(self) -> Any:
        ev = self._free.pop() if self._free else torch.cuda.Event(  # type: ignore[no-untyped-call]
            enable_timing=True)
        ev.record(self.stream)
        if self._first is None:
            self._first = ev
        return ev

    def span(self, kind: str, start: Any, end: Any) -> None:
        self._spans[kind].append((start, end))
        if len(self._spans[kind]) > MAX_SPANS:  # nobody takes the timings: don't grow
            self.take()

    @property
    def busy(self) -> bool:
        return self._first is not None

    def take(self) -> dict[str, Any]:
        """Wait for the stream's work of this request; the totals in seconds; reset."""
        if self._first is None:
            return {}
        last = self.event()
        last.synchronize()
        h2d = sum(a.elapsed_time(b) for a, b in self._spans["h2d"]) / 1e3
        d2h = sum(a.elapsed_time(b) for a, b in self._spans["d2h"]) / 1e3
        span = self._first.elapsed_time(last) / 1e3
        out: dict[str, Any] = {
            "host_to_device": h2d,
            "device_compute": max(span - h2d - d2h, 0.0),  # stream time besides the copies
            "device_to_host": d2h,
        }
        if self.h2d_pinned or self.h2d_pageable:
            out["h2d"] = ("pinned" if not self.h2d_pageable else
                          "pageable" if not self.h2d_pinned else "mixed")
        used = {id(e): e for pair in self._spans.values() for p in pair for e in p}
        used[id(self._first)], used[id(last)] = self._first, last
        self._free.extend(used.values())
        self._spans = {"h2d": [], "d2h": []}
        self._first = None
        self.h2d_pinned = self.h2d_pageable = 0
        return out


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, device: str = "auto") -> None:
        self.device = resolve_device(device)
        self._torch_device = torch.device(self.device)
        self._cuda = self._torch_device.type == "cuda"
        self.kernels = _KERNELS
        self._stream: Any = None
        self._stream_thread: int | None = None
        self._timer: DeviceTimer | None = None
        self.async_h2d = False  # set by the first take_timings(): the caller fences requests
        # Narrowed arguments cross to the device narrow and are widened there: half the
        # bytes over PCIe, and no cast on the server's CPU.
        self.device_casts = self._cuda
        if self._cuda:
            self._stream = torch.cuda.Stream(  # type: ignore[no-untyped-call]
                self._torch_device)
            self._timer = DeviceTimer(self._stream)

    @property
    def stream(self) -> Any:
        """The CUDA stream all of this backend's work runs on (None on the CPU)."""
        return self._stream

    def _use_stream(self) -> None:
        """Make the backend's stream current on the calling thread (once per thread)."""
        ident = threading.get_ident()
        if self._stream_thread != ident:
            torch.cuda.set_device(self._torch_device)
            torch.cuda.set_stream(self._stream)
            self._stream_thread = ident

    def from_wire(self, arr: Any) -> Any:
        if self._cuda:
            return self._to_device(arr)
        if isinstance(arr, torch.Tensor):
            return arr
        # torch cannot share read-only memory (an in-place op would crash) or negative
        # strides, so those are copied; everything else is a zero-copy view on the CPU.
        if not arr.flags.writeable or any(s < 0 for s in arr.strides):
            arr = arr.copy()
        return _host_tensor(arr)

    def _to_device(self, arr: Any) -> torch.Tensor:
        self._use_stream()
        timer = self._timer
        assert timer is not None
        if isinstance(arr, torch.Tensor):  # already native (a CUDA IPC import, say)
            if arr.device == self._torch_device:
                return arr
            src, pinned = arr, arr.is_pinned() if arr.device.type == "cpu" else False
        else:
            if any(s < 0 for s in arr.strides):
                arr = arr.copy()
            if arr.flags.writeable:
                src = _host_tensor(arr)
            else:  # only read by the copy below: viewing read-only memory is safe here
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    src = _host_tensor(arr)
            # A DMA straight from the arena needs the bytes in one dense run there.
            dense = arr.flags.c_contiguous or arr.flags.f_contiguous
            pinned = dense and is_registered(arr.ctypes.data, arr.nbytes)
        nbytes = src.numel() * src.element_size()
        if pinned:
            timer.h2d_pinned += nbytes
        else:
            timer.h2d_pageable += nbytes
        start = timer.event()
        out = src.to(self._torch_device, non_blocking=pinned and self.async_h2d)
        timer.span("h2d", start, timer.event())
        return out

    def widen(self, narrow: np.ndarray, original: str) -> Any:
        if not self.device_casts or original not in _WIDE:
            return None
        return self.from_wire(narrow).to(_WIDE[original])

    def to_wire(self, value: Any) -> np.ndarray | Narrowed:
        if not isinstance(value, torch.Tensor):
            return contiguous(np.asarray(value))
        # Per-request path: is_cpu and a detach only when needed cost less than a device
        # object and a new tensor every time.
        t = value.detach() if value.requires_grad else value
        if self.device_casts and t.dtype == torch.float32:
            wire = reply_narrowing(t.numel() * 4)
            if wire is not None:
                return self._narrowed(t, wire)
        if not t.is_cpu:
            return self._to_host(t)
        t = t.resolve_conj().resolve_neg()
        return contiguous(_host_numpy(t))

    def _narrowed(self, t: torch.Tensor, wire: str) -> Narrowed:
        """A float32 result narrowed where it lies, then brought to the host: half the bytes
        cross PCIe, into the reply's arena where there is one, and the server's CPU casts
        nothing. torch rounds to nearest even, as the codec does (float64 results are left
        to the codec: torch would round them twice)."""
        narrow = t.to(_NARROW[wire])
        host = self._to_host(narrow) if not narrow.is_cpu else _host_numpy(narrow.contiguous())
        return Narrowed(host, "float32")

    def _to_host(self, t: torch.Tensor) -> np.ndarray:
        """Device -> host, timed by events: straight into the reply's arena when the result
        goes back to a same-host client (one DMA, nothing to copy when replying), else
        through a page-locked staging buffer."""
        if not self._cuda or self._timer is None:  # a CUDA tensor on a CPU backend
            return contiguous(_host_numpy(t.contiguous().cpu().resolve_conj().resolve_neg()))
        t = t.resolve_conj().resolve_neg().contiguous()  # on the device, where it is cheap
        dst = reply_output(tuple(t.shape), _numpy_dtype(t.dtype))
        if dst is not None:
            self._d2h(t, _host_tensor(dst), is_registered(dst.ctypes.data, dst.nbytes))
            return dst
        pin = t.numel() * t.element_size() >= PINNED_D2H_MIN
        host = torch.empty(t.shape, dtype=t.dtype, pin_memory=pin)
        self._d2h(t, host, pin)
        return contiguous(_host_numpy(host))

    def copy_to_host(self, value: Any, dst: np.ndarray) -> None:
        """Device -> `dst` directly (e.g. a block of a page-locked result arena): one DMA.

        `dst` must be C-contiguous with value's shape and dtype. Returns once the bytes are
        in `dst`. On the CPU this is a plain copy.
        """
        if not dst.flags.c_contiguous or not dst.flags.writeable:
            raise ValueError("copy_to_host needs a writable C-contiguous destination")
        out = _host_tensor(dst)
        t = value.detach().resolve_conj().resolve_neg()
        if tuple(out.shape) != tuple(t.shape) or out.dtype != t.dtype:
            raise ValueError(f"copy_to_host: {tuple(t.shape)} {t.dtype} does not fit "
                             f"{tuple(out.shape)} {out.dtype}")
        if t.device.type == "cpu" or not self._cuda or self._timer is None:
            out.copy_(t)
            return
        self._d2h(t, out, is_registered(dst.ctypes.data, dst.nbytes))

    def _d2h(self, t: torch.Tensor, out: torch.Tensor, pinned: bool) -> None:
        """One timed device-to-host copy on the backend's stream; returns once it is done."""
        self._use_stream()
        timer = self._timer
        assert timer is not None
        start = timer.event()
        out.copy_(t, non_blocking=pinned)
        end = timer.event()
        timer.span("d2h", start, end)
        end.synchronize()

    def take_timings(self) -> dict[str, Any]:
        """This request's device stages in seconds and the h2d path; {} on the CPU.

        Waits for the backend's stream, so every copy out of a client's arena has finished
        when it returns: call it before replying. Its first call also turns on asynchronous
        copies from page-locked arenas, since the caller has shown it fences each request.
        """
        if self._timer is None:
            return {}
        self.async_h2d = True
        return self._timer.take()

    def is_tensor(self, value: Any) -> bool:
        return isinstance(value, torch.Tensor)

    def synchronize(self) -> None:
        if self._cuda:
            torch.cuda.synchronize(self._torch_device)

    def release_memory(self) -> None:
        super().release_memory()
        if self._cuda:
            torch.cuda.empty_cache()
