"""The torch backend: CPU or one CUDA device. torch is imported only when this is built."""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np
import torch

from ._backend import Backend, contiguous
from ._table import check_kernels
from ._torch_kernels import KERNELS

_BF16 = np.dtype(ml_dtypes.bfloat16)
_KERNELS = check_kernels("torch", KERNELS)


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


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, device: str = "auto") -> None:
        self.device = resolve_device(device)
        self._torch_device = torch.device(self.device)
        self._cuda = self._torch_device.type == "cuda"
        self.kernels = _KERNELS

    def from_wire(self, arr: np.ndarray) -> Any:
        # torch cannot share read-only memory (an in-place op would crash) or negative
        # strides, so those are copied; everything else is a zero-copy view on the CPU.
        if not arr.flags.writeable or any(s < 0 for s in arr.strides):
            arr = arr.copy()
        if arr.dtype == _BF16:
            t = torch.from_numpy(arr.view(np.int16)).view(torch.bfloat16)
        else:
            t = torch.from_numpy(arr)
        return t.to(self._torch_device) if self._cuda else t

    def to_wire(self, value: Any) -> np.ndarray:
        if not isinstance(value, torch.Tensor):
            return contiguous(np.asarray(value))
        t = value.detach()
        if t.device.type != "cpu":
            t = t.contiguous().cpu()  # make contiguous on the device, where it is cheap
        t = t.resolve_conj().resolve_neg()
        if t.dtype == torch.bfloat16:
            return contiguous(t.view(torch.int16).numpy().view(_BF16))
        return contiguous(t.numpy())

    def is_tensor(self, value: Any) -> bool:
        return isinstance(value, torch.Tensor)

    def synchronize(self) -> None:
        if self._cuda:
            torch.cuda.synchronize(self._torch_device)

    def release_memory(self) -> None:
        super().release_memory()
        if self._cuda:
            torch.cuda.empty_cache()
