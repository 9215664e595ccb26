"""Errors raised by the op registry; the server loop turns them into error replies.

    OpError (TensorwireError)   base: the request named a bad op or the op failed
    ├── UnknownOp (KeyError)    no op of that name (message lists close matches)
    ├── OpArgumentError (TypeError)  wrong arity, unknown keyword, wrong dtype category
    └── OpFailed                the op itself raised (shape mismatch, ...); original in __cause__

MemoryError and torch's OutOfMemoryError are never wrapped: they are about the
server, not the request.
"""

from __future__ import annotations

from ...errors import TensorwireError


class OpError(TensorwireError):
    """A request named a bad op, passed bad arguments, or the op failed."""


class UnknownOp(OpError, KeyError):
    """No op of that name is registered."""

    def __str__(self) -> str:
        # KeyError quotes its message; an error reply should read as plain text.
        return str(self.args[0]) if self.args else ""


class OpArgumentError(OpError, TypeError):
    """The arguments do not fit the op: arity, keywords or dtypes."""


class OpFailed(OpError):
    """The op raised while running; `cause_type` names the original exception."""

    def __init__(self, message: str, cause_type: str) -> None:
        super().__init__(message)
        self.cause_type = cause_type
