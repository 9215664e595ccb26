"""The compute backend interface and `make_backend`, which picks one by name and device."""

from __future__ import annotations

import gc
import importlib.util
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

import numpy as np

from ...codec import Narrowed
from ._table import Kernel

BACKENDS = ("auto", "numpy", "torch")


class Fence:
    """One request's device work: `wait()` returns once it is done, with its device stages
    in seconds ({} here: nothing ran on a device)."""

    __slots__ = ()

    def wait(self) -> dict[str, Any]:
        return {}


NO_FENCE = Fence()


class Backend(ABC):
    """Where ops run: converts wire arrays to native tensors and back, and holds the kernels."""

    name: str  # "numpy" | "torch"
    device: str  # "cpu", "cuda:0", ...
    kernels: Mapping[str, Kernel]  # one per row of the op table, checked against it
    wire_is_native: bool = False  # from_wire is the identity: skip converting arguments

    @abstractmethod
    def from_wire(self, arr: np.ndarray) -> Any:
        """A numpy array from the codec -> a native tensor on this backend's device."""

    @abstractmethod
    def to_wire(self, value: Any) -> np.ndarray | Narrowed:
        """A native tensor (or numpy array/scalar) -> a C- or F-contiguous numpy array; or,
        where the backend narrowed it for the reply itself (`ops._output.reply_narrowing`),
        that array as a `Narrowed`."""

    @abstractmethod
    def is_tensor(self, value: Any) -> bool:
        """Whether `value` is a tensor from_wire/to_wire deal with (not a list or scalar)."""

    pipelined: bool = False  # set by a server that launches requests ahead of its replies

    def synchronize(self) -> None:  # noqa: B027 (optional hook: CPU backends need nothing)
        """Wait for queued device work; a no-op on the CPU."""

    def settle(self) -> None:
        """After a request's kernels: wait for them, unless the server is pipelined (it then
        waits on each request's fence just before replying, and the device runs ahead)."""
        if not self.pipelined:
            self.synchronize()

    def begin_request(self, client: Any) -> None:  # noqa: B027 (optional hook)
        """A request of `client` (a session id, or None) starts: a pipelined device backend
        runs it on that client's own stream, timed from here."""

    def fence(self) -> Fence:
        """The device work of the request that just ran, to wait for before replying."""
        return NO_FENCE

    def shared_use(self, tensor: Any) -> Any:
        """`tensor` (kept between requests, maybe made on another client's stream) is read by
        the running request: a pipelined device backend tells its allocator, so its memory
        is not reused before this request's stream is past it. Returns `tensor`."""
        return tensor

    def forget_client(self, client: Any) -> None:  # noqa: B027 (optional hook)
        """The client's session ended (no request of it is in flight): drop its stream."""

    def widen(self, narrow: np.ndarray, original: str) -> Any:
        """An argument that came narrowed for the wire, widened to `original` ("float32" or
        "float64") as a native tensor, or None to leave it to the codec (on the CPU)."""
        return None

    def take_timings(self) -> dict[str, Any]:
        """This request's device stages (seconds) since the last call; {} without a device:
        its fence, waited for."""
        return self.fence().wait()

    def release_memory(self) -> None:
        """After an out-of-memory error: drop what caches hold so the next request can run."""
        gc.collect()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} on {self.device}>"


def contiguous(arr: np.ndarray) -> np.ndarray:
    """`arr` itself when it is C- or F-contiguous, else a C-contiguous copy."""
    if arr.flags.c_contiguous or arr.flags.f_contiguous:
        return arr
    return np.ascontiguousarray(arr)


def make_backend(backend: str = "auto", device: str = "auto") -> Backend:
    """A backend by name ("auto", "numpy", "torch") on a device ("auto", "cpu", "cuda[:N]").

    "auto" picks torch when it is importable, else numpy; torch's "auto" device is
    CUDA when available. Unknown names and unavailable devices raise ValueError.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    _check_device_name(device)
    if backend == "auto":
        backend = "torch" if importlib.util.find_spec("torch") is not None else "numpy"
    if backend == "numpy":
        from ._numpy_backend import NumpyBackend

        return NumpyBackend(device)
    from ._torch_backend import TorchBackend

    return TorchBackend(device)


def _check_device_name(device: str) -> None:
    if device in ("auto", "cpu", "cuda"):
        return
    prefix, _, index = device.partition(":")
    if prefix != "cuda" or not index.isdigit():
        raise ValueError(f"unknown device {device!r}; known: auto, cpu, cuda, cuda:N")
