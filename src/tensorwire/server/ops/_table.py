"""The built-in ops as a data table, checked when the table and each backend's kernels load.

A row names an op, its listing category, the dtype category its tensor inputs must
belong to, its Python signature and a one-line doc. Each backend supplies one kernel
per row (`_numpy_kernels`, `_torch_kernels`); `check_kernels` refuses a backend whose
kernels miss a row, add an op the table does not know, or disagree on the signature.
Adding an op = one row here + one kernel per backend + one test row.
"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

Kernel = Callable[..., Any]

CATEGORIES = frozenset(
    {"elementwise", "activation", "linalg", "normalization", "reduction", "manipulation"}
)

_INTS = frozenset({"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"})
_FLOATS = frozenset({"float16", "bfloat16", "float32", "float64"})
_COMPLEX = frozenset({"complex64", "complex128"})

# Dtype category -> the wire dtype names its inputs may have (array API naming).
DTYPE_CATEGORIES: dict[str, frozenset[str]] = {
    "any": _INTS | _FLOATS | _COMPLEX | {"bool"},
    "numeric": _INTS | _FLOATS | _COMPLEX,
    "real": _INTS | _FLOATS,
    "floating": _FLOATS,
}


@dataclass(frozen=True)
class OpRow:
    name: str
    category: str
    dtypes: str
    signature: str
    doc: str


def _rows(*rows: tuple[str, str, str, str, str]) -> tuple[OpRow, ...]:
    return tuple(OpRow(*row) for row in rows)


# fmt: off
OPS = _rows(
    # name, category, dtypes, signature, doc
    ("identity", "elementwise", "any", "identity(x)", "Return x unchanged."),
    ("add", "elementwise", "numeric", "add(a, b)", "a + b, broadcasting."),
    ("sub", "elementwise", "numeric", "sub(a, b)", "a - b, broadcasting."),
    ("mul", "elementwise", "numeric", "mul(a, b)", "a * b, broadcasting."),
    ("div", "elementwise", "numeric", "div(a, b)", "True division a / b, broadcasting."),
    ("neg", "elementwise", "numeric", "neg(x)", "-x."),
    ("tanh", "elementwise", "floating", "tanh(x)", "Hyperbolic tangent."),
    ("exp", "elementwise", "floating", "exp(x)", "e ** x."),
    ("log", "elementwise", "floating", "log(x)", "Natural logarithm."),
    ("relu", "activation", "real", "relu(x)", "max(x, 0)."),
    ("gelu", "activation", "floating", "gelu(x)", "Exact GELU, x * Phi(x) via erf."),
    ("silu", "activation", "floating", "silu(x)", "x * sigmoid(x)."),
    ("sigmoid", "activation", "floating", "sigmoid(x)", "1 / (1 + exp(-x))."),
    ("softmax", "activation", "floating", "softmax(x, axis=-1)", "Softmax along one axis."),
    ("matmul", "linalg", "numeric", "matmul(a, b)", "Matrix product a @ b, batched."),
    ("linear", "linalg", "numeric", "linear(x, weight, bias=None)", "x @ weight.T + bias."),
    ("layer_norm", "normalization", "floating",
     "layer_norm(x, normalized_shape=None, weight=None, bias=None, eps=1e-05)",
     "Layer norm over the trailing normalized_shape (default: the last axis)."),
    ("sum", "reduction", "numeric", "sum(x, axis=None, keepdims=False)", "Sum over axes."),
    ("mean", "reduction", "floating", "mean(x, axis=None, keepdims=False)", "Mean over axes."),
    ("max", "reduction", "real", "max(x, axis=None, keepdims=False)", "Maximum over axes."),
    ("transpose", "manipulation", "any", "transpose(x, axes=None)",
     "Permute axes; reverses them by default."),
    ("permute", "manipulation", "any", "permute(x, dims)", "Permute axes to the order dims."),
    ("reshape", "manipulation", "any", "reshape(x, shape)", "Same data, new shape."),
    ("cast", "manipulation", "any", "cast(x, dtype)", "Convert to a wire dtype, by name."),
    ("concat", "manipulation", "any", "concat(tensors, axis=0)", "Join tensors along an axis."),
)
# fmt: on

ROWS: dict[str, OpRow] = {row.name: row for row in OPS}


def parse_signature(text: str) -> inspect.Signature:
    """ "name(a, b=1)" -> the Signature of `def name(a, b=1)`; literal defaults only."""
    fn = ast.parse(f"def {text}: pass").body[0]
    assert isinstance(fn, ast.FunctionDef)
    names = [a.arg for a in fn.args.args]
    defaults = [ast.literal_eval(d) for d in fn.args.defaults]
    if fn.args.vararg or fn.args.kwarg or fn.args.kwonlyargs or fn.args.posonlyargs:
        raise ValueError(f"signature {text!r}: only plain parameters are supported")
    firsts = [inspect.Parameter.empty] * (len(names) - len(defaults))
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    return inspect.Signature(
        [
            inspect.Parameter(n, kind, default=d)
            for n, d in zip(names, firsts + defaults, strict=True)
        ]
    )


def _check_row(row: OpRow) -> None:
    where = f"op table row {row.name!r}"
    if row.category not in CATEGORIES:
        raise ValueError(f"{where}: unknown category {row.category!r}")
    if row.dtypes not in DTYPE_CATEGORIES:
        raise ValueError(f"{where}: unknown dtype category {row.dtypes!r}")
    if not row.signature.startswith(row.name + "("):
        raise ValueError(f"{where}: signature {row.signature!r} does not name the op")
    parse_signature(row.signature)  # a SyntaxError or ValueError here is a typo in the table


def _check_table(rows: Iterable[OpRow]) -> None:
    names = [row.name for row in rows]
    if len(set(names)) != len(names):
        raise ValueError(f"op table has duplicate names: {sorted(names)}")
    for row in rows:
        _check_row(row)


_check_table(OPS)
SIGNATURES: dict[str, inspect.Signature] = {r.name: parse_signature(r.signature) for r in OPS}


def plain_signature(fn: Kernel) -> str:
    """`fn`'s parameter list without annotations, e.g. "(x, axis=-1)"."""
    sig = inspect.signature(fn)
    params = [p.replace(annotation=inspect.Parameter.empty) for p in sig.parameters.values()]
    return str(sig.replace(parameters=params, return_annotation=inspect.Signature.empty))


def check_kernels(backend: str, kernels: Mapping[str, Kernel]) -> dict[str, Kernel]:
    """Match a backend's kernels to the table, one for one, with identical signatures."""
    missing = ROWS.keys() - kernels.keys()
    extra = kernels.keys() - ROWS.keys()
    if missing or extra:
        raise ValueError(
            f"{backend} kernels do not match the op table: "
            f"missing {sorted(missing)}, not in the table {sorted(extra)}"
        )
    for name, fn in kernels.items():
        got = name + plain_signature(fn)
        if got != ROWS[name].signature:
            raise ValueError(f"{backend} kernel {got} differs from table {ROWS[name].signature}")
    return dict(kernels)


def dtype_allowed(category: str, dtype: str) -> bool:
    """Whether a wire dtype name belongs to a dtype category."""
    return dtype in DTYPE_CATEGORIES[category]
