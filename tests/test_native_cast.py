"""The native float32 <-> bfloat16/float16 kernel (codec/_fastcast.c via codec._native): bit
for bit the reference rounding on every instruction set this CPU has, at every alignment and
split, and only ever handed arrays it can take."""

from __future__ import annotations

import os
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from conftest import child_env, run_in_threads
from tensorwire.codec import _native, from_wire, to_wire

BF16 = np.dtype(ml_dtypes.bfloat16)
built = _native.available()
needs_kernel = pytest.mark.skipif(not built, reason="the native cast kernel was not built")
# every instruction set this CPU runs, up to the one the kernel picks by itself
ISAS = list(_native.ISAS[: _native.ISAS.index(_native.best_isa() or "scalar") + 1]) if built else []


def test_kernel_built_where_required() -> None:
    """`make test` sets TENSORWIRE_REQUIRE_NATIVE=1: there a missing build is a failure,
    not a silent fallback to the slower casts."""
    if os.environ.get("TENSORWIRE_REQUIRE_NATIVE") != "1":
        pytest.skip("TENSORWIRE_REQUIRE_NATIVE is not set")
    assert built, "codec/_fastcast.c was not compiled by the install"
    assert _native.best_isa() in _native.ISAS


def reference_narrow(x: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even in integers, NaN to a quiet NaN of the same sign: uint16 bits."""
    b = x.view(np.uint32).astype(np.uint64)
    rounded = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)
    nan = (b & 0x7FFFFFFF) > 0x7F800000
    return np.where(nan, ((b >> 16) | 0x40).astype(np.uint16), rounded)


def structured_floats() -> np.ndarray:
    """Every bfloat16 high half with the low halves that decide rounding: zero, just above,
    just below the tie, the tie, just above it, all ones. Covers every exponent (subnormals,
    Inf, NaN with payloads, both signs) and every tie."""
    hi = np.arange(1 << 16, dtype=np.uint32) << 16
    lows = np.array([0, 1, 0x7FFF, 0x8000, 0x8001, 0xFFFF], dtype=np.uint32)
    return (hi[:, None] | lows[None, :]).ravel().view(np.float32)


@needs_kernel
@pytest.mark.parametrize("isa", ISAS)
def test_narrow_matches_reference_bit_for_bit(isa: str) -> None:
    x = structured_floats()
    out = np.empty(x.size, BF16)
    assert _native.cast(x, out, isa=isa)
    got, want = out.view(np.uint16), reference_narrow(x)
    assert np.array_equal(got, want)
    # the reference itself agrees with ml_dtypes on every non-NaN value
    finite_or_inf = ~np.isnan(x)
    assert np.array_equal(got[finite_or_inf], x[finite_or_inf].astype(BF16).view(np.uint16))
    assert np.isnan(out.astype(np.float32)[~finite_or_inf]).all()


def structured_floats_f16() -> np.ndarray:
    """Every float32 pattern down to float16's rounding bit (bit 13), with the low bits that
    decide rounding: every exponent float16 has or overflows to or underflows from, every
    tie, NaN payloads, both signs."""
    hi = np.arange(1 << 19, dtype=np.uint32) << 13
    lows = np.array([0, 1, 0xFFF, 0x1000, 0x1001, 0x1FFF], dtype=np.uint32)
    return (hi[:, None] | lows[None, :]).ravel().view(np.float32)


def same_or_both_nan(got: np.ndarray, want: np.ndarray) -> bool:
    nan = np.isnan(want.astype(np.float32))
    bits = {2: np.uint16, 4: np.uint32}[want.dtype.itemsize]
    return bool(np.array_equal(np.isnan(got.astype(np.float32)), nan)) and bool(
        np.array_equal(got.view(bits)[~nan], want.view(bits)[~nan]))


@needs_kernel
@pytest.mark.parametrize("isa", ISAS)
def test_float16_narrow_and_widen_match_numpy(isa: str) -> None:
    """numpy's float32 <-> float16 is IEEE round-to-nearest-even (subnormals, overflow to
    Inf at 65520): the kernel gives the same bits, NaN for NaN."""
    x = structured_floats_f16()
    out = np.empty(x.size, np.float16)
    assert _native.cast(x, out, isa=isa)
    with np.errstate(over="ignore", invalid="ignore"):
        assert same_or_both_nan(out, x.astype(np.float16))
    nan = np.isnan(x)
    assert np.array_equal(np.signbit(out[nan]), np.signbit(x[nan]))  # NaN keeps its sign
    h = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    back = np.empty(h.size, np.float32)
    assert _native.cast(h, back, isa=isa)
    assert same_or_both_nan(back, h.astype(np.float32))


@needs_kernel
@pytest.mark.parametrize("isa", ISAS)
def test_widen_is_exact_for_all_65536_values(isa: str) -> None:
    h = np.arange(1 << 16, dtype=np.uint16).view(BF16)
    out = np.empty(h.size, np.float32)
    assert _native.cast(h, out, isa=isa)
    assert np.array_equal(out.view(np.uint32), h.view(np.uint16).astype(np.uint32) << 16)


@needs_kernel
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("threads", [1, 2, 3, 7, 64])
@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 31, 33, 1000, 4099])
def test_sizes_splits_and_misaligned_outputs(isa: str, threads: int, n: int) -> None:
    """Every head/body/tail combination: outputs 2 bytes off a cache line, odd sizes, more
    threads than elements (64 is clamped to the kernel's 16)."""
    rng = np.random.default_rng(n * 31 + threads)
    x = (rng.standard_normal(n) * 1e3).astype(np.float32)
    for fmt in (BF16, np.dtype(np.float16)):
        for offset in (0, 1, 3):  # in elements of the output
            out16 = np.zeros(n + offset, fmt)[offset:]
            assert _native.cast(x, out16, isa=isa, threads=threads)
            want = reference_narrow(x) if fmt == BF16 else x.astype(fmt).view(np.uint16)
            assert np.array_equal(out16.view(np.uint16), want)
            out32 = np.zeros(n + offset, np.float32)[offset:]
            assert _native.cast(out16, out32, isa=isa, threads=threads, stream=offset == 1)
            assert np.array_equal(out32, out16.astype(np.float32))


@needs_kernel
def test_layouts_read_only_and_refusals() -> None:
    x = np.arange(24, dtype=np.float32).reshape(4, 6) / 7
    fortran = np.asfortranarray(x)
    out = np.empty((4, 6), BF16, order="F")
    assert _native.cast(fortran, out)
    assert np.array_equal(out, fortran.astype(BF16))

    ro = x.astype(BF16)
    ro.flags.writeable = False  # a received frame: read, never written
    back = np.empty((4, 6), np.float32)
    assert _native.cast(ro, back)
    assert np.array_equal(back, ro.astype(np.float32))

    # pairs the kernel does not take: left untouched, the caller casts another way
    c_out = np.zeros((4, 6), BF16)
    assert not _native.cast(fortran, c_out)  # mixed orders
    assert not _native.cast(x[:, ::2], np.zeros((4, 3), BF16))  # strided
    assert not _native.cast(x, np.zeros((4, 6), np.float64))  # not a wire format
    assert not _native.cast(x.astype(np.float16), np.zeros((4, 6), BF16))  # 16 to 16 bits
    assert not _native.cast(x.astype(np.float64), c_out)  # float64: rounded to odd first
    assert not _native.cast(x, np.zeros(23, BF16))  # sizes differ
    frozen = np.zeros((4, 6), BF16)
    frozen.flags.writeable = False
    assert not _native.cast(x, frozen)
    odd = np.zeros(49, np.uint8)[1:].view(BF16).reshape(4, 6)  # not element-aligned
    assert not odd.flags.aligned and not _native.cast(x, odd)
    assert not c_out.view(np.uint16).any()

    with pytest.raises(ValueError, match="unknown instruction set"):
        _native.cast(x, c_out, isa="sse9")


@needs_kernel
def test_to_wire_uses_it_and_agrees_with_ml_dtypes() -> None:
    """backend="native" through the public casts, float64 included (rounded to odd, then
    through the kernel), and "auto" above NATIVE_MIN_BYTES."""
    rng = np.random.default_rng(5)
    x64 = rng.standard_normal(5000) * 1e-3
    narrow, original = to_wire(x64, "bfloat16", backend="native")
    assert original == "float64"
    ref, _ = to_wire(x64, "bfloat16", backend="ml_dtypes")
    assert np.array_equal(narrow.view(np.uint16), ref.view(np.uint16))
    back = from_wire(narrow, "float32", backend="native")
    assert np.array_equal(back, narrow.astype(np.float32))

    big = rng.standard_normal(_native.NATIVE_MIN_BYTES // 4 + 3).astype(np.float32)
    big[:4] = [np.nan, -np.inf, np.inf, -0.0]
    auto, _ = to_wire(big, "bfloat16")
    assert np.array_equal(auto.view(np.uint16), reference_narrow(big))
    wide = from_wire(auto, "float32")
    assert np.isnan(wide[0]) and wide[1] == -np.inf and wide[2] == np.inf
    assert np.signbit(wide[3]) and wide[3] == 0

    huge = np.resize(big, _native.PARALLEL_MIN_BYTES // 4 + 5)  # on the kernel's threads
    split, _ = to_wire(huge, "bfloat16")
    assert np.array_equal(split.view(np.uint16), reference_narrow(huge))
    assert np.array_equal(from_wire(split, "float32").view(np.uint32),
                          split.view(np.uint16).astype(np.uint32) << 16)


@needs_kernel
@pytest.mark.timeout(60)
def test_pooled_threads_serve_concurrent_callers_exactly() -> None:
    """Casts on the kernel's pooled threads from four Python threads at once: one has the
    pool, the others start threads of their own; every result exact, every time."""
    rng = np.random.default_rng(11)
    xs = [(rng.standard_normal(50_000 + 77 * i) * 1e3).astype(np.float32) for i in range(4)]
    wants = [reference_narrow(x) for x in xs]

    def work(i: int) -> None:
        for _ in range(200):
            out = np.empty(xs[i].size, BF16)
            assert _native.cast(xs[i], out, threads=4)
            assert np.array_equal(out.view(np.uint16), wants[i])
            back = np.empty(xs[i].size, np.float32)
            assert _native.cast(out, back, threads=3)
            assert np.array_equal(back, out.astype(np.float32))

    assert run_in_threads(work, 4, timeout=50) == []


@needs_kernel
def test_a_forked_child_casts_on_threads_of_its_own() -> None:
    """The pool's threads do not exist in a child made by fork: the child must not wait for
    them (a hang fails the test by its timeout), and its casts stay exact."""
    code = (
        "import os, numpy as np, ml_dtypes\n"
        "from tensorwire.codec import _native\n"
        "x = np.linspace(-9, 9, 100_003, dtype=np.float32)\n"
        "want = x.astype(ml_dtypes.bfloat16)\n"
        "def check():\n"
        "    out = np.empty(x.size, ml_dtypes.bfloat16)\n"
        "    assert _native.cast(x, out, threads=4)\n"
        "    assert np.array_equal(out.view(np.uint16), want.view(np.uint16))\n"
        "check()  # the parent's pool now has its threads\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    code = 1\n"
        "    try:\n"
        "        check(); check()\n"
        "        code = 0\n"
        "    finally:  # an AssertionError is printed on the way out\n"
        "        os._exit(code)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "check()\n"
        "print('child exit', os.waitstatus_to_exitcode(status))\n"
    )
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c", code], env=child_env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "child exit 0" in proc.stdout


def test_environment_switch_turns_it_off() -> None:
    """TENSORWIRE_NATIVE_CAST=0: the kernel is never loaded and the casts still work."""
    code = (
        "import numpy as np\n"
        "from tensorwire.codec import _native, to_wire, from_wire\n"
        "x = np.linspace(-3, 3, 1001, dtype=np.float32)\n"
        "n, o = to_wire(x, 'bfloat16', backend='native')\n"
        "assert not _native.available() and _native.best_isa() is None\n"
        "assert np.array_equal(from_wire(n, o), x.astype('bfloat16').astype(np.float32))\n"
        "print('ok')\n"
    )
    env = child_env(**{_native.DISABLE_ENV: "0"})
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@needs_kernel
@settings(max_examples=200, deadline=None)
@given(
    data=st.data(),
    n=st.integers(0, 300),
    step=st.sampled_from([1, 1, 2, -1]),
    offset=st.integers(0, 3),
    fortran=st.booleans(),
)
def test_any_pair_is_cast_exactly_or_refused_untouched(data, n, step, offset, fortran) -> None:
    """The kernel trusts its pointers; `cast` must hand it only pairs it can take. Whatever
    the layout (strided, reversed, offset, 2-D in either order), a pair is either cast bit
    for bit or refused with the output unchanged."""

    def laid_out(flat: np.ndarray) -> np.ndarray:
        a = flat[offset:][::step]
        if a.size % 2 == 0 and a.flags.c_contiguous:
            a = a.reshape(2, a.size // 2)
            if fortran:
                a = np.asfortranarray(a)
        return a

    f32 = laid_out(data.draw(hnp.arrays(np.uint32, n + offset)).view(np.float32))
    u16 = laid_out(data.draw(hnp.arrays(np.uint16, n + offset)))
    pairs = [
        (f32, np.full(f32.shape, 7, np.uint16).view(BF16),
         lambda out: np.array_equal(out.view(np.uint16),
                                    reference_narrow(f32.ravel()).reshape(f32.shape))),
        (u16.view(BF16), np.full(u16.shape, 7.0, np.float32),
         lambda out: np.array_equal(out.view(np.uint32), u16.astype(np.uint32) << 16)),
        (f32, np.full(f32.shape, 7, np.float16),
         lambda out: same_or_both_nan(out, f32.astype(np.float16))),
        (u16.view(np.float16), np.full(u16.shape, 7.0, np.float32),
         lambda out: same_or_both_nan(out, u16.view(np.float16).astype(np.float32))),
    ]
    for src, out, exact in pairs:
        before = out.copy()
        if _native.cast(src, out):
            with np.errstate(over="ignore", invalid="ignore"):  # numpy's own float16 casts
                assert exact(out)
        else:
            assert np.array_equal(out.view(np.uint8), before.view(np.uint8))


def test_casts_take_threads_earlier_on_machines_with_many_cpus(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for cpus, start in ((2, _native.PARALLEL_MIN_BYTES),
                        (16, _native.PARALLEL_MIN_BYTES_MANY_CPUS)):
        monkeypatch.setattr(_native, "_cpus", lambda cpus=cpus: cpus)
        _native.parallel_min_bytes.cache_clear()
        assert _native.parallel_min_bytes() == start
        assert _native._threads_for(start) == min(_native.MAX_THREADS, cpus)
        assert _native._threads_for(start - 1) == 1
    monkeypatch.undo()
    _native.parallel_min_bytes.cache_clear()
