"""BufferPool: recycled cast buffers come back only when nothing refers to them any more."""

from __future__ import annotations

import gc
import threading

import ml_dtypes
import numpy as np
import pytest

from tensorwire.codec import BufferPool, from_wire, to_wire

MB = 1 << 20


def test_a_block_returns_when_its_last_view_dies():
    pool = BufferPool()
    a = pool.empty((MB // 4,), np.float32)
    view = a[10:].reshape(-1, 2).T
    del a
    assert pool.idle_bytes == 0  # the view still uses the block
    del view
    assert pool.idle_bytes == MB
    b = pool.empty((MB // 4,), np.float32)
    assert (pool.reused, pool.allocated, pool.idle_bytes) == (1, 1, 0)
    del b


def test_blocks_are_matched_by_exact_size_and_order_is_honoured():
    pool = BufferPool()
    pool.empty((MB,), np.uint8)  # dropped at once: idle
    f = pool.empty((1024, 1024), ml_dtypes.bfloat16, order="F")  # 2 MB: a new block
    assert f.flags.f_contiguous and f.dtype == ml_dtypes.bfloat16
    assert (pool.reused, pool.allocated) == (0, 2)
    c = pool.empty((512, 512), np.float32)  # 1 MB: the idle block
    assert c.flags.c_contiguous and pool.reused == 1


def test_small_buffers_are_not_pooled_and_idle_bytes_are_capped():
    pool = BufferPool(max_idle_bytes=3 * MB)
    small = pool.empty((100,), np.float32)
    assert small.base is None and pool.allocated == 0
    for _ in range(2):
        pool.empty((2 * MB,), np.uint8)  # each dropped at once
    assert pool.idle_bytes <= 3 * MB
    big = pool.empty((4 * MB,), np.uint8)
    del big
    assert pool.idle_bytes == 2 * MB  # larger than the cap: never kept


def test_other_holders_keep_the_block_in_use():
    zmq = pytest.importorskip("zmq")
    pool = BufferPool()
    frame = zmq.Frame(pool.empty((MB,), np.uint8))  # as a zero-copy send holds it
    mv = memoryview(pool.empty((MB,), np.uint8))
    assert pool.idle_bytes == 0
    del frame, mv
    gc.collect()
    assert pool.idle_bytes == 2 * MB


def test_clear_drops_idle_blocks_and_later_returns():
    pool = BufferPool()
    kept = pool.empty((MB,), np.uint8)
    pool.empty((MB,), np.uint8)
    pool.clear()
    del kept
    assert pool.idle_bytes == 0


def test_casts_write_into_the_pool():
    pool = BufferPool()
    x = np.random.default_rng(0).standard_normal(MB, dtype=np.float32)
    for _ in range(3):
        narrow, original = to_wire(x, "bfloat16", pool=pool)
        wide = from_wire(narrow, original, pool=pool)
        np.testing.assert_array_equal(wide, x.astype(ml_dtypes.bfloat16).astype(np.float32))
        del narrow, wide
    assert pool.allocated == 2 and pool.reused == 4


def test_threads_taking_and_returning_blocks():
    pool = BufferPool(max_idle_bytes=8 * MB)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(200):
                a = pool.empty((MB,), np.uint8)
                a[:] = 7
                assert int(a[-1]) == 7
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert pool.allocated <= 8 and pool.idle_bytes <= 8 * MB
