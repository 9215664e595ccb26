"""Wire casts on the server: widen what arrived narrowed, unless the op only moves elements.

The codec hands the server narrowed tensors as `Narrowed` placeholders. Most ops get them
widened (into recycled buffers) and compute in the original dtype. An op that only moves
elements around gives the same bits in either width, so when the reply would be narrowed to
the same format anyway, its arguments stay narrow: that saves a widening and a narrowing of
every byte (about 17 ms per 100 MB identity round trip on the 2-vCPU VM). A backend on a
device (CUDA) widens a call's arguments, and a graph's inputs and constants, itself: they
cross to the device narrow.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..codec import BufferPool, Narrowed, choose, dtype_name, tree_map, validate_wire_dtype
from ._handlers import Request
from .ops import Backend

# Results are input elements, moved or copied, never computed.
ELEMENT_MOVING_OPS = frozenset({"identity", "reshape", "transpose", "permute", "concat"})


def _narrowed(value: Any) -> bool:
    return isinstance(value, Narrowed)


def _unwrap(n: Narrowed) -> Any:
    return n.value


def _tensor(value: Any) -> bool:
    return isinstance(value, Narrowed | np.ndarray)


def settle_narrowed(
    request: Request, path: str, handles: int, pool: BufferPool, backend: Backend | None = None
) -> tuple[np.dtype[Any], str] | None:
    """Widen the request's narrowed arguments in place; or, where they may stay narrow
    (`_stays_narrow`), unwrap them and return (their wire dtype, the original dtype name)
    to mark the results with. A call's arguments, and a graph's inputs and constants, are
    widened by `backend` where it can (on its device: `Backend.widen`), else into recycled
    buffers here."""
    tensors: list[Any] = []
    tree_map(tensors.append, [request.args, request.kwargs], _tensor)
    narrowed = [t for t in tensors if isinstance(t, Narrowed)]
    if not narrowed:
        return None
    keep = handles == 0 and len(narrowed) == len(tensors) and _stays_narrow(request, path, narrowed)

    def by_codec(n: Narrowed) -> Any:
        return n.widen(pool)

    def by_backend(n: Narrowed) -> Any:
        native = backend.widen(n.value, n.original) if backend is not None else None
        return native if native is not None else n.widen(pool)

    settle = by_codec
    if keep:
        settle = _unwrap
    elif request.kind == "call":
        settle = by_backend
    elif request.kind == "graph":
        _graph_on_device(request, by_backend)  # values inline in nodes stay for the codec
    request.args = tree_map(settle, request.args, _narrowed)
    request.kwargs = tree_map(settle, request.kwargs, _narrowed)
    return (narrowed[0].value.dtype, narrowed[0].original) if keep else None


def _graph_on_device(request: Request, widen: Any) -> None:
    """A graph's narrowed inputs and constants (the spec's own lists, where the plan takes
    native tensors from) widened by the backend; values inline in nodes stay for the codec."""
    spec = request.args[0] if len(request.args) == 1 else None
    if not isinstance(spec, dict):
        return  # malformed: the graph handler says what is wrong
    inputs, consts = spec.get("inputs"), spec.get("consts")
    if isinstance(inputs, dict):
        spec["inputs"] = {k: widen(v) if _narrowed(v) else v for k, v in inputs.items()}
    if isinstance(consts, list):
        spec["consts"] = [widen(v) if _narrowed(v) else v for v in consts]


def mark_narrowed(result: Any, narrow: tuple[np.dtype[Any], str]) -> Any:
    """Results computed on narrow arguments, marked with the dtype the client sent (only
    arrays still in the wire format: anything else goes back as it is)."""
    dtype, original = narrow

    def mark(r: np.ndarray) -> Any:
        return Narrowed(r, original) if r.dtype == dtype else r

    return tree_map(mark, result, lambda v: isinstance(v, np.ndarray))


def _stays_narrow(request: Request, path: str, narrowed: list[Narrowed]) -> bool:
    """An element-moving call, returned as frames, all arguments narrowed alike, and a reply
    policy that narrows them again to the same format."""
    if request.kind != "call" or request.op not in ELEMENT_MOVING_OPS:
        return False
    if "out" in request.meta or path == "shm":
        return False
    formats = {(n.value.dtype, n.original) for n in narrowed}
    if len(formats) != 1:
        return False
    wire = request.meta.get("w")
    try:
        policy = validate_wire_dtype(wire)
    except ValueError:
        return False  # the reply encoder names the bad policy
    smallest = min(n.nbytes for n in narrowed)
    wire_format = dtype_name(narrowed[0].value.dtype)
    return choose(policy, transport_path=path, nbytes=smallest) == wire_format
