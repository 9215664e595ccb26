"""Server-side ops: the built-in op table, custom ops, and the numpy/torch backends."""

from ._backend import Backend, make_backend
from ._errors import OpArgumentError, OpError, OpFailed, UnknownOp
from ._registry import OpRegistry, default_registry, register_op

__all__ = [
    "Backend",
    "OpArgumentError",
    "OpError",
    "OpFailed",
    "OpRegistry",
    "UnknownOp",
    "default_registry",
    "make_backend",
    "register_op",
]
