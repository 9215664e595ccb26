"""Wire precision casts (codec._precision), the `tensorwire precision` report, its benchmark."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from fractions import Fraction
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tensorwire.codec import (
    WIRE_DTYPES_ALLOWED,
    Exact,
    _native,
    _precision,
    cast_bounds,
    cast_error_bound,
    choose,
    exact,
    from_wire,
    to_wire,
    unit_roundoff,
    unwrap,
    validate_wire_dtype,
)
from tensorwire.errors import ProtocolError

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parent.parent
BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
WIRE_NP = {"bfloat16": BF16, "float16": F16}
BACKENDS = ["torch", "numpy"] if _precision.torch_available() else ["numpy"]
if _native.available():
    BACKENDS.append("native")  # bfloat16 only; float16 falls through to the others
needs_torch = pytest.mark.skipif(not _precision.torch_available(), reason="torch not installed")


def f32(*bits: int) -> np.ndarray:
    return np.array(bits, dtype=np.uint32).view(np.float32)


def bits16(a: np.ndarray) -> list[int]:
    return [int(v) for v in np.ascontiguousarray(a).view(np.uint16).ravel()]


# ---------------------------------------------------------------------------------------------
# exact rounding on hand-picked bit patterns

# float32 bits -> bfloat16 bits under round-to-nearest-even
BF16_CASES = {
    0x3F800000: 0x3F80,  # 1.0 exact
    0x3F808000: 0x3F80,  # 1 + 2^-8: tie between 0x3F80 (even) and 0x3F81 -> even, down
    0x3F818000: 0x3F82,  # tie between 0x3F81 and 0x3F82 (even) -> up
    0x3F808001: 0x3F81,  # just above the tie -> up
    0x3F807FFF: 0x3F80,  # just below the tie -> down
    0xBF808000: 0xBF80,  # negative tie -> even
    0xBF818000: 0xBF82,
    0x7F7F7FFF: 0x7F7F,  # below the top tie: largest finite bfloat16
    0x7F7F8000: 0x7F80,  # tie between 0x7F7F (odd) and Inf (even) -> Inf
    0x7F7FFFFF: 0x7F80,  # float32 max -> Inf
    0xFF7FFFFF: 0xFF80,  # -float32 max -> -Inf
    0x7F800000: 0x7F80,  # +Inf
    0xFF800000: 0xFF80,  # -Inf
    0x80000000: 0x8000,  # -0.0 keeps its sign
    0x00008000: 0x0000,  # subnormal tie between 0 (even) and the smallest subnormal
    0x00018000: 0x0002,  # subnormal tie between 1 and 2 -> 2
    0x00008001: 0x0001,  # just above -> smallest subnormal
    0x00800000: 0x0080,  # smallest normal float32 -> smallest normal bfloat16
}


@pytest.mark.parametrize("backend", BACKENDS)
def test_bfloat16_round_to_nearest_even_bit_patterns(backend: str) -> None:
    src = f32(*BF16_CASES)
    out, original = to_wire(src, "bfloat16", backend=backend)
    assert original == "float32" and out.dtype == BF16
    assert bits16(out) == list(BF16_CASES.values())


@pytest.mark.parametrize("backend", BACKENDS)
def test_bfloat16_nan_stays_nan(backend: str) -> None:
    src = f32(0x7FC00000, 0xFFC00000, 0x7F800001, 0x7FFFFFFF)  # quiet, negative, signalling
    out, _ = to_wire(src, "bfloat16", backend=backend)
    assert np.isnan(out.astype(np.float32)).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_float16_round_to_nearest_even_and_overflow(backend: str) -> None:
    src = np.array(
        [
            1 + 2**-11,  # tie -> 1.0 (even)
            1 + 3 * 2**-11,  # tie between 1+2^-10 (odd) and 1+2^-9 (even) -> up
            65504.0,  # largest finite
            65519.99,  # below the tie -> 65504
            65520.0,  # tie between 65504 (odd) and Inf -> Inf: overflow
            -70000.0,  # -> -Inf
            2**-25,  # tie between 0 and the smallest subnormal -> 0
            3 * 2**-25,  # tie between 1 and 2 subnormal steps -> 2
        ],
        dtype=np.float32,
    )
    out, original = to_wire(src, "float16", backend=backend)
    assert original == "float32" and out.dtype == F16
    expect = [1.0, 1 + 2**-9, 65504.0, 65504.0, np.inf, -np.inf, 0.0, 2**-23]
    assert out.astype(np.float64).tolist() == expect


# ---------------------------------------------------------------------------------------------
# torch and the numpy/ml_dtypes fallback agree bit for bit

float32_bits = hnp.arrays(np.uint32, st.integers(1, 300), elements=st.integers(0, 2**32 - 1))


def _same_bits_or_both_nan(a: np.ndarray, b: np.ndarray) -> None:
    na, nb = np.isnan(a.astype(np.float32)), np.isnan(b.astype(np.float32))
    assert np.array_equal(na, nb)
    assert np.array_equal(a.view(np.uint16)[~na], b.view(np.uint16)[~nb])


@needs_torch
@settings(max_examples=200, deadline=None)
@given(float32_bits, st.sampled_from(WIRE_DTYPES_ALLOWED))
def test_torch_and_numpy_casts_bit_identical(bits: np.ndarray, wire: str) -> None:
    x = bits.view(np.float32)
    t, _ = to_wire(x, wire, backend="torch")
    n, _ = to_wire(x, wire, backend="numpy")
    _same_bits_or_both_nan(t, n)
    # and the plain library casts agree with ours on float32 (no double rounding there)
    with np.errstate(over="ignore", invalid="ignore"):
        _same_bits_or_both_nan(n, x.astype(WIRE_NP[wire]))
    # back: exact widening on both paths
    for arr in (t, n):
        ro = arr.copy()
        ro.flags.writeable = False
        a = from_wire(ro, "float32", backend="torch")
        b = from_wire(ro, "float32", backend="numpy")
        nan = np.isnan(a)
        assert np.array_equal(nan, np.isnan(b))  # NaN stays NaN; payloads may differ
        assert np.array_equal(a.view(np.uint32)[~nan], b.view(np.uint32)[~nan])


def _reference_rne(x: float, wire: str) -> int:
    """Correctly rounded float64 -> wire bits, by exact rational arithmetic."""
    dt = WIRE_NP[wire]
    guess = int(np.array([x]).astype(np.float32).astype(dt).view(np.uint16)[0])
    best: tuple[Fraction, int, int] | None = None
    for cand in (guess - 1, guess, guess + 1):
        if not 0 <= cand <= 0xFFFF:
            continue
        val = float(np.array([cand], dtype=np.uint16).view(dt).astype(np.float64)[0])
        if not np.isfinite(val) or (val != 0 and np.sign(val) != np.sign(x)):
            continue
        key = (abs(Fraction(val) - Fraction(x)), cand & 1, cand)
        if best is None or key < best:
            best = key
    assert best is not None
    return best[2]


@settings(max_examples=300, deadline=None)
@given(
    st.floats(min_value=-3.0e38, max_value=3.0e38, allow_nan=False, width=64),
    st.sampled_from(WIRE_DTYPES_ALLOWED),
)
def test_float64_is_rounded_once(x: float, wire: str) -> None:
    if wire == "float16" and abs(x) > 65000:
        x = x / 1e34
    arr = np.array([x], dtype=np.float64)
    for backend in BACKENDS:
        out, original = to_wire(arr, wire, backend=backend)
        assert original == "float64"
        assert bits16(out) == [_reference_rne(x, wire)]


def test_float64_double_rounding_case() -> None:
    # 1 + 2^-8 + 2^-40 rounds to float32 1 + 2^-8 (a bfloat16 tie -> 1.0); once: 1 + 2^-7.
    x = np.array([1 + 2**-8 + 2**-40, -(1 + 2**-8 + 2**-40), 1 + 2**-8 - 2**-40])
    for backend in BACKENDS:
        out, _ = to_wire(x, "bfloat16", backend=backend)
        assert out.astype(np.float64).tolist() == [1 + 2**-7, -(1 + 2**-7), 1.0]


# ---------------------------------------------------------------------------------------------
# special values, untouched values, layouts


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("wire", WIRE_DTYPES_ALLOWED)
@pytest.mark.parametrize("src_dtype", [np.float32, np.float64])
def test_nan_inf_survive_the_round_trip(backend: str, wire: str, src_dtype: type) -> None:
    x = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, 1.5, -np.nan], dtype=src_dtype)
    cast, original = to_wire(x, wire, backend=backend)
    back = from_wire(cast, original, backend=backend)
    assert back.dtype == src_dtype
    assert np.isnan(back[[0, 6]]).all()
    assert back[1] == np.inf and back[2] == -np.inf
    assert np.signbit(back[3]) and not np.signbit(back[4])
    assert back[5] == 1.5


def test_overflow_becomes_inf_as_documented() -> None:
    b16 = cast_bounds("float16")
    below = np.nextafter(np.float32(b16["overflow_threshold"]), np.float32(0))
    x = np.array([b16["overflow_threshold"], below, -1e6, 1e30], dtype=np.float32)
    out, _ = to_wire(x, "float16")
    assert out.astype(np.float64).tolist() == [np.inf, 65504.0, -np.inf, np.inf]
    bb = cast_bounds("bfloat16")
    x = np.array([bb["overflow_threshold"], 3.39e38, 1e300, -1e300], dtype=np.float64)
    out, _ = to_wire(x, "bfloat16")
    vals = out.astype(np.float64).tolist()
    assert vals[0] == np.inf and vals[1] == bb["max_finite"] and vals[2:] == [np.inf, -np.inf]


@pytest.mark.parametrize(
    "arr",
    [
        np.arange(10, dtype=np.int32),
        np.arange(10, dtype=np.uint8),
        np.arange(10, dtype=np.int64),
        np.array([True, False]),
        np.ones(3, dtype=np.complex64),
        np.ones(3, dtype=np.float16),
        np.ones(3, dtype=BF16),
    ],
    ids=str,
)
@pytest.mark.parametrize("wire", WIRE_DTYPES_ALLOWED)
def test_never_cast_dtypes_untouched(arr: np.ndarray, wire: str) -> None:
    out, original = to_wire(arr, wire)
    assert out is arr and original is None


def test_exact_is_untouched_and_unwrapped() -> None:
    x = np.linspace(0, 1, 7, dtype=np.float32)
    marked = exact(x)
    assert isinstance(marked, Exact) and exact(marked) is marked
    out, original = to_wire(marked, "bfloat16")
    assert out is x and original is None
    value, was_exact = unwrap(marked)
    assert value is x and was_exact
    value, was_exact = unwrap(x)
    assert value is x and not was_exact
    assert to_wire(x, None) == (x, None)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("wire", WIRE_DTYPES_ALLOWED)
def test_layouts_non_contiguous_0d_empty(backend: str, wire: str) -> None:
    rng = np.random.default_rng(1)
    base = rng.standard_normal((200, 300)).astype(np.float32)
    dt = WIRE_NP[wire]
    cases = {
        "strided": base[:, ::3],
        "reversed": base[::-1],
        "fortran": np.asfortranarray(base),
        "transposed": base.T,
        "0-d": np.array(np.float32(3.3)),
        "empty": np.zeros((0, 4), dtype=np.float32),
        "big-endian": base.astype(">f4"),
        "read-only": np.frombuffer(base.tobytes(), dtype=np.float32).reshape(base.shape),
    }
    for name, x in cases.items():
        out, original = to_wire(x, wire, backend=backend)
        assert original == "float32", name
        assert out.shape == x.shape and out.dtype == dt, name
        assert out.flags.c_contiguous or out.flags.f_contiguous, name
        expect = x.astype(np.float32).astype(dt)
        assert np.array_equal(out.view(np.uint16), expect.view(np.uint16)), name
        back = from_wire(out, original, backend=backend)
        assert back.shape == x.shape and back.dtype == np.float32, name
    fortran, _ = to_wire(cases["fortran"], wire, backend=backend)
    assert fortran.flags.f_contiguous


@pytest.mark.parametrize("backend", BACKENDS)
def test_read_only_frames_cast_back_without_warnings(backend: str) -> None:
    x = np.random.default_rng(2).standard_normal(1 << 16).astype(np.float32)
    for wire in WIRE_DTYPES_ALLOWED:
        cast, original = to_wire(x, wire)
        frame = bytes(cast.view(np.uint8))
        received = np.frombuffer(frame, dtype=cast.dtype)
        assert not received.flags.writeable
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            back = from_wire(received, original, backend=backend)
            back64 = from_wire(received, "float64", backend=backend)
        assert np.array_equal(back, cast.astype(np.float32))
        assert np.array_equal(back64, cast.astype(np.float64))
        assert frame == bytes(cast.view(np.uint8))  # never written


@pytest.mark.parametrize("backend", BACKENDS)
def test_out_buffers(backend: str) -> None:
    x = np.random.default_rng(3).standard_normal((128, 96)).astype(np.float32)
    for wire, dt in WIRE_NP.items():
        buf = np.empty(x.shape, dtype=dt)
        res, original = to_wire(x, wire, backend=backend, out=buf)
        assert res is buf and np.array_equal(buf, x.astype(dt))
        back = np.empty(x.shape, dtype=np.float32)
        assert from_wire(buf, original, backend=backend, out=back) is back
        assert np.array_equal(back, buf.astype(np.float32))
        with pytest.raises(ValueError, match="out must be"):
            to_wire(x, wire, backend=backend, out=np.empty((3,), dtype=dt))
        with pytest.raises(ValueError, match="out must be"):
            to_wire(x, wire, backend=backend, out=np.empty(x.shape, dtype=np.float32))


def test_without_torch_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_precision, "_torch", lambda: None)
    x = np.random.default_rng(4).standard_normal(1 << 16).astype(np.float32)
    for wire, dt in WIRE_NP.items():
        out, original = to_wire(x, wire)
        assert np.array_equal(out, x.astype(dt))
        assert np.array_equal(from_wire(out, original), out.astype(np.float32))
        with pytest.raises(ValueError, match="torch is not installed"):
            to_wire(x, wire, backend="torch")


# ---------------------------------------------------------------------------------------------
# bounds


def test_unit_roundoff_and_bounds() -> None:
    assert unit_roundoff("bfloat16") == 2**-8
    assert unit_roundoff("float16") == 2**-11
    f16 = cast_bounds("float16")
    assert f16["max_finite"] == 65504.0 and f16["overflow_threshold"] == 65520.0
    assert f16["min_normal"] == pytest.approx(6.1035e-5, rel=1e-4)
    assert f16["min_subnormal"] == 2**-24
    bf = cast_bounds("bfloat16")
    assert bf["max_finite"] == float(ml_dtypes.finfo(BF16).max)
    assert bf["min_normal"] == 2**-126
    with pytest.raises(ValueError, match="bfloat16, float16"):
        unit_roundoff("float32")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("wire", WIRE_DTYPES_ALLOWED)
def test_error_within_theoretical_bound_on_random_data(backend: str, wire: str) -> None:
    rng = np.random.default_rng(5)
    normal = rng.standard_normal(200_000).astype(np.float32)
    top = 60000.0 if wire == "float16" else 1e38
    wide = rng.uniform(-1, 1, 200_000) * np.exp(rng.uniform(-100, np.log(top), 200_000))
    for x in (normal, wide.astype(np.float32), wide):
        cast, original = to_wire(x, wire, backend=backend)
        back = from_wire(cast, original, backend=backend)
        err = np.abs(back.astype(np.float64) - x.astype(np.float64))
        assert np.all(err <= cast_error_bound(x, wire))
        u = unit_roundoff(wire)
        nz = np.abs(x) >= cast_bounds(wire)["min_normal"]
        assert (err[nz] / np.abs(x[nz].astype(np.float64))).max() <= u


# ---------------------------------------------------------------------------------------------
# policy


def test_choose_rules() -> None:
    mb = 1 << 20
    assert choose("auto", transport_path="tcp", nbytes=mb) == "bfloat16"
    assert choose("auto", transport_path="tcp", nbytes=100 * mb) == "bfloat16"
    assert choose("auto", transport_path="tcp", nbytes=mb - 1) is None
    for path in ("shm", "ipc", "inproc"):
        assert choose("auto", transport_path=path, nbytes=100 * mb) is None
        assert choose("auto", transport_path=path, nbytes=10) is None
    for wire in (None, "bfloat16", "float16"):
        for path in ("tcp", "shm", "ipc"):
            assert choose(wire, transport_path=path, nbytes=10) == wire
    with pytest.raises(ValueError, match="allowed"):
        choose("fp8", transport_path="tcp", nbytes=mb)


@pytest.mark.parametrize("bad", ["float32", "bf16", "BFLOAT16", "", 16, b"bfloat16", True])
def test_bad_wire_dtype(bad: object) -> None:
    with pytest.raises(ValueError, match="'bfloat16', 'float16', 'auto'"):
        validate_wire_dtype(bad)
    with pytest.raises(ValueError):
        to_wire(np.ones(3, dtype=np.float32), bad)  # type: ignore[arg-type]


def test_valid_wire_dtypes_and_auto_needs_choose() -> None:
    for ok in (None, "bfloat16", "float16", "auto"):
        assert validate_wire_dtype(ok) == ok
    with pytest.raises(ValueError, match="choose"):
        to_wire(np.ones(3, dtype=np.float32), "auto")
    with pytest.raises(ValueError, match="backend"):
        to_wire(np.ones(3, dtype=np.float32), "bfloat16", backend="cupy")


def test_from_wire_rejects_bad_peer_values() -> None:
    cast, _ = to_wire(np.ones(4, dtype=np.float32), "bfloat16")
    for original in ("int32", "float16", "complex64", 7, None):
        with pytest.raises(ProtocolError, match="float32 and float64"):
            from_wire(cast, original)  # type: ignore[arg-type]
    with pytest.raises(ProtocolError, match="bfloat16 or float16"):
        from_wire(np.ones(4, dtype=np.float32), "float32")


# ---------------------------------------------------------------------------------------------
# the report and the benchmark


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    return env


@pytest.mark.timeout(120)
def test_cli_precision_json(tmp_path: Path) -> None:
    out = tmp_path / "prec.json"
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-m", "tensorwire", "precision", "--size", "1000",
         "--json", str(out)],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=110,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "max abs err" in proc.stdout and "gelu(linear)" in proc.stdout
    report = json.loads(out.read_text())
    assert {"config", "machine", "bounds", "formulas", "data", "seed_workload"} <= set(report)
    assert set(report["bounds"]) == set(WIRE_DTYPES_ALLOWED)
    (stats,) = report["data"].values()
    for wire in WIRE_DTYPES_ALLOWED:
        s = stats[wire]
        keys = {"max_abs_error", "max_rel_error", "median_rel_error", "rel_error_bound"}
        keys |= {"max_ulp_error", "mean_ulp_error", "overflow_to_inf", "within_bound"}
        assert keys <= set(s)
        assert s["within_bound"] and s["max_ulp_error"] <= 0.5
        assert s["max_rel_error"] <= s["rel_error_bound"] == unit_roundoff(wire)
        ops = report["seed_workload"][wire]
        assert set(ops) == {"linear", "gelu(linear)", "gelu(linear), result cast too"}
        for op in ops.values():
            assert op["within_bound"] and op["max_abs_error"] <= op["bound_max_abs"]
            assert 0 < op["max_error_over_bound"] <= 1


@pytest.mark.timeout(60)
def test_cli_precision_on_npy_files(tmp_path: Path) -> None:
    data = tmp_path / "x.npy"
    np.save(data, np.array([1.0, 1e5, np.nan, np.inf, 1e-9], dtype=np.float32))
    ints = tmp_path / "i.npy"
    np.save(ints, np.arange(5))
    out = tmp_path / "p.json"
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-m", "tensorwire", "precision", "--data", str(data),
         str(ints), "--workload-rows", "0", "--json", str(out)],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=50,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    s = report["data"][str(data)]
    assert s["float16"]["overflow_to_inf"] == 1 and s["bfloat16"]["overflow_to_inf"] == 0
    assert s["float16"]["nan_preserved"] and s["float16"]["inf_preserved"]
    assert str(ints) in report["skipped"]
    assert report["seed_workload"] == {}


@pytest.mark.timeout(120)
def test_benchmark_quick(tmp_path: Path) -> None:
    out = tmp_path / "b.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "precision.py"), "--quick", "--sizes", "1MB",
         "--transports", "tcp", "--json", str(out)],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=110,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    size = report["sizes"]["1 MB"]
    assert {"casts", "wire", "verdict"} <= set(size)
    assert {"tcp float32 bytes", "tcp half bytes"} == set(size["wire"])
    for v in size["verdict"].values():
        assert v["float32_round_trip_s"] > 0 and v["speedup"] > 0
