"""The op registry: looks ops up, validates arguments, runs them on a backend.

`call` takes the codec's numpy argument trees and returns numpy result trees, so the
server loop never touches native tensors; `call_native` is the same for callers that
already hold backend tensors (resident tensors, graph execution).
"""

from __future__ import annotations

import builtins
import difflib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...codec import native_name, tree_map
from ._backend import Backend
from ._errors import OpArgumentError, OpError, OpFailed, UnknownOp
from ._table import DTYPE_CATEGORIES, OPS, SIGNATURES, Kernel, dtype_allowed, plain_signature


@dataclass(frozen=True)
class _Entry:
    name: str
    signature: str
    doc: str
    category: str
    params: inspect.Signature
    dtypes: str | None = None  # built-ins: the dtype category of every tensor input
    fn: Kernel | None = None  # custom ops: one function for all backends
    bound_shapes: set[tuple[Any, ...]] = field(default_factory=set)  # (nargs, *kw) seen to bind


_MAX_BOUND_SHAPES = 64


def _is_wire(value: Any) -> bool:
    return isinstance(value, np.ndarray)


def _leaves(value: Any, is_leaf: Callable[[Any], bool]) -> list[Any]:
    if type(value) is list and len(value) == 1 and is_leaf(value[0]):
        return value  # the usual single tensor argument: read only here
    found: list[Any] = []
    tree_map(found.append, value, is_leaf)
    return found


class OpRegistry:
    """Built-in ops (unless builtins=False) plus custom ops registered at runtime."""

    def __init__(self, *, builtins: bool = True) -> None:
        self._ops: dict[str, _Entry] = {}
        for row in OPS if builtins else ():
            params = SIGNATURES[row.name]
            self._ops[row.name] = _Entry(
                row.name, row.signature, row.doc, row.category, params, dtypes=row.dtypes
            )

    def register(
        self,
        name: str,
        fn: Kernel,
        *,
        signature: str | None = None,
        doc: str | None = None,
        category: str = "custom",
        replace: bool = False,
    ) -> None:
        """Add a custom op; `fn` gets backend-native tensors and may return them."""
        if not isinstance(name, str) or not name or not callable(fn):
            raise TypeError(f"register needs a non-empty name and a callable, got {name!r}")
        old = self._ops.get(name)
        if old is not None and (not replace or old.fn is None):
            what = "a built-in op" if old.fn is None else "already registered"
            raise ValueError(f"op {name!r} is {what}; pass replace=True to swap a custom op")
        first_doc = (inspect.getdoc(fn) or "").strip().splitlines()
        entry = _Entry(
            name,
            signature or name + plain_signature(fn),
            doc if doc is not None else (first_doc[0] if first_doc else ""),
            category,
            inspect.signature(fn),
            fn=fn,
        )
        self._ops = {**self._ops, name: entry}  # copy-on-write: callers never see a half-update

    def unregister(self, name: str) -> None:
        """Remove a custom op (built-ins stay)."""
        entry = self._lookup(name)
        if entry.fn is None:
            raise ValueError(f"op {name!r} is a built-in op and cannot be removed")
        self._ops = {k: v for k, v in self._ops.items() if k != name}

    def __contains__(self, name: object) -> bool:
        return name in self._ops

    def list(self) -> builtins.list[dict[str, str]]:
        """Every op as {name, signature, doc, category}: the table first, then custom ops."""
        return [
            {"name": e.name, "signature": e.signature, "doc": e.doc, "category": e.category}
            for e in self._ops.values()
        ]

    def call(
        self, name: str, backend: Backend, args: builtins.list[Any], kwargs: dict[str, Any]
    ) -> Any:
        """Run op `name` on numpy argument trees; returns a numpy result tree.

        Arguments are checked before any tensor moves to the device.
        Raises UnknownOp, OpArgumentError or OpFailed (all OpError).
        """
        entry, fn = self._prepare(name, backend, args, kwargs, _is_wire)
        if not backend.wire_is_native:
            args = tree_map(backend.from_wire, args, _is_wire)
            kwargs = tree_map(backend.from_wire, kwargs, _is_wire) if kwargs else kwargs
        result = _run(entry, fn, args, kwargs)
        if type(result) is np.ndarray or backend.is_tensor(result):
            return backend.to_wire(result)  # the common single-tensor result

        def is_out(v: Any) -> bool:
            return backend.is_tensor(v) or isinstance(v, np.ndarray | np.number | np.bool_)

        return tree_map(backend.to_wire, result, is_out)

    def call_native(
        self, name: str, backend: Backend, args: builtins.list[Any], kwargs: dict[str, Any]
    ) -> Any:
        """Run op `name` on backend-native tensors; returns native results."""
        entry, fn = self._prepare(name, backend, args, kwargs, backend.is_tensor)
        return _run(entry, fn, args, kwargs)

    def _lookup(self, name: str) -> _Entry:
        entry = self._ops.get(name)
        if entry is None:
            close = difflib.get_close_matches(str(name), self._ops, n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise UnknownOp(f"unknown op {name!r}{hint} (list the ops for all names)")
        return entry

    def _prepare(
        self,
        name: str,
        backend: Backend,
        args: builtins.list[Any],
        kwargs: dict[str, Any],
        is_tensor: Callable[[Any], bool],
    ) -> tuple[_Entry, Kernel]:
        entry = self._lookup(name)
        _bind(entry, args, kwargs)
        if entry.dtypes is not None:
            _check_dtypes(entry, args, kwargs, is_tensor)
        return entry, entry.fn or backend.kernels[entry.name]


def _bind(entry: _Entry, args: list[Any], kwargs: dict[str, Any]) -> None:
    """Raise OpArgumentError unless args/kwargs fit the op's signature."""
    if kwargs and not all(isinstance(k, str) for k in kwargs):
        raise OpArgumentError(f"op {entry.name!r}: keyword names must be strings")
    # Whether a call binds depends only on how many positionals and which keywords it
    # has, so each such shape is checked with inspect (slow) once per op.
    shape = (len(args), *kwargs)
    if shape in entry.bound_shapes:
        return
    try:
        entry.params.bind(*args, **kwargs)
    except TypeError as exc:
        got = f"{len(args)} positional argument{'s' if len(args) != 1 else ''}"
        if kwargs:
            got += f" and keywords {sorted(kwargs)}"
        takes = entry.signature.removeprefix(entry.name)
        raise OpArgumentError(f"op {entry.name!r} takes {takes}; got {got} ({exc})") from None
    if len(entry.bound_shapes) < _MAX_BOUND_SHAPES:
        entry.bound_shapes.add(shape)


def _check_dtypes(
    entry: _Entry,
    args: list[Any],
    kwargs: dict[str, Any],
    is_tensor: Callable[[Any], bool],
) -> None:
    assert entry.dtypes is not None
    category = entry.dtypes
    for tensor in _leaves(args, is_tensor) + (_leaves(kwargs, is_tensor) if kwargs else []):
        ok = _ALLOWED.get((category, tensor.dtype))
        if ok is None:  # this dtype object first seen for this category: ask by name
            ok = _ALLOWED[(category, tensor.dtype)] = dtype_allowed(
                category, native_name(tensor.dtype))
        if not ok:
            allowed = ", ".join(sorted(DTYPE_CATEGORIES[category]))
            raise OpArgumentError(f"op {entry.name!r} takes {category} tensors ({allowed}); "
                                  f"got {native_name(tensor.dtype)}")


# (category, numpy or torch dtype object) -> allowed: a few dozen entries at most.
_ALLOWED: dict[tuple[str, Any], bool] = {}


def _run(entry: _Entry, fn: Kernel, args: list[Any], kwargs: dict[str, Any]) -> Any:
    """Run the op; map what it raises to OpError, except running out of memory."""
    try:
        return fn(*args, **kwargs)
    except OpArgumentError as exc:
        raise OpArgumentError(f"op {entry.name!r}: {exc}") from None
    except (OpError, MemoryError):
        raise
    except Exception as exc:
        if type(exc).__name__ == "OutOfMemoryError":  # torch's, a RuntimeError: server-side
            raise
        cause = type(exc).__name__
        raise OpFailed(f"op {entry.name!r} failed: {cause}: {exc}", cause) from exc


_DEFAULT = OpRegistry()


def default_registry() -> OpRegistry:
    """The process-wide registry that `register_op` adds to and servers use by default."""
    return _DEFAULT


def register_op(
    name: str, *, signature: str | None = None, doc: str | None = None, category: str = "custom"
) -> Callable[[Kernel], Kernel]:
    """Decorator: register a server-side custom op in the default registry."""

    def decorate(fn: Kernel) -> Kernel:
        _DEFAULT.register(name, fn, signature=signature, doc=doc, category=category)
        return fn

    return decorate
