"""Graphs: one request per run, results equal to eager calls, every bad graph refused before
anything runs (naming the node), and @gpu.function traced once per argument signature."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import tensorwire as tw
from tensorwire.client._graph import Node
from tensorwire.server import OpRegistry
from tensorwire.server._graph import MAX_NODES, plan_cache

pytestmark = pytest.mark.timeout(60)

BACKENDS = ["numpy", "torch"]


class Served:
    """An in-process server whose handler counts requests by kind and probe-op runs."""

    def __init__(self, backend: str) -> None:
        self.kinds: Counter[str] = Counter()
        self.probes = 0
        registry = OpRegistry()
        registry.register("probe", self._probe)
        registry.register("boom", _boom)
        self.server = tw.Server(backend=backend, device="cpu", registry=registry).start()
        handler = self.server._core.handler
        handle = handler.handle

        def counting(req: Any, session: Any, handles: int) -> Any:
            self.kinds[req.kind] += 1
            return handle(req, session, handles)

        handler.handle = counting  # type: ignore[method-assign]
        self.handler = handler

    def _probe(self, x: Any) -> Any:
        """Counts its runs: proves that nothing ran before an error."""
        self.probes += 1
        return x

    def client(self) -> tw.Client:
        return tw.Client(self.server.url)


def _boom(x: Any) -> Any:
    raise ValueError("exploded on purpose")


@pytest.fixture(params=BACKENDS)
def served(request: pytest.FixtureRequest) -> Iterator[Served]:
    if request.param == "torch":
        pytest.importorskip("torch")
    s = Served(request.param)
    try:
        yield s
    finally:
        s.server.stop()


@pytest.fixture
def gpu(served: Served) -> Iterator[tw.Client]:
    with served.client() as client:
        yield client


def _seed(rows: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, 64), dtype=np.float32)
    w = rng.standard_normal((64, 48), dtype=np.float32) / 8
    b = rng.standard_normal(48, dtype=np.float32)
    return x, w, b


# -- results and requests ------------------------------------------------------------------


def test_graph_equals_eager(served: Served, gpu: tw.Client) -> None:
    x, w, b = _seed()
    eager = gpu.gelu(gpu.add(gpu.matmul(x, w), b))
    eager_linear = gpu.linear(x, np.ascontiguousarray(w.T), b)
    with gpu.graph() as g:
        h = g.matmul(x, w) + b
        y = g.gelu(h)
        lin = g.linear(x, np.ascontiguousarray(w.T), b)
        z = -(x @ g.identity(w)) * 2.0 / 4.0 - 1.0
    got_y, got_h, got_lin, got_z = g.run(y, h, lin, z)
    np.testing.assert_array_equal(got_y, eager)
    np.testing.assert_array_equal(got_h, gpu.add(gpu.matmul(x, w), b))
    np.testing.assert_array_equal(got_lin, eager_linear)
    np.testing.assert_allclose(got_z, -(x @ w) * 2.0 / 4.0 - 1.0, rtol=1e-5, atol=1e-5)


def test_one_request_per_run_and_plan_cached(served: Served, gpu: tw.Client) -> None:
    x, w, b = _seed()
    with gpu.graph() as g:
        y = g.gelu(g.matmul(x, w) + b)
    served.kinds.clear()
    first = g.run(y)
    assert served.kinds == Counter(graph=1)
    assert g.last_plan == "miss"
    again = g.run(y)
    assert g.last_plan == "hit" and served.kinds == Counter(graph=2)
    np.testing.assert_array_equal(first, again)
    assert gpu.last_trace["compute"] > 0
    mode = g.last_mode
    assert isinstance(mode, str) and mode.startswith(("eager: ", "compiled: "))


def test_default_output_is_last_node_and_subsets(gpu: tw.Client) -> None:
    x, w, b = _seed()
    with gpu.graph() as g:
        h = g.matmul(x, w)
        h2 = g.add(h, b)
        g.relu(h2)
    np.testing.assert_array_equal(g.run(), np.maximum(gpu.add(gpu.matmul(x, w), b), 0))
    only_h = g.run(h)
    assert isinstance(only_h, np.ndarray)
    np.testing.assert_array_equal(only_h, gpu.matmul(x, w))
    pair = g.run(h2, h)
    assert isinstance(pair, tuple) and len(pair) == 2
    np.testing.assert_array_equal(pair[1], only_h)


def test_remote_outputs_and_handles_as_inputs(served: Served, gpu: tw.Client) -> None:
    x, w, b = _seed()
    wr, br = gpu.put(w), gpu.put(b, cache=True)
    with gpu.graph() as g:
        xin = g.input("x")
        h = g.matmul(xin, wr) + br
    remote = g.run(h, out="remote", x=x)
    assert isinstance(remote, tw.client._remote.RemoteTensor)
    assert remote.shape == (32, 48) and remote.dtype == "float32"
    np.testing.assert_array_equal(remote.fetch(), gpu.add(gpu.matmul(x, w), b))
    with gpu.graph() as g2:
        y = g2.gelu(g2.input("h"))
    served.kinds.clear()
    np.testing.assert_array_equal(g2.run(y, h=remote), gpu.gelu(remote.fetch()))
    assert served.kinds["graph"] == 1
    # A handle as the input, the same graph reused with another value.
    np.testing.assert_array_equal(g.run(h, x=gpu.put(x)), gpu.add(gpu.matmul(x, w), b))


def test_remote_output_never_aliases_the_request_buffer(gpu: tw.Client) -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    with gpu.graph() as g:
        g.reshape(g.input("x"), [4, 3])
    kept = g.run(out="remote", x=x)
    gpu.identity(np.full((3, 4), -1, np.float32))  # reuses the request buffers
    gpu.identity(np.full((64, 64), -1, np.float32))
    np.testing.assert_array_equal(kept.fetch(), x.reshape(4, 3))


def test_torch_in_torch_out() -> None:
    torch = pytest.importorskip("torch")
    with tw.Server(backend="torch", device="cpu") as srv, tw.Client(srv.url) as gpu:
        x, w = torch.randn(4, 8), torch.randn(8, 3)
        with gpu.graph() as g:
            y = g.relu(x @ g.input("w"))
        out = g.run(y, w=w)
        assert isinstance(out, torch.Tensor)
        torch.testing.assert_close(out, torch.relu(x @ w))


def test_each_local_array_is_sent_once_per_run(gpu: tw.Client) -> None:
    x = np.ones((16, 16), np.float32)
    with gpu.graph() as g:
        a = g.add(x, x)
        g.mul(a, x)
    g.run()
    assert len(gpu.last_trace["paths"]["request"]) == 1


def test_scalars_lists_and_keywords(gpu: tw.Client) -> None:
    parts = [np.ones((1, 3), np.float32), np.zeros((2, 3), np.float32)]
    with gpu.graph() as g:
        c = g.concat(parts, axis=0)
        s = g.sum(c, axis=[0], keepdims=True)
        t = g.softmax(g.reshape(c, [3, 3]), axis=-1)
    got_c, got_s, got_t = g.run(c, s, t)
    np.testing.assert_array_equal(got_c, np.concatenate(parts))
    np.testing.assert_array_equal(got_s, np.concatenate(parts).sum(0, keepdims=True))
    np.testing.assert_array_equal(got_t, gpu.softmax(np.concatenate(parts), axis=-1))


# -- bad graphs: refused before anything runs, naming the node ------------------------------


def _spec(nodes: list[Any], outputs: list[int] | None = None, **extra: Any) -> dict[str, Any]:
    return {"nodes": nodes, "outputs": outputs or [len(nodes) - 1], **extra}


def _probe_node(x: np.ndarray) -> list[Any]:
    return ["probe", [x], {}]


@pytest.mark.parametrize("ref", [1, 2], ids=["itself", "later"])
def test_cycle_is_refused_naming_the_node(served: Served, gpu: tw.Client, ref: int) -> None:
    x = np.ones(4, np.float32)
    nodes = [_probe_node(x), ["relu", [{"$node": ref}], {}], ["neg", [{"$node": 1}], {}]]
    with pytest.raises(tw.ProtocolError, match=r"node 1 \(relu\): uses .*no cycles"):
        gpu._request("graph", "", (_spec(nodes),), {})
    assert served.probes == 0


def test_unknown_op_fails_at_record_time(gpu: tw.Client) -> None:
    with gpu.graph() as g:
        g.relu(np.ones(3, np.float32))
        with pytest.raises(tw.RemoteError, match="node 1: unknown op 'gelux'; did you mean 'gelu'"):
            g.gelux(np.ones(3))


def test_unknown_op_in_a_sent_spec(served: Served, gpu: tw.Client) -> None:
    nodes = [_probe_node(np.ones(4, np.float32)), ["no_such_op", [{"$node": 0}], {}]]
    with pytest.raises(tw.RemoteError, match=r"node 1 \(no_such_op\): unknown op") as info:
        gpu._request("graph", "", (_spec(nodes),), {})
    assert info.value.remote_type == "UnknownOp"
    assert served.probes == 0


def test_mismatched_shapes_name_the_node(served: Served, gpu: tw.Client) -> None:
    # The probe runs first (it is an output) unless the whole graph is refused first.
    x = np.ones((4, 8), np.float32)
    with gpu.graph() as g:
        p = g.probe(x)
        bad = g.matmul(g.relu(x), np.ones((5, 2), np.float32))
    with pytest.raises(tw.RemoteError, match=r"node 2 \(matmul\): shapes \[4, 8\] and \[5, 2\]"):
        g.run(p, bad)
    with gpu.graph() as g2:
        p = g2.probe(x)
        bad = g2.add(g2.exp(x), np.ones((3,), np.float32))
    with pytest.raises(tw.RemoteError, match=r"node 2 \(add\)"):
        g2.run(p, bad)
    with gpu.graph() as g3:
        p = g3.probe(x)
        bad = g3.reshape(g3.transpose(x), [5, 5])
    with pytest.raises(tw.RemoteError, match=r"node 2 \(reshape\): cannot reshape"):
        g3.run(p, bad)
    assert served.probes == 0
    with gpu.graph() as good:
        good.probe(x)
    assert good.run().shape == (4, 8) and served.probes == 1  # the probe does count


def test_bad_arguments_and_dtypes_name_the_node(served: Served, gpu: tw.Client) -> None:
    x = np.ones((4, 8), np.float32)
    with gpu.graph() as g:
        p = g.probe(x)
        bad = g.gelu(g.probe(x), 3)
    with pytest.raises(tw.RemoteError, match=r"node 2 \(gelu\): op 'gelu' takes") as info:
        g.run(p, bad)
    assert info.value.remote_type == "OpArgumentError"
    with gpu.graph() as g2:
        p = g2.probe(x)
        bad = g2.gelu(np.ones(3, np.int32))
    with pytest.raises(tw.RemoteError, match=r"node 1 \(gelu\): .*floating"):
        g2.run(p, bad)
    assert served.probes == 0


@pytest.mark.parametrize("how", ["freed", "other session"])
def test_bad_handles_name_the_node(served: Served, gpu: tw.Client, how: str) -> None:
    w = np.ones((8, 2), np.float32)
    if how == "freed":
        handle = gpu.put(w)
        handle.free()
        keep = None
    else:
        other = served.client()
        handle = keep = other.put(w)
    try:
        with gpu.graph() as g:
            p = g.probe(np.ones((4, 8), np.float32))
            bad = g.matmul(p, handle)
        with pytest.raises(tw.RemoteError, match=r"node 1 \(matmul\): unknown tensor handle") as e:
            g.run(p, bad)
        assert e.value.remote_type == "UnknownHandle"
        assert served.probes == 0
    finally:
        if keep is not None:
            other.close()


def test_error_while_running_names_the_node(served: Served, gpu: tw.Client) -> None:
    with gpu.graph() as g:
        g.boom(g.relu(np.ones(3, np.float32)))
    with pytest.raises(tw.RemoteError, match=r"node 1 \(boom\): op 'boom' failed: ValueError"):
        g.run()


def test_malformed_specs(gpu: tw.Client) -> None:
    x = np.ones(3, np.float32)
    bad = [
        (_spec([["relu", [{"$node": 0, "x": 1}], {}]]), r"node 0 \(relu\): malformed reference"),
        (_spec([["relu", [{"$nod": 0}], {}]]), "malformed reference"),
        (_spec([["relu", [{"$input": 0}], {}]]), "malformed reference"),
        (_spec([["relu", [{"$input": "x"}], {}]]), r"node 0 \(relu\): input 'x' was not given"),
        (_spec([["relu", [{"$const": 3}], {}]]), "const 3 does not exist"),
        (_spec([["relu", [x], {}]], outputs=[1]), "output 1 is not a node index"),
        (_spec([]), "nodes must be a non-empty list"),
        (_spec([["relu", x, {}]]), r"node 0 must be \[op name, args list, kwargs map\]"),
        ({"nodes": [["relu", [x], {}]], "outputs": []}, "outputs must be a list of 1"),
        (_spec([["relu", [x], {}]], inputs={"x": 3}), "input 'x' must be"),
    ]
    for spec, message in bad:
        with pytest.raises(tw.ProtocolError, match=message):
            gpu._request("graph", "", (spec,), {})
    nodes = [["relu", [x], {}]] + [["relu", [{"$node": i}], {}] for i in range(MAX_NODES)]
    with pytest.raises(tw.ProtocolError, match=f"more than the limit of {MAX_NODES}"):
        gpu._request("graph", "", (_spec(nodes),), {})


def test_record_time_errors(gpu: tw.Client) -> None:
    x = np.ones(3, np.float32)
    with gpu.graph() as g, gpu.graph() as other:
        foreign = other.relu(x)
        with pytest.raises(ValueError, match="belongs to another graph"):
            g.add(foreign, x)
        with pytest.raises(ValueError, match=r"keys starting with '\$' are reserved"):
            g.call("relu", {"$node": 0})
        with pytest.raises(TypeError, match="out= belongs to run"):
            g.relu(x, out="remote")
        y = g.relu(x)
        with pytest.raises(ValueError, match="outputs must be nodes of this graph"):
            g.run(foreign)
        with pytest.raises(ValueError, match="missing \\['x'\\]"):
            g.add(y, g.input("x"))
            g.run()
        with pytest.raises(TypeError, match="no value until the graph runs"):
            bool(y)
    with pytest.raises(ValueError, match="empty"):
        gpu.graph().run()


def test_plan_cache_is_bounded(served: Served, gpu: tw.Client) -> None:
    cache = plan_cache(served.handler)
    cache.size = 2
    for n in (1, 2, 3, 4):
        with gpu.graph() as g:
            g.relu(np.ones(n, np.float32))
        g.run()
    assert len(cache) == 2


def test_intermediates_are_freed_after_their_last_use() -> None:
    from tensorwire.server._graph import Ref, _prepare

    nodes = [("relu", [Ref("const", 0)], {}), ("neg", [Ref("node", 0)], {}),
             ("add", [Ref("node", 1), Ref("node", 0)], {}), ("exp", [Ref("node", 2)], {}),
             ("log", [Ref("node", 0)], {})]  # node 4: no output needs it, it never runs
    handler = type("H", (), {"backend": type("B", (), {"name": "numpy"})()})()
    plan = _prepare(handler, nodes, [3, 1], [np.ones(1)], {})  # type: ignore[arg-type]
    assert [(i, free) for i, _, _, _, free in plan.steps] == [(0, []), (1, []), (2, [0]), (3, [2])]


# -- @gpu.function ---------------------------------------------------------------------------


def test_function_traced_once_per_signature(served: Served, gpu: tw.Client) -> None:
    x, w, b = _seed()

    @gpu.function
    def layer(x: Any, w: Any, b: Any, scale: float = 1.0) -> Any:
        return (x @ w + b) * scale

    served.kinds.clear()
    first = layer(x, w, b)
    np.testing.assert_array_equal(first, gpu.add(gpu.matmul(x, w), b))
    assert layer.traces == 1 and served.kinds["graph"] == 1
    np.testing.assert_array_equal(layer(x * 2, w, b), gpu.add(gpu.matmul(x * 2, w), b))
    assert layer.traces == 1 and served.kinds["graph"] == 2
    layer(x[:5], w, b)  # new shape: traced again
    assert layer.traces == 2
    layer(x, w, b, scale=2.0)  # new constant: traced again
    assert layer.traces == 3
    layer(*(a.astype(np.float64) for a in (x, w, b)))  # new dtypes
    assert layer.traces == 4
    layer(x, gpu.put(w), b)  # a handle instead of an array
    assert layer.traces == 5
    assert served.kinds["graph"] == 6


def test_function_returning_several_values_and_inputs(gpu: tw.Client) -> None:
    x = np.arange(6, dtype=np.float32)

    @gpu.function
    def pair(x: Any) -> Any:
        return x, -x

    same, neg = pair(x)
    np.testing.assert_array_equal(same, x)
    np.testing.assert_array_equal(neg, -x)

    @gpu.function
    def nothing(x: Any) -> Any:
        return 3

    with pytest.raises(TypeError, match="must return graph values"):
        nothing(x)


def test_client_ops_record_inside_graphs_and_functions(served: Served, gpu: tw.Client) -> None:
    if "recording" not in tw.Client.call.__code__.co_names:
        pytest.skip("Client.call has no graph-recording hook yet")
    x, w, b = _seed()

    @gpu.function
    def mlp(x: Any, w: Any, b: Any) -> Any:
        return gpu.gelu(gpu.linear(x, w, b))

    wt = np.ascontiguousarray(w.T)
    served.kinds.clear()
    np.testing.assert_array_equal(mlp(x, wt, b), gpu.gelu(gpu.linear(x, wt, b)))
    assert served.kinds["graph"] == 1
    with gpu.graph() as g:
        y = gpu.relu(g.identity(x))
    assert isinstance(y, Node) and y.graph is g
    np.testing.assert_array_equal(g.run(y), np.maximum(x, 0))
