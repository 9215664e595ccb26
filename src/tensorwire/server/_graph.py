"""Graph requests: a whole DAG of ops in one request, intermediates kept on the device.

The request payload is {"a": [spec], "kw": {}} with

    spec = {
        "nodes":   [[op, args, kwargs], ...],  # in order; a node may use only earlier ones
        "outputs": [node index, ...],          # what the reply carries, in this order
        "inputs":  {name: tensor | handle},    # values of the g.input(name) placeholders
        "consts":  [tensor | handle, ...],     # operands captured while recording, sent once
    }

Inside args/kwargs a reference is a one-key map: {"$node": i}, {"$input": name} or
{"$const": j}. Any other map whose key starts with "$" is refused, so user data
cannot be mistaken for a reference. A tensor or handle written inline in args is
accepted too (it is treated as one more const). Meta "out": "remote" keeps the
outputs on the server as handles. The reply payload is {"o": [output, ...],
"mode": "eager: <reason>" | "compiled: torch.compile", "plan": "hit" | "miss"}.

Everything is checked before any node runs: references (a node using itself or a
later node is a cycle), op names, argument binding and dtypes (the registry's own
checks), shapes (`_graph_shapes`), and that every handle belongs to the session.
Errors name the node: `node 3 (gelu): ...`. The checked plan is cached per handler
by a structure key (ops, argument structure, tensor shapes and dtypes) in an LRU.
"""

from __future__ import annotations

import functools
import os
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..codec import HandleRef, tree_map
from ..errors import ProtocolError, TensorwireError
from ._graph_shapes import Abstract, infer
from ._resident import _shares
from .ops import OpError
from .ops._output import outputs_into

if TYPE_CHECKING:
    from ._handlers import Handler, Request
    from ._sessions import Session

MAX_NODES = 10_000
MAX_OUTPUTS = 1_000
PLAN_CACHE_SIZE = 256
COMPILE_ENV = "TENSORWIRE_GRAPH_COMPILE"  # "1": torch.compile graphs on a torch backend
MARKERS = ("$node", "$input", "$const")


@dataclass(frozen=True)
class Ref:
    """A reference inside a node's arguments: kind is "node", "input" or "const"."""

    kind: str
    key: Any


@dataclass
class Plan:
    """A checked graph: nodes with references resolved to Refs, and when to free what."""

    nodes: list[tuple[str, Any, Any]]  # every node, checked
    outputs: list[int]
    steps: list[tuple[int, str, Any, Any, list[int]]]  # (i, op, args, kwargs, free after i)
    mode: str = "eager"
    compiled: Callable[[dict[Ref, Any]], list[Any]] | None = None
    checked: bool = False  # shapes and dtypes checked against the first run's tensors


class _Cache:
    """A bounded LRU of plans, one per handler."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._plans: OrderedDict[Hashable, Plan] = OrderedDict()

    def get(self, key: Hashable) -> Plan | None:
        plan = self._plans.get(key)
        if plan is not None:
            self._plans.move_to_end(key)
        return plan

    def put(self, key: Hashable, plan: Plan) -> None:
        self._plans[key] = plan
        if len(self._plans) > self.size:
            self._plans.popitem(last=False)

    def __len__(self) -> int:
        return len(self._plans)


_CACHES: weakref.WeakKeyDictionary[Any, _Cache] = weakref.WeakKeyDictionary()


def plan_cache(handler: Handler) -> _Cache:
    cache = _CACHES.get(handler)
    if cache is None:
        cache = _CACHES[handler] = _Cache(PLAN_CACHE_SIZE)
    return cache


def run_graph(handler: Handler, req: Request, session: Session | None) -> dict[str, Any]:
    """Check the whole graph, run it, and return the reply payload."""
    out = req.meta.get("out", "local")
    if out not in ("remote", "local"):
        raise ProtocolError(f"request {req.rid}: out must be 'remote' or 'local', got {out!r}")
    spec = _spec(req, handler.backend.is_tensor)
    nodes, consts = _hoist(spec["nodes"], list(spec["consts"]))
    inputs = spec["inputs"]
    key = (_freeze(nodes), tuple(spec["outputs"]), _signature(consts), _input_signature(inputs))
    cache = plan_cache(handler)
    plan, hit = cache.get(key), True
    if plan is None:
        plan, hit = _prepare(handler, nodes, spec["outputs"], consts, inputs), False
    values = _resolve(handler, session, plan, consts, inputs)
    if not hit:
        cache.put(key, plan)  # only once every check passed
    channel = session.channel if session is not None and out == "local" else None
    arena = channel.output_allocator() if channel is not None else None
    results = _execute(handler, plan, values, arena)
    wire = [v for v in (*consts, *inputs.values()) if isinstance(v, np.ndarray)]
    return {"o": _reply(handler, session, out, results, wire, arena), "mode": plan.mode,
            "plan": "hit" if hit else "miss"}


# -- the spec on the wire --------------------------------------------------------------


def _spec(req: Request, native: Callable[[Any], bool]) -> dict[str, Any]:
    """The validated spec; `native` accepts the backend's own tensors among the inputs and
    constants (only the server makes those: narrowed ones it widened on its device)."""
    if len(req.args) != 1 or req.kwargs or not isinstance(req.args[0], dict):
        raise ProtocolError(f"request {req.rid}: a graph request carries one graph spec")
    spec = dict(req.args[0])
    spec.setdefault("inputs", {})
    spec.setdefault("consts", [])
    nodes, outputs = spec.get("nodes"), spec.get("outputs")
    if not isinstance(nodes, list) or not nodes:
        raise ProtocolError("graph: nodes must be a non-empty list")
    if len(nodes) > MAX_NODES:
        raise ProtocolError(f"graph: {len(nodes)} nodes, more than the limit of {MAX_NODES}")
    if not isinstance(spec["inputs"], dict) or not isinstance(spec["consts"], list):
        raise ProtocolError("graph: inputs must be a map and consts a list")
    if not isinstance(outputs, list) or not 0 < len(outputs) <= MAX_OUTPUTS:
        raise ProtocolError(f"graph: outputs must be a list of 1 to {MAX_OUTPUTS} node indices")
    for i in outputs:
        if type(i) is not int or not 0 <= i < len(nodes):
            raise ProtocolError(f"graph: output {i!r} is not a node index (0 to {len(nodes) - 1})")
    for name, value in spec["inputs"].items():
        if not isinstance(name, str) or not (_is_tensor(value) or native(value)):
            raise ProtocolError(f"graph: input {name!r} must be named by a string and be a tensor")
    for j, value in enumerate(spec["consts"]):
        if not (_is_tensor(value) or native(value)):
            raise ProtocolError(f"graph: const {j} must be a tensor or a handle")
    for i, node in enumerate(nodes):
        if not (isinstance(node, list) and len(node) == 3 and isinstance(node[0], str)
                and isinstance(node[1], list) and isinstance(node[2], dict)):
            raise ProtocolError(f"graph: node {i} must be [op name, args list, kwargs map]")
    return spec


def _is_tensor(value: Any) -> bool:
    return isinstance(value, HandleRef | np.ndarray)


def _hoist(nodes: list[Any], consts: list[Any]) -> tuple[list[tuple[str, Any, Any]], list[Any]]:
    """Nodes with references as Refs and inline tensors moved into consts."""

    def ref(value: Any, where: str) -> Any:
        if _is_tensor(value):
            consts.append(value)
            return Ref("const", len(consts) - 1)
        if isinstance(value, dict) and any(isinstance(k, str) and k.startswith("$") for k in value):
            if len(value) != 1 or next(iter(value)) not in MARKERS:
                raise ProtocolError(f"{where}: malformed reference {_short(value)}")
            ((kind, key),) = value.items()
            if type(key) is not (str if kind == "$input" else int):
                raise ProtocolError(f"{where}: malformed reference {_short(value)}")
            return Ref(kind[1:], key)
        return value

    out = []
    for i, (op, args, kwargs) in enumerate(nodes):
        hoist = functools.partial(_swap, ref, f"node {i} ({op})")
        out.append((op, tree_map(hoist, args, _leaf), tree_map(hoist, kwargs, _leaf)))
    return out, consts


def _swap(ref: Callable[[Any, str], Any], where: str, value: Any) -> Any:
    return ref(value, where)


def _leaf(value: Any) -> bool:
    return _is_tensor(value) or (
        isinstance(value, dict) and any(isinstance(k, str) and k.startswith("$") for k in value)
    )


def _freeze(value: Any) -> Hashable:
    """A hashable copy of a node list (lists -> tuples, maps -> sorted item tuples)."""
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return ("$map", tuple(sorted((str(k), _freeze(v)) for k, v in value.items())))
    if isinstance(value, float):
        return ("$f", value.hex())  # 1 and 1.0 and True stay different keys
    if isinstance(value, bool | int):
        return (type(value).__name__, value)
    frozen: Hashable = value
    return frozen


def _signature(consts: list[Any]) -> tuple[Any, ...]:
    return tuple(_tensor_signature(v) for v in consts)


def _input_signature(inputs: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(sorted((name, _tensor_signature(v)) for name, v in inputs.items()))


def _tensor_signature(value: Any) -> tuple[Any, ...]:
    if isinstance(value, HandleRef):
        return ("handle", value.hid)  # a handle's shape is the server's to know: by id
    if isinstance(value, np.ndarray):
        return ("array", value.shape, value.dtype.str)
    return ("native", tuple(value.shape), str(value.dtype))  # widened on the device


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# -- checking: everything before anything runs --------------------------------------------


def _prepare(handler: Handler, nodes: list[tuple[str, Any, Any]], outputs: list[int],
             consts: list[Any], inputs: dict[str, Any]) -> Plan:
    uses: list[list[int]] = []
    for i, (op, args, kwargs) in enumerate(nodes):
        refs = _refs((args, kwargs))
        for r in refs:
            _check_ref(r, i, op, len(consts), inputs)
        uses.append([r.key for r in refs if r.kind == "node"])
    live = _live(uses, outputs)
    last_use = {j: j for j in live}
    for i in live:
        for j in uses[i]:
            last_use[j] = i
    keep = set(outputs)
    free_after: dict[int, list[int]] = {i: [] for i in live}
    for j, i in last_use.items():
        if j not in keep:
            free_after[i].append(j)
    steps = [(i, *nodes[i], free_after[i]) for i in live]
    return Plan(nodes, list(outputs), steps, mode=_mode(handler))


def _live(uses: list[list[int]], outputs: list[int]) -> list[int]:
    """The nodes the outputs depend on, in order: only those run."""
    live, stack = set(outputs), list(outputs)
    while stack:
        for j in uses[stack.pop()]:
            if j not in live:
                live.add(j)
                stack.append(j)
    return sorted(live)


def _refs(value: Any) -> list[Ref]:
    found: list[Ref] = []
    tree_map(found.append, value, lambda v: isinstance(v, Ref))
    return found


def _check_ref(r: Ref, i: int, op: str, nconsts: int, inputs: dict[str, Any]) -> None:
    where = f"node {i} ({op})"
    if r.kind == "node":
        if type(r.key) is not int or r.key < 0:
            raise ProtocolError(f"{where}: node reference {r.key!r} is not a node index")
        if r.key >= i:
            what = "itself" if r.key == i else f"node {r.key}, which comes later"
            raise ProtocolError(f"{where}: uses {what}; a graph has no cycles (use earlier nodes)")
    elif r.kind == "input" and r.key not in inputs:
        raise ProtocolError(f"{where}: input {r.key!r} was not given")
    elif r.kind == "const" and not (type(r.key) is int and 0 <= r.key < nconsts):
        raise ProtocolError(f"{where}: const {r.key!r} does not exist")


def _resolve(handler: Handler, session: Session | None, plan: Plan, consts: list[Any],
             inputs: dict[str, Any]) -> dict[Ref, Any]:
    """Native tensors for every const and input; checks handles, then (new plans) shapes."""
    values: dict[Ref, Any] = {}
    for kind, items in (("const", enumerate(consts)), ("input", inputs.items())):
        for key, value in items:
            values[Ref(kind, key)] = _native(handler, session, plan, Ref(kind, key), value)
    if not plan.checked:
        _check_nodes(handler, plan, values)
        plan.checked = True
        plan.compiled, plan.mode = _compile(handler, plan)
    return values


def _native(handler: Handler, session: Session | None, plan: Plan, ref: Ref, value: Any) -> Any:
    if not isinstance(value, HandleRef):
        return handler.backend.from_wire(value)
    try:
        if session is None:
            raise ProtocolError("resident tensors need a session (hello first)")
        return session.store.get(value)
    except TensorwireError as exc:
        raise _at(exc, _first_user(plan, ref)) from None


def _first_user(plan: Plan, ref: Ref) -> str:
    for i, (op, args, kwargs) in enumerate(plan.nodes):
        if ref in _refs((args, kwargs)):
            return f"node {i} ({op})"
    return f"{ref.kind} {ref.key!r} (unused)"


def _check_nodes(handler: Handler, plan: Plan, values: dict[Ref, Any]) -> None:
    """Op names, binding, dtypes (the registry's checks) and shapes, node by node."""
    known: dict[Ref, Any] = {r: _abstract(v) for r, v in values.items()}
    for i, (op, args, kwargs) in enumerate(plan.nodes):
        a, k = _substitute((args, kwargs), known)
        try:
            # The registry's own checks: unknown op, binding, dtype categories.
            handler.registry._prepare(op, handler.backend, a, k, _known_dtype)
            known[Ref("node", i)] = infer(op, a, k) or _UNKNOWN
        except (OpError, TensorwireError) as exc:
            raise _at(exc, f"node {i} ({op})") from None


class _Unknown:
    """A value known only when the graph runs (after a custom op): rules skip it."""

    def __repr__(self) -> str:
        return "<unknown until run>"


_UNKNOWN = _Unknown()


def _abstract(value: Any) -> Any:
    dtype = str(value.dtype).removeprefix("torch.")
    return Abstract(tuple(value.shape), dtype)


def _known_dtype(value: Any) -> bool:
    return isinstance(value, Abstract) and value.dtype is not None


def _substitute(value: Any, env: dict[Ref, Any]) -> Any:
    return tree_map(env.__getitem__, value, _is_ref)


def _is_ref(value: Any) -> bool:
    return type(value) is Ref


def _at(exc: BaseException, where: str) -> BaseException:
    """The same error, its message prefixed with where it happened."""
    named = type(exc).__new__(type(exc))
    named.__dict__.update(exc.__dict__)  # e.g. OpFailed.cause_type
    named.args = (f"{where}: {exc}",)
    return named


# -- running ------------------------------------------------------------------------------


def _execute(
    handler: Handler, plan: Plan, values: dict[Ref, Any], arena: Any = None
) -> list[Any]:
    """Run the steps; the outputs' kernels may write straight into the reply's arena."""
    if plan.compiled is not None:
        try:
            return list(plan.compiled(values))
        except Exception as exc:  # noqa: BLE001 - compiled path failed: eager names the node
            plan.compiled, plan.mode = None, f"eager: torch.compile failed ({type(exc).__name__})"
    registry, backend = handler.registry, handler.backend
    for i, op, args, kwargs, free in plan.steps:
        a, k = _substitute((args, kwargs), values)
        try:
            with outputs_into(arena if i in plan.outputs else None):
                values[Ref("node", i)] = registry.call_native(op, backend, a, k)
        except OpError as exc:
            raise _at(exc, f"node {i} ({op})") from None
        for j in free:
            values.pop(Ref("node", j), None)  # intermediates go as soon as nothing needs them
    return [values[Ref("node", i)] for i in plan.outputs]


def _reply(handler: Handler, session: Session | None, out: str, results: list[Any],
           wire: list[np.ndarray], arena: Any = None) -> list[Any]:
    backend = handler.backend
    if out == "local":
        with outputs_into(arena):  # device results are copied straight into the reply's arena
            return [tree_map(backend.to_wire, r, backend.is_tensor) for r in results]
    if session is None:
        raise ProtocolError("out='remote' needs a session (hello first)")
    store = session.store
    return [tree_map(lambda t: store.add(_owned(t, wire)), r, backend.is_tensor) for r in results]


def _owned(tensor: Any, wire: list[np.ndarray]) -> Any:
    """A result aliasing a request buffer (identity(x), a view) is copied before it is kept:
    request buffers are reused once the reply is sent."""
    if any(_shares(tensor, arr) for arr in wire):
        return tensor.copy() if isinstance(tensor, np.ndarray) else tensor.clone()
    return tensor


# -- compiling (optional) -----------------------------------------------------------------


def _mode(handler: Handler) -> str:
    if handler.backend.name != "torch":
        return f"eager: the {handler.backend.name} backend does not compile"
    if os.environ.get(COMPILE_ENV) != "1":
        return f"eager: torch.compile is off (set {COMPILE_ENV}=1)"
    return "eager: not compiled yet"


def _compile(handler: Handler, plan: Plan) -> tuple[Any, str]:
    """torch.compile the checked plan when enabled; else (None, why eager)."""
    if plan.mode != "eager: not compiled yet":
        return None, plan.mode
    try:
        import torch

        found = [handler.backend.kernels.get(op) for _, op, _, _, _ in plan.steps]
        kernels = [k for k in found if k is not None]
        if len(kernels) != len(found):
            return None, "eager: custom ops are not compiled"

        def run(values: dict[Ref, Any]) -> list[Any]:
            env = dict(values)
            for (i, _, args, kwargs, _), kernel in zip(plan.steps, kernels, strict=True):
                a, k = _substitute((args, kwargs), env)
                env[Ref("node", i)] = kernel(*a, **k)
            return [env[Ref("node", i)] for i in plan.outputs]

        return torch.compile(run, dynamic=False), "compiled: torch.compile"
    except Exception as exc:  # noqa: BLE001 - no compiler here: say so, run eagerly
        return None, f"eager: torch.compile unavailable ({type(exc).__name__})"
