"""The op table on every backend against float64/math references, plus registry behaviour."""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import ml_dtypes
import numpy as np
import pytest

from tensorwire.server.ops import (
    Backend,
    OpArgumentError,
    OpError,
    OpFailed,
    OpRegistry,
    UnknownOp,
    default_registry,
    make_backend,
    register_op,
)
from tensorwire.server.ops._erf import erf, erfc
from tensorwire.server.ops._table import OPS, OpRow, _check_row, check_kernels

BF16 = np.dtype(ml_dtypes.bfloat16)
FLOATS = ("float32", "float64", "float16", "bfloat16")
INTS = ("int32", "int64")
ALL = FLOATS + INTS + ("bool", "uint8", "complex64")
# (rtol, atol) by result dtype, after rounding the float64 reference to that dtype.
TOL = {"float64": (1e-12, 1e-12), "float32": (1e-5, 1e-5), "float16": (3e-3, 3e-3),
       "bfloat16": (2e-2, 2e-2)}  # fmt: skip
SQRT1_2 = math.sqrt(0.5)


# ---------------------------------------------------------------- reference helpers
@dataclass(frozen=True)
class Pos:  # a strictly positive tensor (log's domain)
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Wide:  # values in [-40, 40]: the tails of sigmoid/gelu/silu
    shape: tuple[int, ...]


def _math(fn: Callable[[float], float]) -> Callable[[np.ndarray], np.ndarray]:
    return lambda x: np.vectorize(fn, otypes=[np.float64])(x)


def _sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v)) if v >= 0 else math.exp(v) / (1 + math.exp(v))


def _softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _layer_norm(x, normalized_shape=None, weight=None, bias=None, eps=1e-5):  # type: ignore[no-untyped-def]
    k = 1 if normalized_shape is None else len(normalized_shape)
    axes = tuple(range(-k, 0))
    y = (x - x.mean(axes, keepdims=True)) / np.sqrt(x.var(axes, keepdims=True) + eps)
    return y * (1 if weight is None else weight) + (0 if bias is None else bias)


@dataclass(frozen=True)
class Case:
    op: str
    args: list[Any]  # shape tuples / Pos / Wide become tensors; anything else passes as is
    ref: Callable[..., Any]
    dtypes: tuple[str, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    out: str | None = None  # result dtype when it is not the first input's


# One row per op (plus variants); `ref` sees float64 copies of float inputs.
CASES = [
    Case("identity", [(3, 4)], lambda x: x, ALL),
    Case("add", [(3, 4), (4,)], np.add, FLOATS + INTS + ("complex64",)),
    Case("add", [(3, 4), 2], np.add, FLOATS + INTS),
    Case("sub", [(3, 4), (3, 1)], np.subtract, FLOATS + INTS),
    Case("mul", [(3, 4), (4,)], np.multiply, FLOATS + INTS + ("complex64",)),
    Case("div", [(3, 4), Pos((4,))], np.true_divide, FLOATS),
    Case("neg", [(3, 4)], np.negative, FLOATS + INTS),
    Case("tanh", [Wide((5, 8))], np.tanh, FLOATS),
    Case("exp", [(3, 4)], np.exp, FLOATS),
    Case("log", [Pos((3, 4))], np.log, FLOATS),
    Case("relu", [(3, 4)], lambda x: np.maximum(x, 0), FLOATS + INTS),
    Case("gelu", [Wide((5, 8))], _math(lambda v: 0.5 * v * math.erfc(-v * SQRT1_2)), FLOATS),
    Case("silu", [Wide((5, 8))], _math(lambda v: v * _sigmoid(v)), FLOATS),
    Case("sigmoid", [Wide((5, 8))], _math(_sigmoid), FLOATS),
    Case("softmax", [(3, 5)], _softmax, FLOATS),
    Case("softmax", [(3, 5)], _softmax, FLOATS, {"axis": 0}),
    Case("matmul", [(3, 4), (4, 5)], np.matmul, FLOATS + INTS),
    Case("matmul", [(2, 3, 4), (4, 5)], np.matmul, ("float32", "float64")),
    Case("linear", [(3, 4), (5, 4), (5,)], lambda x, w, b: x @ w.T + b, FLOATS + ("int64",)),
    Case("linear", [(2, 3, 4), (5, 4)], lambda x, w: x @ w.T, FLOATS),
    Case("layer_norm", [(3, 6)], _layer_norm, FLOATS),
    Case(
        "layer_norm", [(2, 3, 6)], _layer_norm, FLOATS, {"weight": (6,), "bias": (6,), "eps": 1e-3}
    ),
    Case("layer_norm", [(2, 3, 6), [3, 6], (3, 6)], _layer_norm, ("float32", "float64")),
    Case("sum", [(3, 4)], np.sum, FLOATS),
    Case("sum", [(3, 4)], np.sum, INTS, out="int64"),
    Case("sum", [(2, 3, 4)], np.sum, FLOATS, {"axis": [0, 2], "keepdims": True}),
    Case("mean", [(3, 4)], np.mean, FLOATS, {"axis": -1}),
    Case("mean", [(2, 3, 4)], np.mean, FLOATS, {"axis": 1, "keepdims": True}),
    Case("max", [(3, 4)], np.max, FLOATS + INTS),
    Case("max", [(2, 3, 4)], np.max, FLOATS + INTS, {"axis": [0, 1]}),
    Case("transpose", [(2, 3, 4)], np.transpose, ALL),
    Case("transpose", [(2, 3, 4)], np.transpose, ALL, {"axes": [1, 0, 2]}),
    Case("permute", [(2, 3, 4), [2, 0, 1]], np.transpose, ALL),
    Case("reshape", [(3, 4), [2, -1, 3]], np.reshape, ALL),
    Case("cast", [(3, 4), "bfloat16"], lambda x, d: x, FLOATS, out="bfloat16"),
    Case("cast", [(3, 4), "float16"], lambda x, d: x, FLOATS + INTS, out="float16"),
    Case("cast", [(3, 4), "int32"], lambda x, d: x.astype(np.int32), FLOATS, out="int32"),
    Case("cast", [(3, 4), "float64"], lambda x, d: x, FLOATS + INTS, out="float64"),
    Case("concat", [[(2, 3), (4, 3)]], np.concatenate, ALL),
    Case("concat", [[(3, 2), (3, 1)]], np.concatenate, ALL, {"axis": 1}),
]
CASE_PARAMS = [
    pytest.param(case, dtype, id=f"{case.op}{i}-{dtype}")
    for i, case in enumerate(CASES)
    for dtype in case.dtypes
]


def _tensor(spec: Any, dtype: str, rng: np.random.Generator) -> np.ndarray:
    shape = spec.shape if isinstance(spec, Pos | Wide) else spec
    if dtype == "bool":
        return rng.integers(0, 2, shape) > 0
    if dtype in INTS or dtype == "uint8":
        low = 0 if dtype == "uint8" or isinstance(spec, Pos) else -5
        return rng.integers(low, 6, shape).astype(dtype)
    if isinstance(spec, Pos):
        values = rng.uniform(0.1, 4.0, shape)
    elif isinstance(spec, Wide):
        values = np.concatenate([rng.uniform(-40, 40, shape).ravel()[:-2], [-40.0, 40.0]])
    else:
        values = rng.standard_normal(shape) + (
            1j * rng.standard_normal(shape) if "complex" in dtype else 0
        )
    return np.asarray(values).reshape(shape).astype(dtype)


def _build(spec: Any, dtype: str, rng: np.random.Generator) -> Any:
    if isinstance(spec, tuple | Pos | Wide):
        return _tensor(spec, dtype, rng)
    if isinstance(spec, list) and spec and isinstance(spec[0], tuple):
        return [_tensor(s, dtype, rng) for s in spec]
    return spec


def _as_ref(value: Any) -> Any:
    """float inputs -> float64 for the reference; lists -> tuples (numpy's axis lists)."""
    if isinstance(value, list):
        return tuple(_as_ref(v) for v in value)
    if isinstance(value, np.ndarray) and (value.dtype.kind == "f" or value.dtype == BF16):
        return value.astype(np.float64)
    return value


def assert_matches(got: np.ndarray, want: Any, out: str) -> None:
    assert isinstance(got, np.ndarray), type(got)
    assert got.dtype == np.dtype(BF16 if out == "bfloat16" else out)
    assert got.flags.c_contiguous or got.flags.f_contiguous
    want = np.asarray(want)
    assert got.shape == want.shape
    if out in TOL:
        rtol, atol = TOL[out]
        want = want.astype(got.dtype).astype(np.float64)  # overflow/rounding as the dtype does
        np.testing.assert_allclose(got.astype(np.float64), want, rtol=rtol, atol=atol)
    elif "complex" in out:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    else:
        np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------- fixtures
def _torch_cpu() -> Backend:
    pytest.importorskip("torch")
    return make_backend("torch", "cpu")


@pytest.fixture(params=["numpy", "torch"])
def backend(request: pytest.FixtureRequest) -> Backend:
    return make_backend("numpy") if request.param == "numpy" else _torch_cpu()


@pytest.fixture
def registry() -> OpRegistry:
    return OpRegistry()


def _cuda_backend() -> Backend:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available")
    return make_backend("torch", "cuda")


def run_case(registry: OpRegistry, backend: Backend, case: Case, dtype: str) -> None:
    rng = np.random.default_rng(abs(hash((case.op, dtype))) % 2**32)
    args = [_build(a, dtype, rng) for a in case.args]
    kwargs = {k: _build(v, dtype, rng) for k, v in case.kwargs.items()}
    want = case.ref(*map(_as_ref, args), **{k: _as_ref(v) for k, v in kwargs.items()})
    got = registry.call(case.op, backend, args, kwargs)
    assert_matches(got, want, case.out or dtype)


# ---------------------------------------------------------------- the op table
@pytest.mark.parametrize(("case", "dtype"), CASE_PARAMS)
def test_op_matches_reference(
    registry: OpRegistry, backend: Backend, case: Case, dtype: str
) -> None:
    run_case(registry, backend, case, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize(("case", "dtype"), CASE_PARAMS)
def test_op_matches_reference_on_cuda(registry: OpRegistry, case: Case, dtype: str) -> None:
    run_case(registry, _cuda_backend(), case, dtype)


def test_every_table_row_has_a_test_case_and_a_listing(registry: OpRegistry) -> None:
    assert {c.op for c in CASES} == {row.name for row in OPS}
    listed = {d["name"]: d for d in registry.list()}
    assert set(listed) == {row.name for row in OPS}
    for row in OPS:
        assert listed[row.name] == {
            "name": row.name,
            "signature": row.signature,
            "doc": row.doc,
            "category": row.category,
        }
        assert row.doc and row.signature.startswith(row.name + "(")


def test_results_never_alias_a_mutated_input(registry: OpRegistry, backend: Backend) -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    before = x.copy()
    for op in ("relu", "neg", "exp", "softmax", "layer_norm", "sum"):
        registry.call(op, backend, [x], {})
    np.testing.assert_array_equal(x, before)


# ---------------------------------------------------------------- erf / gelu accuracy
def test_erf_and_erfc_match_math_to_1e_14() -> None:
    x = np.concatenate([np.linspace(-30, 30, 60001), np.geomspace(1e-300, 27, 2000)])
    x = np.concatenate([x, -x, [0.0, -0.0]])
    want_erf = np.array([math.erf(v) for v in x])
    want_erfc = np.array([math.erfc(v) for v in x])
    np.testing.assert_allclose(erf(x), want_erf, rtol=1e-14, atol=0)
    normal = want_erfc > 1e-300  # below that, subnormals hold too few digits for a ratio
    np.testing.assert_allclose(erfc(x)[normal], want_erfc[normal], rtol=1e-14, atol=0)
    assert np.all(np.abs(erfc(x)[~normal]) < 1e-300)


def test_erf_special_values() -> None:
    got = erf(np.array([np.inf, -np.inf, np.nan, 0.0]))
    np.testing.assert_array_equal(got[[0, 1, 3]], [1.0, -1.0, 0.0])
    assert np.isnan(got[2]) and np.isnan(erfc(np.array([np.nan]))[0])
    np.testing.assert_array_equal(erfc(np.array([np.inf, -np.inf])), [0.0, 2.0])


def test_numpy_gelu_is_exact_in_the_left_tail(registry: OpRegistry) -> None:
    x = np.array([-30.0, -12.0, -5.0, -1e-3, 0.5, 7.0])
    got = registry.call("gelu", make_backend("numpy"), [x], {})
    want = [0.5 * v * math.erfc(-v * SQRT1_2) for v in x]
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=0)


# ---------------------------------------------------------------- bad requests
def test_unknown_op_names_close_matches(registry: OpRegistry, backend: Backend) -> None:
    with pytest.raises(UnknownOp, match=r"unknown op 'matmull'; did you mean 'matmul'") as info:
        registry.call("matmull", backend, [], {})
    assert isinstance(info.value, KeyError) and isinstance(info.value, OpError)
    assert not str(info.value).startswith('"')  # reads as text, not as a KeyError repr


@pytest.mark.parametrize(
    ("op", "args", "kwargs", "match"),
    [
        ("add", [1, 2, 3], {}, r"op 'add' takes \(a, b\); got 3 positional arguments"),
        ("add", [1], {}, r"missing a required argument: 'b'"),
        ("softmax", [1], {"dim": 0}, r"keywords \['dim'\].*unexpected keyword"),
        ("exp", [np.ones(3, np.int32)], {}, r"op 'exp' takes floating tensors .*got int32"),
        ("add", [np.ones(2, bool), np.ones(2, bool)], {}, r"numeric tensors.*got bool"),
        ("cast", [np.ones(3), "float8"], {}, r"op 'cast': unknown dtype 'float8'; known: bool"),
        ("sum", [np.ones(3)], {"axis": "0"}, r"op 'sum': axis must be an int, got str"),
        ("reshape", [np.ones(3), [1.5]], {}, r"shape must be an int, got float"),
        ("layer_norm", [np.ones((2, 3)), [2]], {}, r"normalized_shape \[2\] does not match"),
        ("concat", [np.ones(3)], {}, r"tensors must be a non-empty list"),
    ],
)
def test_bad_arguments_raise_op_argument_error(
    registry: OpRegistry, backend: Backend, op: str, args: list[Any], kwargs: dict[str, Any],
    match: str,
) -> None:  # fmt: skip
    with pytest.raises(OpArgumentError, match=match) as info:
        registry.call(op, backend, args, kwargs)
    assert isinstance(info.value, TypeError)


@pytest.mark.parametrize(
    ("op", "args"),
    [
        ("add", [np.ones((2, 3)), np.ones((4,))]),
        ("matmul", [np.ones((2, 3)), np.ones((4, 5))]),
        ("linear", [np.ones((2, 3)), np.ones((5, 4))]),
        ("reshape", [np.ones(6), [4, 2]]),
        ("permute", [np.ones((2, 3)), [0, 0]]),
        ("concat", [[np.ones((2, 3)), np.ones((2, 4))]]),
        ("max", [np.ones((0,))]),
    ],
)
def test_shape_errors_raise_op_failed(
    registry: OpRegistry, backend: Backend, op: str, args: list[Any]
) -> None:
    with pytest.raises(OpFailed, match=rf"op '{op}' failed: \w+: ") as info:
        registry.call(op, backend, args, {})
    assert info.value.cause_type in ("ValueError", "RuntimeError", "IndexError", "AxisError")
    assert info.value.__cause__ is not None


def test_memory_errors_are_not_wrapped(registry: OpRegistry, backend: Backend) -> None:
    def hog(x: Any) -> Any:
        raise MemoryError("out of memory")

    registry.register("hog", hog)
    with pytest.raises(MemoryError):
        registry.call("hog", backend, [np.ones(2)], {})


# ---------------------------------------------------------------- custom ops
def test_custom_op_gets_native_tensors_and_returns_wire_arrays(
    registry: OpRegistry, backend: Backend
) -> None:
    seen: list[Any] = []

    def scale_and_stats(x: Any, factor: float = 2.0) -> Any:
        """Scale x; also report its sum."""
        seen.append(x)
        return {"y": x * factor, "parts": (x.sum(), [x[:1]]), "n": 3}

    registry.register("scale_and_stats", scale_and_stats)
    out = registry.call("scale_and_stats", backend, [np.arange(4.0)], {"factor": 3.0})
    assert backend.is_tensor(seen[0])
    np.testing.assert_array_equal(out["y"], [0.0, 3.0, 6.0, 9.0])
    assert isinstance(out["parts"], tuple) and out["parts"][0].shape == ()
    assert float(out["parts"][0]) == 6.0 and isinstance(out["parts"][1][0], np.ndarray)
    assert out["n"] == 3
    listed = registry.list()[-1]
    assert listed == {
        "name": "scale_and_stats", "signature": "scale_and_stats(x, factor=2.0)",
        "doc": "Scale x; also report its sum.", "category": "custom",
    }  # fmt: skip
    with pytest.raises(OpArgumentError, match=r"takes \(x, factor=2.0\); got 0 positional"):
        registry.call("scale_and_stats", backend, [], {})


def test_register_op_adds_to_the_default_registry(backend: Backend) -> None:
    @register_op("test_ops.double", signature="double(x)", doc="2 * x")
    def double(x: Any) -> Any:
        return x + x

    try:
        reg = default_registry()
        assert "test_ops.double" in reg
        assert reg.list()[-1]["signature"] == "double(x)"
        got = reg.call("test_ops.double", backend, [np.ones(3, np.float32)], {})
        np.testing.assert_array_equal(got, np.full(3, 2, np.float32))
        assert got.dtype == np.float32
    finally:
        default_registry().unregister("test_ops.double")
    assert "test_ops.double" not in default_registry()


def test_registration_conflicts(registry: OpRegistry) -> None:
    with pytest.raises(ValueError, match="'add' is a built-in op"):
        registry.register("add", lambda a, b: a, replace=True)
    registry.register("mine", lambda x: x)
    with pytest.raises(ValueError, match="already registered"):
        registry.register("mine", lambda x: x)
    registry.register("mine", lambda x, y: y, replace=True)
    assert registry.list()[-1]["signature"] == "mine(x, y)"
    with pytest.raises(ValueError, match="built-in"):
        registry.unregister("add")
    with pytest.raises(UnknownOp):
        registry.unregister("nope")
    assert OpRegistry(builtins=False).list() == []


def test_custom_op_exception_is_op_failed(registry: OpRegistry, backend: Backend) -> None:
    def broken(x: Any) -> Any:
        raise ZeroDivisionError("boom")

    registry.register("broken", broken)
    with pytest.raises(OpFailed, match="op 'broken' failed: ZeroDivisionError: boom"):
        registry.call("broken", backend, [np.ones(1)], {})


def test_call_native_keeps_native_tensors(registry: OpRegistry, backend: Backend) -> None:
    x = backend.from_wire(np.arange(6.0).reshape(2, 3))
    y = registry.call_native("matmul", backend, [x, registry.call_native(
        "transpose", backend, [x], {})], {})  # fmt: skip
    assert backend.is_tensor(y)
    np.testing.assert_allclose(backend.to_wire(y), [[5.0, 14.0], [14.0, 50.0]])
    with pytest.raises(OpArgumentError, match="got int64"):
        registry.call_native("exp", backend, [backend.from_wire(np.ones(2, np.int64))], {})


# ---------------------------------------------------------------- backends
def test_make_backend_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="unknown backend 'jax'; known: auto, numpy, torch"):
        make_backend("jax")
    with pytest.raises(ValueError, match="unknown device 'tpu'; known: auto, cpu, cuda, cuda:N"):
        make_backend("numpy", "tpu")
    with pytest.raises(ValueError, match="numpy backend runs on the CPU only"):
        make_backend("numpy", "cuda")
    numpy_backend = make_backend("numpy", "auto")
    assert (numpy_backend.name, numpy_backend.device) == ("numpy", "cpu")


def test_torch_backend_devices() -> None:
    torch = pytest.importorskip("torch")
    assert make_backend().name == "torch"  # auto prefers torch when importable
    assert make_backend("torch", "cpu").device == "cpu"
    if torch.cuda.is_available():
        assert make_backend("torch", "auto").device.startswith("cuda:")
        with pytest.raises(ValueError, match="CUDA device"):
            make_backend("torch", f"cuda:{torch.cuda.device_count()}")
    else:
        assert make_backend("torch", "auto").device == "cpu"
        with pytest.raises(ValueError, match="CUDA is not available"):
            make_backend("torch", "cuda:0")


@pytest.mark.parametrize("dtype", ALL)
def test_wire_round_trip_is_bit_exact(backend: Backend, dtype: str) -> None:
    arr = _tensor((3, 5), dtype, np.random.default_rng(0))
    arr.flags.writeable = False  # as received: the torch backend must copy, not warn
    back = backend.to_wire(backend.from_wire(arr))
    assert back.dtype == arr.dtype and back.shape == arr.shape
    assert back.tobytes() == arr.tobytes()


def test_from_wire_is_zero_copy_for_writable_arrays(backend: Backend) -> None:
    arr = np.arange(6, dtype=np.float32)
    native = backend.from_wire(arr)
    arr[0] = 42.0
    assert float(backend.to_wire(native)[0]) == 42.0


def test_odd_layouts_in_and_out(backend: Backend) -> None:
    arr = np.arange(24, dtype=np.float32).reshape(2, 3, 4)[:, ::-1, ::2]  # negative strides
    back = backend.to_wire(backend.from_wire(arr))
    np.testing.assert_array_equal(back, arr)
    permuted = backend.to_wire(backend.from_wire(arr.transpose(2, 0, 1)))
    assert permuted.flags.c_contiguous or permuted.flags.f_contiguous
    scalar = make_backend("numpy").to_wire(np.float32(1.5))
    assert scalar.shape == () and scalar.dtype == np.float32


@pytest.mark.gpu
def test_cuda_round_trip_and_synchronize() -> None:
    cuda = _cuda_backend()
    arr = np.arange(12, dtype=BF16).reshape(3, 4)
    native = cuda.from_wire(arr)
    assert str(native.device).startswith("cuda")
    cuda.synchronize()
    assert cuda.to_wire(native.T).tobytes() == np.ascontiguousarray(arr.T).tobytes()


def test_numpy_backend_works_without_torch() -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"  # any `import torch` now fails
        "import numpy as np\n"
        "from tensorwire.server.ops import OpRegistry, make_backend\n"
        "b = make_backend()\n"
        "assert b.name == 'numpy', b\n"
        "print(OpRegistry().call('gelu', b, [np.ones(2, np.float32)], {}).dtype)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=50
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "float32"


# ---------------------------------------------------------------- table checks
def test_table_rows_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown category 'maths'"):
        _check_row(OpRow("x", "maths", "any", "x(a)", "doc"))
    with pytest.raises(ValueError, match="unknown dtype category 'reals'"):
        _check_row(OpRow("x", "elementwise", "reals", "x(a)", "doc"))
    with pytest.raises(ValueError, match="does not name the op"):
        _check_row(OpRow("x", "elementwise", "any", "y(a)", "doc"))


def test_backend_kernels_are_checked_against_the_table() -> None:
    kernels = dict(make_backend("numpy").kernels)
    assert check_kernels("numpy", kernels) == kernels
    with pytest.raises(ValueError, match=r"missing \['add'\]"):
        check_kernels("fake", {k: v for k, v in kernels.items() if k != "add"})
    with pytest.raises(ValueError, match=r"not in the table \['extra'\]"):
        check_kernels("fake", {**kernels, "extra": lambda x: x})
    with pytest.raises(ValueError, match=r"kernel softmax\(x, dim=-1\) differs"):
        check_kernels("fake", {**kernels, "softmax": lambda x, dim=-1: x})


@pytest.fixture(autouse=True)
def _no_leftover_custom_ops() -> Iterator[None]:
    before = [d["name"] for d in default_registry().list()]
    yield
    assert [d["name"] for d in default_registry().list()] == before
