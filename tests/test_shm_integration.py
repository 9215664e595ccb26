"""Same-host shared memory end to end (issue 3): real server processes, real tmpfs segments.

Covers negotiation, the path every tensor takes as the trace names it, the ownership
rule of arena views (see channel/_client_side.py), concurrent clients, the lifetime of
segments (clean close, SIGKILLed client, SIGKILLed and restarted server), a full tmpfs
and what error messages may reveal. Tests that count segment files use a private
`--shm-dir` so other runs on this machine cannot disturb the count.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tensorwire as tw
from conftest import ServerProcess, child_env

KIB = 1 << 10
MIB = 1 << 20
N_256K = 64 * KIB  # float32 elements in 256 KiB: above the 64 KiB inline threshold
SEGMENT_NAME = re.compile(r"tensorwire-([0-9]+)-[0-9a-f]{24}")


# --- helpers ------------------------------------------------------------------------------


def _url(tmp_path: Path, name: str = "tw") -> str:
    return f"ipc://{tmp_path / name}.sock"


@contextmanager
def serving(url: str, *extra: str) -> Iterator[ServerProcess]:
    server = ServerProcess([url], "--backend", "numpy", *extra)
    try:
        yield server
    finally:
        server.stop()


def segments(directory: Path) -> list[str]:
    """The shared-memory segments in a directory."""
    return sorted(n for n in os.listdir(directory) if SEGMENT_NAME.fullmatch(n))


def leftovers(directory: Path) -> list[str]:
    """Everything in a private shm directory (segments and anything else, e.g. pipes)."""
    return sorted(os.listdir(directory))


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def paths(client: tw.Client) -> tuple[list[str], list[str]]:
    """The path of each request and reply tensor, as the last trace names them."""
    trace = client.last_trace["paths"]
    return trace["request"], trace["reply"]


@pytest.fixture
def shm_dir() -> Iterator[Path]:
    """A private directory on a tmpfs for one test's segments; must end empty."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    directory = Path(tempfile.mkdtemp(prefix="twtest-", dir=base))
    try:
        yield directory
        assert leftovers(directory) == [], "left behind in the private shm dir"
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One shared-memory-capable server for the tests that only need a working one."""
    with serving(_url(tmp_path_factory.mktemp("shm"))) as srv:
        yield srv


# --- 1. negotiation -----------------------------------------------------------------------


@pytest.mark.parametrize("listen", ["ipc", "tcp"])
def test_same_host_auto_negotiates_shm(listen: str, tmp_path: Path) -> None:
    url = _url(tmp_path) if listen == "ipc" else "tcp://127.0.0.1:0"
    with serving(url) as srv, tw.Client(srv.url) as gpu:
        assert gpu.path == "shm"
        assert gpu.shm_reason == ""
        small = np.arange(16, dtype=np.float32)
        np.testing.assert_array_equal(gpu.call("neg", small), -small)
        carrier = gpu.last_trace["paths"].get("message")  # how the control message went
        if carrier is not None:
            assert carrier == ("pipe" if gpu.server_info["shm"].get("pipe") else "zmq")
        x = np.arange(N_256K, dtype=np.float32)
        np.testing.assert_array_equal(gpu.call("add", x, x), 2 * x)
        assert paths(gpu) == (["shm", "shm"], ["shm(direct)"])


@pytest.mark.parametrize("spin_us", [0, 50, 200])
def test_pipe_calls_with_and_without_spinning(server: ServerProcess, spin_us: int) -> None:
    with tw.Client(server.url, spin_us=spin_us) as gpu:
        for i in range(20):
            assert gpu.call("add", i, 1) == i + 1
        assert gpu.last_trace["paths"]["message"] == "pipe"


@pytest.mark.parametrize("spin_us", [-1, True, "200", 1e9, float("nan")])
def test_bad_spin_budgets_are_refused(spin_us: object) -> None:
    with pytest.raises(ValueError, match="spin_us"):
        tw.Client("ipc:///nonexistent/tw.sock", spin_us=spin_us)
    with pytest.raises(ValueError, match="spin_us"):
        tw.Server(spin_us=spin_us)


def test_transport_zmq_turns_shm_off(server: ServerProcess) -> None:
    with tw.Client(server.url, transport="zmq") as gpu:
        assert gpu.path == "zmq"
        assert "zmq" in gpu.shm_reason
        x = np.arange(N_256K, dtype=np.float32)
        np.testing.assert_array_equal(gpu.call("add", x, x), 2 * x)
        assert paths(gpu) == (["frame", "frame"], ["frame"])
        assert gpu.last_trace["paths"].get("message", "zmq") == "zmq"
        # Without an arena, empty() is an ordinary array and travels as a frame.
        a = gpu.empty(N_256K, np.float32)
        a[...] = x
        np.testing.assert_array_equal(gpu.call("identity", a), x)
        assert paths(gpu) == (["frame"], ["frame"])
    with pytest.raises(ValueError, match="contradicts"):
        tw.Client(server.url, transport="zmq", require="shm")


def test_no_shm_server(tmp_path: Path) -> None:
    with serving(_url(tmp_path), "--no-shm") as srv:
        with pytest.raises(tw.TransportError, match="shared memory required.*disabled"):
            tw.Client(srv.url, require="shm")
        with tw.Client(srv.url) as gpu:
            assert gpu.path == "zmq"
            assert "disabled" in gpu.shm_reason
            x = np.arange(N_256K, dtype=np.float32)
            np.testing.assert_array_equal(gpu.call("identity", x), x)
            assert paths(gpu) == (["frame"], ["frame"])


# --- 2. the path of every tensor, as the trace names it ----------------------------------


def test_trace_names_each_path(server: ServerProcess) -> None:
    with tw.Client(server.url, require="shm") as gpu:
        small = np.arange(16, dtype=np.float32)
        np.testing.assert_array_equal(gpu.call("add", small, small), 2 * small)
        assert paths(gpu) == (["frame", "frame"], ["frame"])

        plain = np.arange(N_256K, dtype=np.float32)
        np.testing.assert_array_equal(gpu.call("add", plain, plain), 2 * plain)
        assert paths(gpu) == (["shm", "shm"], ["shm(direct)"])
        np.testing.assert_array_equal(gpu.call("identity", plain), plain)
        assert paths(gpu) == (["shm"], ["shm(alias)"])  # aliases the request's arena copy

        a = gpu.empty(N_256K, np.float32)
        a[...] = plain
        z = gpu.zeros((256, 256), np.float32)
        b = gpu.asarray(plain.reshape(256, 256))
        assert not z.any() and np.array_equal(b, plain.reshape(256, 256))
        total = gpu.call("add", a.reshape(256, 256), b)
        np.testing.assert_array_equal(total, 2 * plain.reshape(256, 256))
        assert paths(gpu) == (["shm(zero-copy)", "shm(zero-copy)"], ["shm(direct)"])
        same = gpu.call("identity", a)
        assert paths(gpu) == (["shm(zero-copy)"], ["shm(alias)"])
        assert np.shares_memory(same, a)

        # A result passed back in costs no copy either, and may be aliased.
        again = gpu.call("reshape", total, [N_256K])
        assert paths(gpu) == (["shm(zero-copy)"], ["shm(alias)"])
        assert np.shares_memory(again, total)

        # A non-contiguous view of an arena array is copied into a fresh block.
        strided = gpu.empty(2 * N_256K, np.float32)
        strided[...] = np.arange(2 * N_256K)
        out = gpu.call("identity", strided[::2])
        np.testing.assert_array_equal(out, np.arange(0, 2 * N_256K, 2, dtype=np.float32))
        assert paths(gpu)[0] == ["shm"]
        assert not np.shares_memory(out, strided)


def test_tensor_larger_than_arena_goes_as_frame(server: ServerProcess) -> None:
    with tw.Client(server.url, require="shm", shm_size=1 * MIB) as gpu:
        big = np.random.default_rng(1).standard_normal(MIB).astype(np.float32)  # 4 MiB
        np.testing.assert_array_equal(gpu.call("identity", big), big)
        request, reply = paths(gpu)
        assert request == ["frame(arena full)"]
        assert reply[0].startswith("frame")
        np.testing.assert_array_equal(gpu.call("mul", big, 2.0), big * 2)
        with pytest.raises(tw.TransportError, match="no room.*shm_size"):
            gpu.empty(MIB, np.float32)
        # What fits still goes through the arena.
        fits = big[:N_256K]
        np.testing.assert_array_equal(gpu.call("add", fits, fits), 2 * fits)
        assert paths(gpu) == (["shm", "shm"], ["shm(direct)"])


def test_reply_too_large_for_arena_is_named_in_trace(server: ServerProcess) -> None:
    with tw.Client(server.url, require="shm", shm_size=1 * MIB) as gpu:
        big = np.ones(MIB, np.float32)
        gpu.call("identity", big)
        assert paths(gpu)[1] == ["frame(arena full)"]


# --- 3. the ownership rule ------------------------------------------------------------------


def test_held_results_never_change(server: ServerProcess) -> None:
    """Hold many more arena results than the arena holds; keep calling; none changes."""
    rng = np.random.default_rng(3)
    held: list[tuple[np.ndarray, np.ndarray]] = []
    reply_paths: list[str] = []
    with tw.Client(server.url, require="shm", shm_size=1 * MIB) as gpu:  # 4 blocks of 256 KiB
        for i in range(24):
            x = rng.standard_normal(N_256K).astype(np.float32)
            if i % 3 == 0:
                r, expected = gpu.call("add", x, x), 2 * x  # a fresh s2c block
            elif i % 3 == 1:
                r, expected = gpu.call("identity", x), x.copy()  # alias of a c2s block
            else:
                r, expected = gpu.call("neg", held[-1][0]), -held[-1][1]  # a result as input
            reply_paths += paths(gpu)[1]
            x[...] = -7.0  # the caller's own array is never aliased
            held.append((r, expected))
            for j, (result, want) in enumerate(held):
                assert np.array_equal(result, want), f"held result {j} changed after call {i}"
        # The arena filled up (so blocks would have been reused if the rule were broken).
        assert {"shm", "shm(alias)", "shm(direct)"} & set(reply_paths)
        assert "frame(arena full)" in reply_paths  # the server says why it fell back
        # Drop half, keep working: the rest still hold their values.
        del held[::2]
        for _ in range(16):
            x = rng.standard_normal(N_256K).astype(np.float32)
            np.testing.assert_array_equal(gpu.call("mul", x, 3.0), x * 3)
            for result, want in held:
                assert np.array_equal(result, want)


def test_dropped_results_let_blocks_be_reused(server: ServerProcess) -> None:
    """40 x 256 KiB through a 1 MiB arena: never a frame when each result is dropped."""
    rng = np.random.default_rng(4)
    with tw.Client(server.url, require="shm", shm_size=1 * MIB) as gpu:
        for i in range(40):
            x = rng.standard_normal(N_256K).astype(np.float32)
            op = ("add", "identity")[i % 2]
            r = gpu.call(op, x, x) if op == "add" else gpu.call(op, x)
            np.testing.assert_array_equal(r, 2 * x if op == "add" else x)
            request, reply = paths(gpu)
            assert all(p == "shm" for p in request), (i, request)
            assert reply[0] in ("shm", "shm(alias)", "shm(direct)"), (i, reply)
            del r


def test_copy_true_results_own_their_memory(server: ServerProcess) -> None:
    rng = np.random.default_rng(5)
    with tw.Client(server.url, require="shm", shm_size=1 * MIB, copy=True) as gpu:
        a = gpu.asarray(rng.standard_normal(N_256K).astype(np.float32))
        expected = a.copy()
        r = gpu.call("identity", a)
        assert paths(gpu) == (["shm(zero-copy)"], ["shm(alias)+copied out"])  # how it came
        assert not np.shares_memory(r, a)
        assert r.flags.owndata and r.base is None
        a[...] = 0
        np.testing.assert_array_equal(r, expected)
        # Copied results free their blocks at once: holding 20 never fills the arena.
        held = []
        for _ in range(20):
            x = rng.standard_normal(N_256K).astype(np.float32)
            held.append((gpu.call("add", x, x), 2 * x))
            assert paths(gpu)[1] == ["shm(direct)+copied out"]
        for result, want in held:
            assert result.flags.owndata
            np.testing.assert_array_equal(result, want)


def _bases(arr: np.ndarray) -> list[Any]:
    chain, obj = [], arr.base
    while obj is not None:
        chain.append(obj)
        obj = getattr(obj, "base", None)
    return chain


def test_results_alias_only_arena_arguments(server: ServerProcess) -> None:
    with tw.Client(server.url, require="shm") as gpu:
        plain = np.arange(N_256K, dtype=np.float32)
        for op, args in (("identity", ()), ("reshape", ([256, 256],))):
            r = gpu.call(op, plain, *args)
            assert not np.shares_memory(r, plain)
            assert all(b is not plain for b in _bases(r))
        plain[...] = -1
        np.testing.assert_array_equal(r.ravel(), np.arange(N_256K, dtype=np.float32))

        a = gpu.asarray(np.arange(N_256K, dtype=np.float32))
        r = gpu.call("identity", a)
        assert np.shares_memory(r, a)  # documented: aliasing an arena argument is allowed
        # Small arena arrays travel inline: never aliased.
        s = gpu.asarray(np.arange(16, dtype=np.float32))
        rs = gpu.call("identity", s)
        assert paths(gpu) == (["frame"], ["frame"])
        assert not np.shares_memory(rs, s)


# --- 4. concurrency -------------------------------------------------------------------------

WORKER = '''
import numpy as np

def work(gpu, seed, calls=20):
    rng = np.random.default_rng(seed)
    held = []
    for i in range(calls):
        x = rng.standard_normal(1 << 16).astype(np.float32)  # 256 KiB: through the arena
        if i % 3 == 0:
            a = gpu.asarray(x)
            r, want = gpu.call("add", a, a), 2 * x
        elif i % 3 == 1:
            r, want = gpu.call("mul", x, x), x * x
        else:
            r, want = gpu.call("identity", x), x.copy()
        held.append((r, want))
        if len(held) > 4:
            held.pop(0)
        for got, expected in held:
            assert np.array_equal(got, expected), f"seed {seed} call {i}: wrong or changed result"
'''

CONCURRENT_CHILD = WORKER + '''
import sys, threading
import tensorwire as tw

errors = []
def run(gpu, seed):
    try:
        work(gpu, seed)
    except BaseException as exc:
        errors.append(repr(exc))

with tw.Client(sys.argv[1], require="shm", shm_size=4 << 20) as gpu:
    seed = int(sys.argv[2]) * 10
    threads = [threading.Thread(target=run, args=(gpu, seed + k)) for k in range(2)]
    for t in threads: t.start()
    for t in threads: t.join()
print("errors:", errors, flush=True)
sys.exit(1 if errors else 0)
'''


def test_concurrent_processes_and_threads(server: ServerProcess) -> None:
    children = [
        subprocess.Popen([sys.executable, "-c", CONCURRENT_CHILD, server.url, str(k)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=child_env())
        for k in range(3)
    ]
    ns: dict[str, Any] = {}
    exec(WORKER, ns)  # the same work, from threads of this process meanwhile
    errors: list[str] = []

    def run(gpu: tw.Client, seed: int) -> None:
        try:
            ns["work"](gpu, seed)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(repr(exc))

    try:
        with tw.Client(server.url, require="shm", shm_size=4 * MIB) as gpu:
            threads = [threading.Thread(target=run, args=(gpu, 100 + k)) for k in range(3)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
        outputs = [c.communicate(timeout=40) for c in children]
    finally:
        for c in children:
            if c.poll() is None:
                c.kill()
                c.wait()
    assert errors == []
    for c, (out, err) in zip(children, outputs, strict=True):
        assert c.returncode == 0, (out, err)
        assert "errors: []" in out


def test_submit_many_in_flight(server: ServerProcess) -> None:
    rng = np.random.default_rng(6)
    with tw.Client(server.url, require="shm", shm_size=1 * MIB) as gpu:
        xs = [rng.standard_normal(N_256K).astype(np.float32) for _ in range(16)]
        futures = [gpu.submit("add", x, x) for x in xs]  # more than the arena holds
        results = [f.result(timeout=20) for f in futures]
        for x, r in zip(xs, results, strict=True):
            np.testing.assert_array_equal(r, 2 * x)


def test_submitted_arena_argument_outlives_the_callers_array() -> None:
    """Regression: a zero-copy argument's block was freed when the caller dropped its array,
    before the submitted request was served, and the next allocation could reuse it."""
    name = "test_shm_wait_then_identity"
    if name not in {op["name"] for op in tw.server.default_registry().list()}:

        @tw.register_op(name)
        def wait_then_identity(x, seconds: float):
            time.sleep(seconds)
            return x.copy()

    with tw.Server(backend="numpy") as server, \
            tw.Client(server.url, require="shm", shm_size=1 * MIB) as gpu:
        blocker = gpu.submit(name, np.zeros(4, np.float32), 0.3)  # the server is busy
        xa = gpu.asarray(np.full(N_256K, 7.0, np.float32))
        future = gpu.submit(name, xa, 0.0)
        del xa
        ya = gpu.asarray(np.full(N_256K, -1.0, np.float32))  # would take the freed block
        np.testing.assert_array_equal(future.result(timeout=10), np.full(N_256K, 7.0))
        blocker.result(timeout=10)
        del ya


def test_threads_resolving_aliases_while_others_allocate(server: ServerProcess) -> None:
    """Regression: _containing iterated the live-block map while other threads inserted
    into it ('dictionary changed size during iteration', surfacing as ProtocolError)."""
    errors: list[str] = []
    old = sys.getswitchinterval()
    with tw.Client(server.url, require="shm", shm_size=32 * MIB) as gpu:
        live = [gpu.empty(1024, np.float32) for _ in range(1500)]  # a long map to scan
        x = np.ones(N_256K, np.float32)

        def run() -> None:
            try:
                for _ in range(100):
                    r = gpu.call("identity", x)  # an alias reply: scans the map
                    assert r.sum() == N_256K
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(repr(exc))

        sys.setswitchinterval(1e-6)
        try:
            threads = [threading.Thread(target=run) for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
        finally:
            sys.setswitchinterval(old)
        del live
    assert errors == []


# --- 5. lifetime ----------------------------------------------------------------------------

KILLED_CHILD = '''
import sys
import numpy as np
import tensorwire as tw

gpu = tw.Client(sys.argv[1], require="shm")
x = np.ones(4 << 20, np.float32)  # 16 MiB: each call spends milliseconds in the arena
gpu.call("add", x, x)
print("ready", flush=True)
while True:
    gpu.call("add", x, x)
'''


def test_sigkilled_client_is_reaped_and_server_keeps_serving(
    tmp_path: Path, shm_dir: Path
) -> None:
    with serving(_url(tmp_path), "--shm-dir", str(shm_dir)) as srv:
        with tw.Client(srv.url, require="shm") as other:
            assert len(segments(shm_dir)) == 2
            others = leftovers(shm_dir)  # the other session's segments (and anything else)
            victim = subprocess.Popen([sys.executable, "-c", KILLED_CHILD, srv.url],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, env=child_env())
            try:
                assert victim.stdout is not None
                assert victim.stdout.readline().strip() == "ready", victim.stderr.read()
                assert len(segments(shm_dir)) == 4
                time.sleep(0.3)  # it is calling in a loop: killed mid-request
            finally:
                victim.kill()
                victim.wait()  # a zombie's pid still looks alive to the reaper
                victim.stdout.close()  # type: ignore[union-attr]
                victim.stderr.close()  # type: ignore[union-attr]
            assert wait_until(lambda: leftovers(shm_dir) == others, timeout=5.0), \
                leftovers(shm_dir)
            x = np.arange(N_256K, dtype=np.float32)
            np.testing.assert_array_equal(other.call("add", x, x), 2 * x)
            assert paths(other) == (["shm", "shm"], ["shm(direct)"])
        assert leftovers(shm_dir) == []
        with tw.Client(srv.url, require="shm") as late:  # new clients are served too
            np.testing.assert_array_equal(late.call("neg", x), -x)
    assert srv.proc.returncode == 0


def test_close_removes_segments_at_once(tmp_path: Path, shm_dir: Path) -> None:
    with serving(_url(tmp_path), "--shm-dir", str(shm_dir)) as srv:
        gpu = tw.Client(srv.url, require="shm")
        offer = gpu.server_info["shm"]
        assert segments(shm_dir) == sorted([offer["c2s"], offer["s2c"]])
        held = gpu.call("identity", gpu.asarray(np.ones(N_256K, np.float32)))
        gpu.close()
        assert leftovers(shm_dir) == []  # no reaping delay: bye ends the session
        assert held.sum() == N_256K  # a view held past close() stays readable
        del held


def test_restarted_server_sweeps_segments_of_dead_creator(
    tmp_path: Path, shm_dir: Path
) -> None:
    first = ServerProcess([_url(tmp_path, "first")], "--backend", "numpy",
                          "--shm-dir", str(shm_dir))
    gpu = None
    try:
        gpu = tw.Client(first.url, require="shm", timeout=0.5)
        x = np.arange(N_256K, dtype=np.float32)
        np.testing.assert_array_equal(gpu.call("add", x, x), 2 * x)
        left = leftovers(shm_dir)
        assert len(segments(shm_dir)) == 2
        assert {int(m.group(1)) for n in left if (m := SEGMENT_NAME.fullmatch(n))} == {
            first.proc.pid}
        first.proc.kill()
        first.proc.wait()
        assert leftovers(shm_dir) == left  # a SIGKILLed server cannot clean up
        # An unrelated file with our prefix but a live creator is kept.
        alive = shm_dir / f"tensorwire-{os.getpid()}-{'ab' * 12}"
        alive.write_bytes(b"")
        alive_pipe = shm_dir / f"tensorwire-pipe-{os.getpid()}-keepme"
        alive_pipe.mkdir()
        with serving(_url(tmp_path, "second"), "--shm-dir", str(shm_dir)) as second:
            # Swept before it started listening: everything of the dead server.
            assert leftovers(shm_dir) == sorted([alive.name, alive_pipe.name])
            alive.unlink()
            alive_pipe.rmdir()
            with tw.Client(second.url, require="shm") as fresh:
                np.testing.assert_array_equal(fresh.call("add", x, x), 2 * x)
                assert len(segments(shm_dir)) == 2
            assert leftovers(shm_dir) == []
    finally:
        if gpu is not None:
            gpu.close()  # its bye times out quietly: the server is gone
        first.stop()


# --- 6. a full shared-memory filesystem -----------------------------------------------------

FULL_CHILD = '''
import json, os, subprocess, sys
import numpy as np
import tensorwire as tw

shm_dir, sock, prefix = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
server = subprocess.Popen(
    [*prefix, "serve", "--listen", "ipc://" + sock, "--backend", "numpy", "--shm-dir", shm_dir],
    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
out = {}
try:
    line = server.stdout.readline()
    url = line.split("listening on ", 1)[1].strip()
    x = np.arange(1 << 18, dtype=np.float32)  # 1 MiB
    with tw.Client(url, shm_size=64 << 20) as gpu:
        out["auto"] = [gpu.path, gpu.shm_reason]
        out["auto_ok"] = bool(np.array_equal(gpu.call("add", x, x), 2 * x))
        trace = gpu.last_trace["paths"]
        out["auto_paths"] = [trace["request"], trace["reply"]]
    out["files_after_auto"] = sorted(os.listdir(shm_dir))
    try:
        tw.Client(url, shm_size=64 << 20, require="shm").close()
        out["require"] = ["no error", ""]
    except tw.TensorwireError as exc:
        out["require"] = [type(exc).__name__, str(exc)]
    with tw.Client(url, shm_size=3 << 20) as gpu:  # c2s may fit where s2c does not
        out["partial"] = [gpu.path, gpu.shm_reason]
    out["files_after_partial"] = sorted(os.listdir(shm_dir))
    with tw.Client(url, shm_size=1 << 20, require="shm") as gpu:
        out["small_files"] = sum(n.startswith("tensorwire-") and "pipe" not in n
                                 for n in os.listdir(shm_dir))
        y = np.arange(1 << 16, dtype=np.float32)
        out["small_ok"] = bool(np.array_equal(gpu.call("add", y, y), 2 * y))
        trace = gpu.last_trace["paths"]
        out["small_paths"] = [trace["request"], trace["reply"]]
    out["files_end"] = sorted(os.listdir(shm_dir))
    out["server_alive"] = server.poll() is None
finally:
    server.terminate()
    _, err = server.communicate(timeout=10)
    out["server_rc"] = server.returncode
    out["server_err"] = err[-2000:]
print(json.dumps(out))
'''

# Without mount rights, a file size limit on the server makes posix_fallocate fail (EFBIG).
RLIMIT_BOOT = (
    "import resource, runpy, signal, sys;"
    "signal.signal(signal.SIGXFSZ, signal.SIG_IGN);"
    "resource.setrlimit(resource.RLIMIT_FSIZE, (2 << 20, 2 << 20));"
    "sys.argv[0] = 'tensorwire';"
    "runpy.run_module('tensorwire', run_name='__main__', alter_sys=True)"
)


def _can_mount_tmpfs(where: Path) -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = ["unshare", "-rm", "sh", "-c", 'mount -t tmpfs -o size=64k tmpfs "$0"', str(where)]
    try:
        return subprocess.run(probe, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.parametrize("how", ["tmpfs", "rlimit"])
def test_full_shm_gives_clear_error(how: str, tmp_path: Path, shm_dir: Path) -> None:
    sock = str(tmp_path / "tw.sock")
    if how == "tmpfs":
        target = tmp_path / "tiny"
        target.mkdir()
        if not _can_mount_tmpfs(target):
            pytest.skip("cannot mount a small tmpfs here (unshare -rm not permitted)")
        # The server and its clients share the new mount namespace (same host token).
        wrapper = ["unshare", "-rm", "sh", "-c",
                   'mount -t tmpfs -o size=4m tmpfs "$0" && exec "$@"', str(target)]
        prefix = [sys.executable, "-m", "tensorwire"]
    else:
        target, wrapper = shm_dir, []
        prefix = [sys.executable, "-c", RLIMIT_BOOT]
    cmd = [*wrapper, sys.executable, "-c", FULL_CHILD, str(target), sock, json.dumps(prefix)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=45, env=child_env())
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])

    path, reason = out["auto"]
    assert path == "zmq" and "is full" in reason and "cannot create the arena" in reason
    assert out["auto_ok"]
    assert out["auto_paths"] == [["frame", "frame"], ["frame"]]
    assert out["files_after_auto"] == []
    kind, message = out["require"]
    assert kind in ("TransportError", "ChannelError") and "is full" in message
    assert "required" in message
    if how == "tmpfs":  # c2s fitted, s2c did not: the first one must be gone again
        assert out["partial"][0] == "zmq" and "is full" in out["partial"][1]
    assert out["files_after_partial"] == []
    assert out["small_files"] == 2 and out["small_ok"]
    assert out["small_paths"] == [["shm", "shm"], ["shm(direct)"]]
    assert out["files_end"] == []
    assert out["server_alive"], out["server_err"]  # no SIGBUS
    assert out["server_rc"] == 0, out["server_err"]
    assert "Traceback" not in out["server_err"]


# --- 7. security ----------------------------------------------------------------------------


def test_segments_are_private_files(tmp_path: Path, shm_dir: Path) -> None:
    with serving(_url(tmp_path), "--shm-dir", str(shm_dir)) as srv:
        with tw.Client(srv.url, require="shm") as gpu:
            offer = gpu.server_info["shm"]
            for name in (offer["c2s"], offer["s2c"]):
                match = SEGMENT_NAME.fullmatch(name)
                assert match is not None and int(match.group(1)) == srv.proc.pid
                st = os.stat(shm_dir / name)
                assert stat.S_ISREG(st.st_mode)
                assert stat.S_IMODE(st.st_mode) == 0o600
                assert st.st_uid == os.geteuid()
            assert offer["c2s"] != offer["s2c"]
            # Whatever else the session keeps there (pipes, ...) is private too.
            for root, dirs, files in os.walk(shm_dir):
                for entry in dirs + files:
                    mode = os.lstat(os.path.join(root, entry)).st_mode
                    assert stat.S_IMODE(mode) & 0o077 == 0, (entry, oct(mode))


def _forging_placer(descriptor: list[Any]) -> Callable[[list[Any]], Any]:
    def placer(keep: list[Any]) -> Any:
        return lambda arr: (list(descriptor), "shm") if arr.nbytes >= 64 * KIB else (None, "frame")
    return placer


def test_error_messages_never_reveal_segment_names(tmp_path: Path, shm_dir: Path) -> None:
    with serving(_url(tmp_path), "--shm-dir", str(shm_dir)) as srv:
        with tw.Client(srv.url, require="shm") as gpu:
            offer = gpu.server_info["shm"]
            secrets = [offer["c2s"], offer["s2c"], str(shm_dir), shm_dir.name]
            secrets += [n.split("-")[-1] for n in (offer["c2s"], offer["s2c"])]
            a = gpu.asarray(np.ones((256, 256), np.float32))
            messages = []

            def expect_error(fn: Callable[[], Any]) -> None:
                with pytest.raises(tw.TensorwireError) as info:
                    fn()
                messages.append(str(info.value))

            expect_error(lambda: gpu.call("matmul", a, a.reshape(1, -1)))
            expect_error(lambda: gpu.call("no_such_op", a))
            expect_error(lambda: gpu.call("reshape", a, [3, 7]))
            expect_error(lambda: gpu.call("cast", a, "no_such_dtype"))
            size = offer["size"]
            channel = gpu._channel
            for forged in ([0, size - 64, 256 * KIB, False],  # runs past the arena
                           [7, 0, 256 * KIB, False],  # no such region
                           [0, -64, 256 * KIB, False]):
                channel.placer = _forging_placer(forged)  # type: ignore[method-assign]
                try:
                    expect_error(lambda: gpu.call("identity", np.ones(N_256K, np.float32)))
                finally:
                    del channel.placer
            session, gpu._session = gpu._session, "0" * 32
            try:  # _request_once: without the client's reconnect-on-expiry, to see the error
                expect_error(lambda: gpu._request_once("call", "identity", (a,), {}, None, None))
            finally:
                gpu._session = session
            # After all that, the session still works.
            np.testing.assert_array_equal(gpu.call("add", a, a), 2 * a)
        for message in messages:
            for secret in secrets:
                assert secret not in message, message
        # An OSError while creating an arena (its directory vanished) is answered
        # without the path, and an auto client falls back instead of failing.
        os.rmdir(shm_dir)
        try:
            with tw.Client(srv.url) as gpu:
                assert gpu.path == "zmq"
                assert "cannot create the arena" in gpu.shm_reason
                assert str(shm_dir) not in gpu.shm_reason and "tensorwire-" not in gpu.shm_reason
            with pytest.raises(tw.TransportError) as info:
                tw.Client(srv.url, require="shm")
            assert str(shm_dir) not in str(info.value)
        finally:
            shm_dir.mkdir()
