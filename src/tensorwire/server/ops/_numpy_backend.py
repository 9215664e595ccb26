"""The numpy backend: CPU only, zero-copy in and out, no torch needed."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._backend import Backend, contiguous
from ._numpy_kernels import KERNELS
from ._table import check_kernels

_KERNELS = check_kernels("numpy", KERNELS)


class NumpyBackend(Backend):
    name = "numpy"
    wire_is_native = True

    def __init__(self, device: str = "auto") -> None:
        if device not in ("auto", "cpu"):
            raise ValueError(f"the numpy backend runs on the CPU only, not {device!r}")
        self.device = "cpu"
        self.kernels = _KERNELS

    def from_wire(self, arr: np.ndarray) -> Any:
        return arr

    def to_wire(self, value: Any) -> np.ndarray:
        return contiguous(np.asarray(value))

    def is_tensor(self, value: Any) -> bool:
        return isinstance(value, np.ndarray | np.number | np.bool_)
