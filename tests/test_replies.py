"""The reply cache behind exactly-once replies: bounded, acknowledged, large replies marked."""

from __future__ import annotations

import pytest

from tensorwire.server._replies import TOO_LARGE, ReplyCache


def test_kept_until_acknowledged():
    cache = ReplyCache()
    cache.put(1, [b"header", b"x" * 100])
    assert cache.get(1) == [b"header", b"x" * 100]
    cache.drop([1, 99, "junk"])  # unknown and malformed ids are ignored
    assert cache.get(1) is None and len(cache) == 0


def test_large_reply_keeps_only_a_marker():
    cache = ReplyCache(max_reply=1000)
    cache.put(7, [b"h", b"x" * 5000])
    assert cache.get(7) is TOO_LARGE


@pytest.mark.parametrize(("entries", "nbytes"), [(3, 10_000), (100, 2_500)])
def test_bounded_by_count_and_bytes(entries, nbytes):
    cache = ReplyCache(max_entries=entries, max_bytes=nbytes, max_reply=1000)
    for rid in range(10):
        cache.put(rid, [b"x" * 1000])
    assert len(cache) <= entries and len(cache) * 1000 <= nbytes
    assert cache.get(9) is not None and cache.get(0) is None  # the oldest go first
