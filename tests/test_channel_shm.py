"""Shared-memory channel: segments across real processes, name validation, the allocator."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tensorwire.channel as ch
from conftest import child_env
from tensorwire.channel import (
    ALIGNMENT,
    Arena,
    ChannelError,
    Doorbell,
    Segment,
    SegmentRefused,
    ShmFullError,
    sweep_stale,
)
from tensorwire.errors import TensorwireError, TransportError

SHM = "/dev/shm"
_spawned: set[int] = {os.getpid()}


def _ours() -> set[str]:
    """tensorwire- entries in /dev/shm made by this process or its children (other test
    runs on the machine may be creating their own concurrently)."""
    names = set()
    for name in os.listdir(SHM):
        parts = name.split("-")
        if name.startswith(ch.DEFAULT_PREFIX) and len(parts) == 3 and parts[1].isdigit():
            if int(parts[1]) in _spawned:
                names.add(name)
    return names


@pytest.fixture(autouse=True)
def no_leftover_segments() -> Iterator[None]:
    before = _ours()
    yield
    leaked = _ours() - before
    for name in leaked:  # clean up first so one failure does not cascade
        os.unlink(os.path.join(SHM, name))
    assert not leaked, f"test left segments in {SHM}: {sorted(leaked)}"


def run_child(code: str, *args: str, wrapper: list[str] | None = None) -> tuple[int, str, str]:
    """Run ``code`` in a fresh interpreter with warnings as errors; returns rc, out, err."""
    env = child_env()
    cmd = [*(wrapper or []), sys.executable, "-W", "error", "-c", textwrap.dedent(code), *args]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _spawned.add(proc.pid)
    out, err = proc.communicate(timeout=30)
    return proc.returncode, out, err


# --- segments across processes ------------------------------------------------------------


def test_attach_in_child_sees_data_and_never_unlinks() -> None:
    with Segment.create(1 << 20) as seg:
        seg.ndarray(0, 1000, np.float32)[:] = np.arange(1000, dtype=np.float32)
        rc, out, err = run_child(
            """
            import sys, numpy as np
            from tensorwire.channel import Segment
            seg = Segment.attach(sys.argv[1], int(sys.argv[2]))
            assert (seg.ndarray(0, 1000, np.float32) == np.arange(1000)).all()
            seg.ndarray(4096, 8, np.int64)[:] = 7   # seen by the creator
            seg.close()
            print("ok")
            """,
            seg.name,
            str(seg.size),
        )
        assert (rc, out.strip(), err) == (0, "ok", "")  # no resource-tracker warning either
        assert os.path.exists(os.path.join(SHM, seg.name)), "attacher's exit removed it"
        assert (seg.ndarray(4096, 8, np.int64) == 7).all()
    assert not os.path.exists(os.path.join(SHM, seg.name)), "creator's close must unlink"


def test_child_attacher_exit_without_close_keeps_segment() -> None:
    with Segment.create(4096) as seg:
        rc, _, err = run_child(
            "import sys; from tensorwire.channel import Segment\n"
            "s = Segment.attach(sys.argv[1], 4096); s.buf[0] = 42\n",
            seg.name,
        )
        assert (rc, err) == (0, "")
        assert os.path.exists(os.path.join(SHM, seg.name))
        assert seg.buf[0] == 42


def test_creator_exit_unlinks_but_its_forked_child_does_not() -> None:
    rc, out, err = run_child(
        """
        import os, sys
        from tensorwire.channel import Segment
        seg = Segment.create(4096)
        pid = os.fork()
        if pid == 0:
            sys.exit(0)          # runs atexit finalizers in the child
        os.waitpid(pid, 0)
        print(seg.name, os.path.exists("/dev/shm/" + seg.name))
        # exits without close(): the creator's finalizer unlinks
        """
    )
    assert rc == 0, err
    name, exists_after_fork_child = out.split()
    assert exists_after_fork_child == "True"
    assert not os.path.exists(os.path.join(SHM, name))


def test_dropped_creator_unlinks_when_collected() -> None:
    seg = Segment.create(4096)
    arr = seg.ndarray(0, 4, np.int32)
    path = os.path.join(SHM, seg.name)
    del seg
    assert not os.path.exists(path)
    arr[:] = 5  # the mapping lives on with its views
    assert arr.sum() == 20


def test_in_process_attacher_close_only_unmaps() -> None:
    with Segment.create(8192) as seg:
        other = Segment.attach(seg.name, 8192)
        other.buf[:5] = b"hello"
        other.close()
        assert other.closed and not other.is_creator
        assert os.path.exists(os.path.join(SHM, seg.name))
        assert bytes(seg.buf[:5]) == b"hello"


def test_created_file_is_private_and_name_unguessable() -> None:
    with Segment.create(4096) as seg, Segment.create(4096) as seg2:
        st_ = os.stat(os.path.join(SHM, seg.name))
        assert stat.S_IMODE(st_.st_mode) == 0o600
        assert st_.st_size == 4096
        prefix, pid, token = seg.name.split("-")
        assert (prefix + "-", int(pid), len(token)) == (ch.DEFAULT_PREFIX, os.getpid(), 24)
        assert seg.name != seg2.name


def test_close_with_live_views_is_deferred_not_an_error() -> None:
    seg = Segment.create(4096)
    arr = seg.ndarray(0, (4, 4), np.float64)
    part = seg.buf[100:110]
    via_buf = np.frombuffer(seg.buf, np.uint8)
    arr[:] = 1.5
    seg.close()
    seg.close()  # idempotent
    assert seg.closed and not os.path.exists(os.path.join(SHM, seg.name))
    assert arr.sum() == 24.0 and len(part) == 10 and via_buf[0] == 0  # still mapped
    with pytest.raises(ChannelError, match="closed"):
        _ = seg.buf
    with pytest.raises(ChannelError, match="closed"):
        seg.ndarray(0, 1, np.uint8)


def test_ndarray_bounds_and_bad_sizes() -> None:
    with Segment.create(1024) as seg:
        assert seg.ndarray(1016, 2, np.float32).shape == (2,)
        for offset, n in [(1020, 2), (-4, 1), (0, 257)]:
            with pytest.raises(ChannelError, match="exceeds segment of 1024 bytes"):
                seg.ndarray(offset, n, np.float32)
    with pytest.raises(ValueError):
        Segment.create(0)
    with pytest.raises(ValueError, match="prefix"):
        Segment.create(64, prefix="../evil-")


# --- refusing what the other side claims ------------------------------------------------------

HEX24 = "0123456789abcdef01234567"


@pytest.mark.parametrize(
    "name",
    [
        "../../etc/passwd",
        "tensorwire-1-../../etc/passwd",
        f"/dev/shm/tensorwire-1-{HEX24}",
        f"tensorwire-1-{HEX24}/..",
        f"other-1-{HEX24}",
        f"tensorwire-1-{HEX24[:-1]}",
        f"tensorwire-1-{HEX24.upper()}",
        f"tensorwire--{HEX24}",
        f"tensorwire-1-{HEX24}\x00",
        "",
    ],
)
def test_bad_names_refused_without_echoing_them(name: str) -> None:
    with pytest.raises(SegmentRefused) as info:
        Segment.attach(name, 4096)
    if name:
        assert name not in str(info.value)


def test_refused_non_string_missing_symlink_and_size_mismatch(tmp_path: Path) -> None:
    with pytest.raises(SegmentRefused):
        Segment.attach(None, 64)  # type: ignore[arg-type]
    with pytest.raises(SegmentRefused, match="cannot open"):
        Segment.attach(f"tensorwire-1-{HEX24}", 64)
    with Segment.create(4096) as seg:
        with pytest.raises(SegmentRefused, match="claimed 8192 bytes, file has 4096") as info:
            Segment.attach(seg.name, 8192)
        assert seg.name not in str(info.value)
    target = tmp_path / "target"
    target.write_bytes(b"x" * 64)
    link = f"tensorwire-1-{HEX24}"
    (tmp_path / link).symlink_to(target)
    with pytest.raises(SegmentRefused, match="cannot open"):  # O_NOFOLLOW
        Segment.attach(link, 64, directory=str(tmp_path))


def test_errors_sit_in_the_tree() -> None:
    assert issubclass(ShmFullError, ChannelError)
    assert issubclass(SegmentRefused, ChannelError)
    assert issubclass(ChannelError, TransportError)
    assert issubclass(ChannelError, TensorwireError)
    assert len(set(ch.__all__)) == len(ch.__all__)
    assert all(hasattr(ch, n) for n in ch.__all__)


# --- a full filesystem -------------------------------------------------------------------

FULL_CHILD = """
import os, sys
from tensorwire.channel import Segment, ShmFullError
d = sys.argv[1]
small = Segment.create(64 * 1024, directory=d)
try:
    Segment.create(4 << 20, directory=d)
except ShmFullError as exc:
    print(exc)
small.close()
print("left:", os.listdir(d))
"""


def _can_mount_tmpfs(where: Path) -> bool:
    probe = ["unshare", "-rm", "sh", "-c", 'mount -t tmpfs -o size=64k tmpfs "$0"', str(where)]
    try:
        return subprocess.run(probe, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def test_full_tmpfs_gives_clear_error_not_sigbus(tmp_path: Path) -> None:
    if not _can_mount_tmpfs(tmp_path):
        pytest.skip("cannot mount a small tmpfs (unshare -rm not permitted here)")
    mount = ["unshare", "-rm", "sh", "-c", 'mount -t tmpfs -o size=1m tmpfs "$0" && exec "$@"']
    rc, out, err = run_child(FULL_CHILD, str(tmp_path), wrapper=[*mount, str(tmp_path)])
    assert rc == 0, err
    assert f"{tmp_path} is full" in out and str(4 << 20) in out
    assert "left: []" in out


def test_file_size_limit_gives_clear_error(tmp_path: Path) -> None:
    # Works without mount privileges: RLIMIT_FSIZE makes fallocate fail with EFBIG.
    limit = "import resource, signal, runpy, sys;"
    limit += "signal.signal(signal.SIGXFSZ, signal.SIG_IGN);"
    limit += "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20));"
    rc, out, err = run_child(limit + "exec(sys.argv.pop(1))", FULL_CHILD, str(tmp_path))
    assert rc == 0, err
    assert "is full" in out and str(4 << 20) in out and "left: []" in out


def test_enospc_maps_to_shm_full(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_space(fd: int, offset: int, size: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    with pytest.raises(ShmFullError, match=r"/dev/shm is full.*12345-byte") as info:
        Segment.create(12345)
    assert info.value.size == 12345  # and the fixture checks the file was removed


# --- sweeping segments of dead creators --------------------------------------------------


def test_sweep_stale_removes_dead_creators_only(tmp_path: Path) -> None:
    rc, out, err = run_child(
        "import os, sys; from tensorwire.channel import Segment\n"
        "seg = Segment.create(4096, directory=sys.argv[1])\n"
        "print(seg.name, flush=True); os._exit(0)  # no cleanup runs\n",
        str(tmp_path),
    )
    assert rc == 0, err
    dead = out.strip()
    (tmp_path / "unrelated-file").write_bytes(b"")
    with Segment.create(4096, directory=str(tmp_path)) as live:
        assert sweep_stale(str(tmp_path)) == 1
        remaining = sorted(os.listdir(tmp_path))
        assert remaining == sorted([live.name, "unrelated-file"]) and dead not in remaining
        assert sweep_stale(str(tmp_path)) == 0


# --- the arena ---------------------------------------------------------------------------

ops = st.lists(
    st.one_of(
        st.tuples(st.just("alloc"), st.integers(0, 5000)),
        st.tuples(st.just("free"), st.integers(0, 1000)),
    ),
    max_size=80,
)


@settings(max_examples=150, deadline=None)
@given(capacity=st.integers(1, 40_000), steps=ops)
def test_arena_never_overlaps_and_restores_capacity(capacity: int, steps: list) -> None:  # type: ignore[type-arg]
    with Arena.create(capacity) as arena:
        assert arena.capacity >= capacity and arena.capacity % ALIGNMENT == 0
        live: dict[int, int] = {}  # offset -> requested bytes
        for kind, arg in steps:
            if kind == "alloc":
                off = arena.alloc(arg)
                if off is None:  # first fit fails only if no free block is big enough
                    assert arena.largest_free() < max(arg, 1)
                    continue
                assert off % ALIGNMENT == 0 and off + arg <= arena.capacity
                assert off not in live
                arena.view(off, arg)[:] = bytes([off // ALIGNMENT % 251]) * arg
                live[off] = arg
            elif live:
                off = sorted(live)[arg % len(live)]
                n = live.pop(off)
                assert bytes(arena.view(off, n)) == bytes([off // ALIGNMENT % 251]) * n
                arena.free(off)
            blocks = sorted(arena.allocations().items())
            assert [o for o, _ in blocks] == sorted(live)
            for (o1, s1), (o2, _) in zip(blocks, blocks[1:], strict=False):
                assert o1 + s1 <= o2
            assert arena.used == sum(s for _, s in blocks)
        for off in list(live):
            arena.free(off)
        assert arena.used == 0 and arena.largest_free() == arena.capacity


def test_arena_errors_and_full_returns_none() -> None:
    with Arena.create(256) as arena:
        a, b = arena.alloc(0), arena.alloc(1)
        assert (a, b) == (0, 64)
        assert arena.alloc(200) is None  # full: the caller falls back to frames
        arena.free(a)
        with pytest.raises(ChannelError, match="not an allocated block"):
            arena.free(a)
        with pytest.raises(ChannelError):
            arena.free(13)
        with pytest.raises(ValueError):
            arena.alloc(-1)
        x = arena.ndarray(b, 16, np.float32)
        assert x.ctypes.data % ALIGNMENT == 0
        del x


def test_arena_is_thread_safe() -> None:
    with Arena.create(64 * 1024) as arena:
        errors: list[BaseException] = []

        def worker(seed: int) -> None:
            rng = np.random.default_rng(seed)
            mine: list[int] = []
            try:
                for _ in range(2000):
                    if mine and rng.random() < 0.5:
                        arena.free(mine.pop(int(rng.integers(len(mine)))))
                    elif (off := arena.alloc(int(rng.integers(1, 2000)))) is not None:
                        mine.append(off)
                for off in mine:
                    arena.free(off)
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert arena.used == 0 and arena.largest_free() == arena.capacity


# --- the doorbell ------------------------------------------------------------------------


def _bells(directory: str) -> set[str]:
    return {n for n in os.listdir(directory) if n.startswith("tensorwire-bell-")}


def test_doorbell_round_trip_with_child_and_cleanup(tmp_path: Path) -> None:
    with Doorbell.create(directory=str(tmp_path)) as bell:
        assert stat.S_IMODE(os.stat(tmp_path / bell.name).st_mode) == 0o700
        child = subprocess.Popen(
            [
                sys.executable,
                "-W",
                "error",
                "-c",
                textwrap.dedent("""
                import sys
                from tensorwire.channel import Doorbell
                bell = Doorbell.attach(sys.argv[1], directory=sys.argv[2])
                for _ in range(100):
                    assert bell.wait(10)
                    bell.ring()
                bell.close()
                """),
                bell.name,
                str(tmp_path),
            ],
            env=child_env(),
            stderr=subprocess.PIPE,
            text=True,
        )
        _spawned.add(child.pid)
        for _ in range(100):
            bell.ring()
            assert bell.wait(10)
        _, err = child.communicate(timeout=30)
        assert (child.returncode, err) == (0, "")
        assert _bells(str(tmp_path)) == {bell.name}  # the client's exit removed nothing
        assert bell.wait(0.01) is False
    assert _bells(str(tmp_path)) == set()


def test_doorbell_counts_rings_and_refuses_bad_names(tmp_path: Path) -> None:
    with Doorbell.create(directory=str(tmp_path)) as server:
        with Doorbell.attach(server.name, directory=str(tmp_path)) as client:
            client.ring()
            client.ring()
            assert server.wait(1) and server.wait(1) and not server.wait(0)
            assert not client.wait(0)
        for bad in ["../x", "tensorwire-bell-../../tmp", "tensorwire-bell-abc", "x" * 20]:
            with pytest.raises(SegmentRefused):
                Doorbell.attach(bad, directory=str(tmp_path))
    with pytest.raises(SegmentRefused, match="cannot open"):
        Doorbell.attach("tensorwire-bell-abcdefgh", directory=str(tmp_path))
    with pytest.raises(ChannelError, match="closed"):
        server.wait(0)


@pytest.mark.parametrize("shape", [(10,), (3 << 20,), (1024, 1025), (0,)])
def test_copy_into_matches_copyto(shape: tuple[int, ...]) -> None:
    from tensorwire.channel import copy_into

    src = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    dst = np.zeros_like(src)
    copy_into(dst, src)
    np.testing.assert_array_equal(dst, src)
    strided = np.zeros((shape[0] * 2,) + shape[1:], np.float32)[::2]  # not contiguous
    copy_into(strided, src)
    np.testing.assert_array_equal(strided, src)
