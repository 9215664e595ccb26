"""Tensors of any kind (numpy, torch, __dlpack__) to numpy and back, without copies.

The codec only ever sees numpy arrays; a caller's kind is remembered so results
come back as what went in (numpy in -> numpy out, torch in -> torch out).
"""

from __future__ import annotations

import sys
from typing import Any

import ml_dtypes
import numpy as np

from ..errors import ProtocolError
from ._trees import tree_map

NUMPY, TORCH, DLPACK = "numpy", "torch", "dlpack"


def tensor_kind(obj: object) -> str | None:
    """'numpy', 'torch' or 'dlpack' for a tensor, None for anything else."""
    if isinstance(obj, np.ndarray):
        return NUMPY
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(obj, torch.Tensor):
        return TORCH
    if hasattr(obj, "__dlpack__") and not isinstance(obj, type):
        return DLPACK
    return None


def to_numpy(obj: Any) -> np.ndarray:
    """A numpy view of a CPU tensor. CUDA tensors are refused with a clear error."""
    kind = tensor_kind(obj)
    if kind == NUMPY:
        return obj  # type: ignore[no-any-return]
    if kind == TORCH:
        return _torch_to_numpy(obj)
    if kind == DLPACK:
        try:
            return np.from_dlpack(obj)
        except (BufferError, RuntimeError, TypeError) as exc:
            raise ProtocolError(f"cannot read {type(obj).__name__} via __dlpack__: {exc}") from exc
    raise ProtocolError(f"not a tensor: {type(obj).__name__}")


def _torch_to_numpy(t: Any) -> np.ndarray:
    import torch

    if t.device.type != "cpu":
        raise ProtocolError(f"torch tensor on {t.device} must be moved to the CPU before sending")
    t = t.detach()
    if t.is_conj():
        t = t.resolve_conj()
    if t.is_neg():  # e.g. z.conj().imag: .numpy() refuses a lazy negation
        t = t.resolve_neg()
    try:
        if t.dtype == torch.bfloat16:
            # numpy has no native bfloat16: reinterpret the bits as ml_dtypes.bfloat16.
            return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)  # type: ignore[no-any-return]
        return t.numpy()  # type: ignore[no-any-return]
    except (RuntimeError, TypeError) as exc:  # sparse, quantized, dtypes numpy lacks
        raise ProtocolError(f"cannot send torch tensor ({t.dtype}, {t.layout}): {exc}") from exc


def from_numpy(arr: np.ndarray, kind: str | None) -> Any:
    """Return `arr` as the given kind (torch when the caller sent torch)."""
    if kind != TORCH:
        return arr
    import torch

    if arr.dtype == np.dtype(ml_dtypes.bfloat16):
        return torch.from_numpy(arr.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(arr)


def restore_kind(value: Any, kind: str | None) -> Any:
    """Walk a result tree and turn every numpy array into `kind`."""
    if kind != TORCH:
        return value
    return tree_map(lambda arr: from_numpy(arr, kind), value, _is_array)


def _is_array(value: Any) -> bool:
    return isinstance(value, np.ndarray)


def first_kind(values: Any) -> str | None:
    """The kind of the first tensor found in an argument tree (None if there is none)."""
    stack = [values]
    while stack:
        v = stack.pop(0)
        kind = tensor_kind(v)
        if kind is not None:
            return kind
        if isinstance(v, (list, tuple)):
            stack[:0] = list(v)
        elif isinstance(v, dict):
            stack[:0] = list(v.values())
    return None
