"""Graph capture: record ops lazily, run the whole DAG in ONE request.

    with gpu.graph() as g:
        h = g.linear(x, w, b)         # nothing runs yet: h is a Node
        y = g.gelu(h)
    out = g.run(y)                    # one request; intermediates stay on the server

    @gpu.function                     # traced once per argument signature
    def mlp(x, w, b):
        return gpu.gelu(x @ w + b)

Operands may be local arrays (numpy, torch, __dlpack__: sent once per run, through
shared memory where the connection has it), RemoteTensor handles (no bytes travel),
scalars and lists, or nodes of the same graph. Op names are checked when recorded.
Nodes support `+ - * / @` and unary `-` (add, sub, mul, div, matmul, neg). Local
arrays are read when the graph runs, not when it is recorded.

Wire format: one request of kind "graph" whose payload is {"a": [spec], "kw": {}}:

    spec = {
        "nodes":   [[op, args, kwargs], ...],  # record order; only earlier nodes are used
        "outputs": [node index, ...],          # what comes back, in this order
        "inputs":  {name: tensor | handle},    # values for g.input(name)
        "consts":  [tensor | handle, ...],     # operands captured while recording, each once
    }

Inside args and kwargs a reference is a one-key map {"$node": i}, {"$input": name} or
{"$const": j}; user maps with a key starting with "$" are refused when recorded.
Meta "out": "remote" keeps the outputs on the server. The reply payload is
{"o": [outputs], "mode": "eager: <reason>" | "compiled: ...", "plan": "hit" | "miss"};
`Graph.last_mode` and `Graph.last_plan` keep the last two.
"""

from __future__ import annotations

import contextvars
import difflib
import functools
import threading
import weakref
from collections.abc import Callable, Hashable
from types import TracebackType
from typing import Any

from ..codec import (
    HandleRef,
    first_kind,
    restore_kind,
    tensor_kind,
    to_numpy,
    validate_wire_dtype,
)
from ..errors import ProtocolError, RemoteError

__all__ = ["Graph", "Node", "Traced", "recording", "traced"]

MARKER_PREFIX = "$"
RESERVED = ("out", "wire_dtype")  # run()'s own keywords: no input may take these names
CLIENT_POLICY: Any = object()  # run(wire_dtype=) not given: the client's policy applies

# Nonzero while some thread records (a `with gpu.graph()` block or a trace): Client.call
# then asks `recording()` whether its arguments belong to a graph. A counter, so the
# common path (nothing recording) costs one global read.
RECORDING = 0
_recording_lock = threading.Lock()
_TRACING: contextvars.ContextVar[Graph | None] = contextvars.ContextVar("tw_tracing", default=None)
_OP_NAMES: weakref.WeakKeyDictionary[Any, frozenset[str]] = weakref.WeakKeyDictionary()


def _recording(delta: int) -> None:
    global RECORDING
    with _recording_lock:
        RECORDING += delta


def recording(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Graph | None:
    """The graph a client call with these arguments records into, if any."""
    graph = _TRACING.get()
    if graph is not None:
        return graph
    for value in (*args, *kwargs.values()):
        if type(value) is Node:
            return value.graph
        if isinstance(value, list | tuple):
            for item in value:
                if type(item) is Node:
                    return item.graph
    return None


class Node:
    """A value of a graph, known once the graph runs."""

    __slots__ = ("graph", "index", "name", "op")
    __array_ufunc__ = None  # numpy defers to us: `array @ node` records a matmul

    def __init__(self, graph: Graph, index: int | None, op: str, name: str | None = None):
        self.graph, self.index, self.op, self.name = graph, index, op, name

    def wire(self) -> dict[str, Any]:
        return {"$node": self.index} if self.index is not None else {"$input": self.name}

    def __repr__(self) -> str:
        if self.index is None:
            return f"<graph input {self.name!r}>"
        return f"<graph node {self.index}: {self.op}>"

    def __bool__(self) -> bool:
        raise TypeError("a graph node has no value until the graph runs (no branching on it)")

    def __add__(self, other: Any) -> Node:
        return self.graph.call("add", self, other)

    def __radd__(self, other: Any) -> Node:
        return self.graph.call("add", other, self)

    def __sub__(self, other: Any) -> Node:
        return self.graph.call("sub", self, other)

    def __rsub__(self, other: Any) -> Node:
        return self.graph.call("sub", other, self)

    def __mul__(self, other: Any) -> Node:
        return self.graph.call("mul", self, other)

    def __rmul__(self, other: Any) -> Node:
        return self.graph.call("mul", other, self)

    def __truediv__(self, other: Any) -> Node:
        return self.graph.call("div", self, other)

    def __rtruediv__(self, other: Any) -> Node:
        return self.graph.call("div", other, self)

    def __matmul__(self, other: Any) -> Node:
        return self.graph.call("matmul", self, other)

    def __rmatmul__(self, other: Any) -> Node:
        return self.graph.call("matmul", other, self)

    def __neg__(self) -> Node:
        return self.graph.call("neg", self)


class Graph:
    """Ops recorded against one client, run together by `run` in one request."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._nodes: list[list[Any]] = []
        self._consts: list[Any] = []  # wire values: numpy arrays and handles
        self._originals: list[Any] = []  # what the caller passed (keeps ids alive, torch kind)
        self._const_index: dict[int, int] = {}  # id(original) -> const index
        self._inputs: dict[str, Node] = {}
        self.last_mode: str | None = None
        self.last_plan: str | None = None

    # -- recording --------------------------------------------------------------------

    def __enter__(self) -> Graph:
        _recording(+1)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _recording(-1)

    def __getattr__(self, name: str) -> Callable[..., Node]:
        if name.startswith("_"):
            raise AttributeError(name)
        return functools.partial(self.call, name)

    def call(self, op: str, /, *args: Any, **kwargs: Any) -> Node:
        """Record `op` on these operands; returns its Node. Nothing runs yet."""
        if "out" in kwargs:
            raise TypeError("out= belongs to run(), not to a recorded op")
        self._check_op(op)
        where = f"node {len(self._nodes)} ({op})"
        wire_args = [self._operand(a, where) for a in args]
        wire_kwargs = {k: self._operand(v, where) for k, v in kwargs.items()}
        self._nodes.append([op, wire_args, wire_kwargs])
        return Node(self, len(self._nodes) - 1, op)

    def input(self, name: str) -> Node:
        """A placeholder whose value is passed to run() as `name=...`."""
        if not isinstance(name, str) or not name or name in RESERVED:
            raise ValueError(f"an input needs a non-empty name other than 'out' or "
                             f"'wire_dtype', got {name!r}")
        node = self._inputs.get(name)
        if node is None:
            node = self._inputs[name] = Node(self, None, "input", name)
        return node

    @property
    def nodes(self) -> int:
        """How many ops are recorded."""
        return len(self._nodes)

    def _check_op(self, op: str) -> None:
        if not isinstance(op, str) or not op:
            raise TypeError(f"op name must be a non-empty string, got {op!r}")
        names = _OP_NAMES.get(self._client)
        if names is None or op not in names:  # custom ops may have come since: ask again
            names = _OP_NAMES[self._client] = frozenset(o["name"] for o in self._client.ops())
        if op not in names:
            close = difflib.get_close_matches(op, names, n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise RemoteError("UnknownOp", f"node {len(self._nodes)}: unknown op {op!r}{hint}")

    def _operand(self, value: Any, where: str) -> Any:
        if type(value) is Node:
            if value.graph is not self:
                raise ValueError(f"{where}: {value!r} belongs to another graph")
            return value.wire()
        if isinstance(value, HandleRef) or tensor_kind(value) is not None:
            return {"$const": self._const(value)}
        if isinstance(value, list | tuple):
            return [self._operand(v, where) for v in value]
        if isinstance(value, dict):
            bad = [k for k in value if isinstance(k, str) and k.startswith(MARKER_PREFIX)]
            if bad:
                raise ValueError(f"{where}: map keys starting with '$' are reserved: {bad[0]!r}")
            return {k: self._operand(v, where) for k, v in value.items()}
        return value

    def _const(self, value: Any) -> int:
        index = self._const_index.get(id(value))
        if index is None:
            wire = value if isinstance(value, HandleRef) else to_numpy(value)
            index = self._const_index[id(value)] = len(self._consts)
            self._consts.append(wire)
            self._originals.append(value)
        return index

    # -- running ------------------------------------------------------------------------

    def run(self, *outputs: Node, out: str | None = None, wire_dtype: Any = CLIENT_POLICY,
            **inputs: Any) -> Any:
        """Run the graph in one request; return the outputs' values (one, or a tuple).

        With no outputs named, the last recorded node is returned. `out="remote"`
        keeps the outputs on the server as RemoteTensor handles. `wire_dtype` overrides
        the client's wire precision for this run, as it does for a call.
        """
        request, finish = self._request(outputs, out, inputs, wire_dtype)
        return finish(self._client._request(*request))

    def _request(
        self, outputs: tuple[Node, ...], out: str | None, inputs: dict[str, Any],
        wire_dtype: Any = CLIENT_POLICY,
    ) -> tuple[tuple[Any, ...], Callable[[Any], Any]]:
        """The `Client._request` arguments for one run, and what turns its reply into values."""
        if not self._nodes:
            raise ValueError("the graph is empty: record an op first")
        indices = [self._output(o) for o in outputs] or [len(self._nodes) - 1]
        given = self._given(inputs)
        spec = {"nodes": self._nodes, "outputs": indices, "inputs": given, "consts": self._consts}
        kind = first_kind([self._originals, list(inputs.values())])
        extra = _out_meta(out)
        if wire_dtype is not CLIENT_POLICY:
            extra = {**(extra or {}), "w": validate_wire_dtype(wire_dtype)}
        single = len(indices) == 1

        def finish(reply: Any) -> Any:
            if not (isinstance(reply, dict) and isinstance(reply.get("o"), list)):
                raise ProtocolError("graph reply without outputs")
            self.last_mode, self.last_plan = reply.get("mode"), reply.get("plan")
            values = restore_kind(reply["o"], kind)
            return values[0] if single else tuple(values)

        return ("graph", "", (spec,), {}, None, extra), finish

    def _output(self, node: Any) -> int:
        if type(node) is not Node or node.graph is not self:
            raise ValueError(f"outputs must be nodes of this graph, got {node!r}")
        if node.index is None:
            raise ValueError(f"{node!r} is an input, not a result; record g.identity(x)")
        return node.index

    def _given(self, inputs: dict[str, Any]) -> dict[str, Any]:
        missing = sorted(self._inputs.keys() - inputs.keys())
        unknown = sorted(inputs.keys() - self._inputs.keys())
        if missing or unknown:
            raise ValueError(f"graph inputs: missing {missing}, not in the graph {unknown}")
        return {
            name: value if isinstance(value, HandleRef) else to_numpy(value)
            for name, value in inputs.items()
        }

    def __repr__(self) -> str:
        return f"<tensorwire.Graph {len(self._nodes)} nodes, inputs {sorted(self._inputs)}>"


def _out_meta(out: str | None) -> dict[str, Any] | None:
    if out is None:
        return None
    if out not in ("remote", "local"):
        raise ValueError(f"out must be 'remote' or 'local', got {out!r}")
    return {"out": out}


# -- @gpu.function -------------------------------------------------------------------------


class Traced:
    """A function of tensors traced into a graph once per argument signature.

    Tensor and handle arguments become graph inputs; other arguments (scalars,
    strings, shapes) are baked into the trace, so a new value traces again, as do
    new shapes or dtypes. Inside the function, ops recorded through node operators
    (`x @ w`) or the client (`gpu.gelu(h)`) go into the graph.
    """

    def __init__(self, client: Any, fn: Callable[..., Any]) -> None:
        self._client, self._fn = client, fn
        self._traces: dict[Hashable, tuple[Graph, list[Node], str]] = {}
        self._lock = threading.Lock()
        self.traces = 0  # how many times fn was traced
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        graph, outputs, shape, inputs = self.prepare(args, kwargs)
        return _shaped(graph.run(*outputs, **inputs), shape)

    def prepare(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[Graph, list[Node], str, dict[str, Any]]:
        """The graph for these arguments (traced now if new), its outputs and inputs."""
        tensors: list[Any] = []
        key = _key((args, kwargs), tensors)
        inputs = {f"arg{i}": t for i, t in enumerate(tensors)}
        with self._lock:
            entry = self._traces.get(key)
            if entry is None:
                entry = self._traces[key] = self._trace(args, kwargs)
        graph, outputs, shape = entry
        return graph, outputs, shape, inputs

    def _trace(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[Graph, list[Node], str]:
        graph = Graph(self._client)
        counter = iter(range(1 << 62))
        symbolic = _replace((args, kwargs), lambda: graph.input(f"arg{next(counter)}"))
        token = _TRACING.set(graph)
        _recording(+1)
        try:
            result = self._fn(*symbolic[0], **symbolic[1])
        finally:
            _recording(-1)
            _TRACING.reset(token)
        self.traces += 1
        shape = "tuple" if isinstance(result, tuple) else "list" if isinstance(result, list) else ""
        results = list(result) if shape else [result]
        if not results or any(type(r) is not Node or r.graph is not graph for r in results):
            name = getattr(self._fn, "__qualname__", "function")
            raise TypeError(f"{name} must return graph values (a node, or a tuple of them)")
        return graph, [r if r.index is not None else graph.identity(r) for r in results], shape


def traced(client: Any, fn: Callable[..., Any]) -> Traced:
    """`@gpu.function`: trace `fn` into a graph once, then run it in one request per call."""
    if not callable(fn):
        raise TypeError(f"gpu.function decorates a function, got {type(fn).__name__}")
    return Traced(client, fn)


def _shaped(values: Any, shape: str) -> Any:
    if shape == "tuple":
        return values if isinstance(values, tuple) else (values,)
    if shape == "list":
        return list(values) if isinstance(values, tuple) else [values]
    return values


def _is_operand(value: Any) -> bool:
    return isinstance(value, HandleRef) or tensor_kind(value) is not None


def _key(value: Any, tensors: list[Any]) -> Hashable:
    """The trace key of an argument tree; its tensors are appended to `tensors` in order."""
    if isinstance(value, HandleRef):
        tensors.append(value)
        return ("handle", value.shape, value.dtype)
    kind = tensor_kind(value)
    if kind is not None:
        tensors.append(value)
        return (kind, tuple(value.shape), str(value.dtype))
    if isinstance(value, list | tuple):
        return (type(value).__name__, tuple(_key(v, tensors) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple((k, _key(v, tensors)) for k, v in value.items()))
    try:
        hash(value)
    except TypeError:
        raise TypeError(f"argument of type {type(value).__name__} cannot key a trace") from None
    return (type(value).__name__, value)


def _replace(value: Any, make: Callable[[], Node]) -> Any:
    """The argument tree with each tensor replaced by a fresh input node, in `_key` order."""
    if _is_operand(value):
        return make()
    if isinstance(value, list | tuple):
        return type(value)(_replace(v, make) for v in value)
    if isinstance(value, dict):
        return {k: _replace(v, make) for k, v in value.items()}
    return value
