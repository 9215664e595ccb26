"""The torch backend: CPU or one CUDA device. torch is imported only when this is built.

On CUDA, the backend's work runs on a CUDA stream of its own (made the current stream of
the thread that serves requests), and CUDA events around every host-to-device copy
(from_wire) and device-to-host copy (to_wire) time them. After each request the server
takes its `fence()`, waits for it before replying and adds the per-request totals it
returns to the reply's trace. Sources in a page-locked arena (registered with
`channel._cuda.register_host`) are copied with `non_blocking=True` once the caller has shown
(by taking a fence) that it waits for every request. Results come back through page-locked
staging buffers (torch's pinned host allocator), or straight into the reply's arena;
float32 results the client's wire policy narrows are narrowed on the device first
(`device_casts`), as narrowed arguments are widened there.

Pipelined (`pipelined`, set by a server with pipeline_depth > 1), each client's requests
run on a stream of their own (`begin_request`), kernels are not waited for after each op,
and results' copies to the host are left to the request's fence: the server launches the
next requests before it waits for the oldest, and their copies and kernels overlap.

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
from ._backend import NO_FENCE, Backend, Fence, contiguous
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


class DeviceTimer(Fence):
    """CUDA events around one request's copies on one stream; its totals, events pooled.

    `seal()` marks the end of the request's work on the stream; `wait()` (its Fence) waits
    for that mark and returns the totals. A pipelined server also marks the start
    (`start()`), so that a request with no copies is fenced and timed too.
    """

    __slots__ = ("stream", "_free", "_spans", "_first", "_last", "h2d_pinned", "h2d_pageable")

    def __init__(self, stream: Any, pool: list[Any]) -> None:
        self.stream = stream
        self._free = pool  # shared by every timer of the backend
        self._spans: dict[str, list[tuple[Any, Any]]] = {"h2d": [], "d2h": []}
        self._first: Any = None
        self._last: Any = None
        self.h2d_pinned = self.h2d_pageable = 0  # bytes this request, by source kind

    def event(self) -> Any:
        ev = self._free.pop() if self._free else torch.cuda.Event(  # type: ignore[no-untyped-call]
            enable_timing=True)
        ev.record(self.stream)
        if self._first is None:
            self._first = ev
        return ev

    def start(self) -> None:
        self.event()

    def span(self, kind: str, start: Any, end: Any) -> None:
        self._spans[kind].append((start, end))
        if len(self._spans[kind]) > MAX_SPANS:  # nobody takes the timings: don't grow
            self.take()

    @property
    def busy(self) -> bool:
        return self._first is not None

    def seal(self) -> None:
        if self._first is not None and self._last is None:
            self._last = self.event()

    def wait(self) -> dict[str, Any]:
        """Wait for the stream's work of this request up to `seal()`; the totals in seconds;
        reset (the timer may time another request)."""
        first, last = self._first, self._last
        if first is None or last is None:
            return {}
        last.synchronize()
        h2d = sum(a.elapsed_time(b) for a, b in self._spans["h2d"]) / 1e3
        d2h = sum(a.elapsed_time(b) for a, b in self._spans["d2h"]) / 1e3
        span = first.elapsed_time(last) / 1e3
        out: dict[str, Any] = {
            "host_to_device": h2d,
            "device_compute": max(span - h2d - d2h, 0.0),  # stream time besides the copies
            "device_to_host": d2h,
        }
        if self.h2d_pinned or self.h2d_pageable:
            out["h2d"] = ("pinned" if not self.h2d_pageable else
                          "pageable" if not self.h2d_pinned else "mixed")
        used = {id(e): e for pair in self._spans.values() for p in pair for e in p}
        used[id(first)], used[id(last)] = first, last
        self._free.extend(used.values())
        self._spans = {"h2d": [], "d2h": []}
        self._first = self._last = None
        self.h2d_pinned = self.h2d_pageable = 0
        return out

    def take(self) -> dict[str, Any]:
        """Seal, wait and reset in one go."""
        self.seal()
        return self.wait()


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, device: str = "auto") -> None:
        self.device = resolve_device(device)
        self._torch_device = torch.device(self.device)
        self._cuda = self._torch_device.type == "cuda"
        self.kernels = _KERNELS
        self._stream: Any = None  # the backend's own stream: every request's, unless pipelined
        self._current: Any = None  # the stream of the request running now
        self._stream_thread: int | None = None  # the thread _current was made current on
        self._set: Any = None  # the stream made current on that thread
        self._streams: dict[Any, Any] = {}  # pipelined: each client's (from torch's pool)
        self._events: list[Any] = []  # timing events, pooled across requests
        self._timer: DeviceTimer | None = None
        self.async_h2d = False  # set by the first fence(): the caller waits for each request
        # Narrowed arguments cross to the device narrow and are widened there: half the
        # bytes over PCIe, and no cast on the server's CPU.
        self.device_casts = self._cuda
        if self._cuda:
            self._stream = self._current = torch.cuda.Stream(  # type: ignore[no-untyped-call]
                self._torch_device)
            self._timer = DeviceTimer(self._stream, self._events)

    @property
    def stream(self) -> Any:
        """The CUDA stream the running request's work goes on (None on the CPU): the
        backend's own, or, pipelined, its client's."""
        return self._current

    def _use_stream(self) -> None:
        """Make the running request's stream current on the calling thread (the device once
        per thread; the stream when it changed)."""
        ident = threading.get_ident()
        if self._stream_thread != ident:
            torch.cuda.set_device(self._torch_device)
            self._stream_thread, self._set = ident, None
        if self._set is not self._current:
            torch.cuda.set_stream(self._current)
            self._set = self._current

    def begin_request(self, client: Any) -> None:
        """Pipelined: the request runs on its client's stream (requests of one client stay in
        order; other clients' copies and kernels may overlap it), timed from here."""
        if not self._cuda or not self.pipelined:
            return
        stream = self._streams.get(client)
        if stream is None:  # torch hands out streams from a fixed pool: none is leaked
            stream = self._streams[client] = torch.cuda.Stream(  # type: ignore[no-untyped-call]
                self._torch_device)
        self._current = stream
        self._use_stream()
        self._timer = DeviceTimer(stream, self._events)
        self._timer.start()

    def fence(self) -> Fence:
        """The running request's device work (its copies, and pipelined its kernels too),
        marked on its stream; NO_FENCE when nothing of it was timed. The first call also
        turns on asynchronous copies from page-locked arenas, since the caller has shown
        that it waits for each request before replying."""
        timer = self._timer
        if timer is None:
            return NO_FENCE
        self.async_h2d = True
        if not timer.busy:
            return NO_FENCE
        timer.seal()
        self._timer = DeviceTimer(self._current, self._events)  # the next request's
        return timer

    def shared_use(self, tensor: Any) -> Any:
        # torch's caching allocator hands a freed block back to the stream it was made on at
        # once; a read queued on another stream must be recorded, or a free of the last
        # reference (a later request's "fh") lets that stream overwrite it mid-read.
        if self.pipelined and isinstance(tensor, torch.Tensor) and tensor.is_cuda:
            tensor.record_stream(self._current)  # nothing when it is the tensor's own stream
        return tensor

    def forget_client(self, client: Any) -> None:
        self._streams.pop(client, None)

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
        wait = not self.pipelined  # pipelined, the request's fence waits before the reply
        if dst is not None:
            self._d2h(t, _host_tensor(dst), is_registered(dst.ctypes.data, dst.nbytes), wait)
            return dst
        pin = t.numel() * t.element_size() >= PINNED_D2H_MIN
        host = torch.empty(t.shape, dtype=t.dtype, pin_memory=pin)
        self._d2h(t, host, pin, wait)
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
        self._d2h(t, out, is_registered(dst.ctypes.data, dst.nbytes), True)

    def _d2h(self, t: torch.Tensor, out: torch.Tensor, pinned: bool, wait: bool) -> None:
        """One timed device-to-host copy on the request's stream; with `wait`, returns once
        it is done (else the request's fence covers it)."""
        self._use_stream()
        timer = self._timer
        assert timer is not None
        start = timer.event()
        out.copy_(t, non_blocking=pinned)
        end = timer.event()
        timer.span("d2h", start, end)
        if wait:
            end.synchronize()

    def is_tensor(self, value: Any) -> bool:
        return isinstance(value, torch.Tensor)

    def synchronize(self) -> None:
        if self._cuda:
            torch.cuda.synchronize(self._torch_device)

    def release_memory(self) -> None:
        super().release_memory()
        if self._cuda:
            torch.cuda.empty_cache()
