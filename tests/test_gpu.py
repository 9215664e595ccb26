"""The GPU path: pinned arenas, CUDA-event timings, CUDA IPC, the device check.

Tests marked `gpu` need a CUDA device and are skipped (with the reason) without one. The
rest run anywhere: descriptor validation and refusals, lease bookkeeping, registration with
a stand-in CUDA runtime, the trace's device stages, the CPU path left as it was, and the
device check's behaviour without a GPU.
"""

from __future__ import annotations

import gc
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from _ipc_wire import PID, RC, descriptor
from conftest import child_env, run_in_threads
from tensorwire.channel import Arena, ServerChannel
from tensorwire.channel import _cuda as cu
from tensorwire.channel._cuda import (
    CudaIpcRefused,
    IpcDescriptor,
    IpcImports,
    LeaseTable,
    allocator_refusal,
    is_registered,
    register_host,
    unregister_host,
)
from tensorwire.trace import DEVICE_STAGES, build_trace

ROOT = Path(__file__).resolve().parents[1]
torch = pytest.importorskip("torch")
HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device (none visible to torch)")


# ------------------------------------------------------------------ descriptors (CPU)

wire = descriptor  # the name these tests were written with


def test_descriptor_round_trips() -> None:
    desc = IpcDescriptor.from_wire(wire())
    assert desc.shape == (4, 8) and desc.strides == (8, 1) and desc.nbytes == 128
    assert IpcDescriptor.from_wire(desc.to_wire()) == desc
    assert IpcDescriptor.from_wire(wire(ev=None)).event == b""


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"v": 2}, "version"),
        ({"uuid": "../etc"}, "uuid"),
        ({"h": b"\x02c" + bytes(10)}, "unsupported kind"),
        ({"h": b"\x07c" + bytes(64)}, "unknown format"),
        ({"h": b"\x02e" + bytes(200)}, "expandable segments"),
        ({"h": "text"}, "'h'"),
        ({"dt": "object"}, "dtype"),
        ({"sh": [4, 8, 1]}, "differ in length"),
        ({"sh": [4, -8]}, "'sh'"),
        ({"st": [8, True]}, "'st'"),
        ({"dev": True}, "'dev'"),
        ({"dev": 99}, "'dev'"),
        ({"ss": -1}, "'ss'"),
        ({"off": 1000}, "past its storage"),
        ({"st": [8, 200]}, "past its storage"),
        ({"rc": "/dev/shm/tensorwire-1-abc"}, "ref-counter"),
        ({"rc": f"/torch_{PID + 1}_1_1"}, "ref-counter"),
        ({"rc": b"/torch_1_1_1"}, "'rc'"),
        ({"ro": 10000}, "'ro'"),
        ({"ev": bytes(63)}, "'ev'"),
        ({"pid": 0}, "'pid'"),
        ({"sh": list(range(40)), "st": list(range(40))}, "at most"),
    ],
)
def test_descriptor_refusals(over: dict[str, Any], message: str) -> None:
    with pytest.raises(CudaIpcRefused, match=message):
        IpcDescriptor.from_wire(wire(**over))


def test_descriptor_not_a_map_and_size_limit() -> None:
    with pytest.raises(CudaIpcRefused, match="map"):
        IpcDescriptor.from_wire([1, 2])
    with pytest.raises(CudaIpcRefused, match="'ss'"):
        IpcDescriptor.from_wire(wire(), max_bytes=1024)
    assert IpcDescriptor.from_wire(wire(sh=[0, 8])).nbytes == 0  # empty: no extent check


def test_ref_counter_file_checks(tmp_path: Path) -> None:
    desc = IpcDescriptor.from_wire(wire())
    with pytest.raises(CudaIpcRefused, match="does not exist"):
        cu.check_ref_counter_file(desc, shm_dir=str(tmp_path))
    target = tmp_path / "elsewhere"
    target.write_bytes(bytes(80000))
    (tmp_path / RC.lstrip("/")).symlink_to(target)
    with pytest.raises(CudaIpcRefused, match="regular file"):
        cu.check_ref_counter_file(desc, shm_dir=str(tmp_path))
    (tmp_path / RC.lstrip("/")).unlink()
    (tmp_path / RC.lstrip("/")).write_bytes(bytes(100))
    with pytest.raises(CudaIpcRefused, match="wrong size"):
        cu.check_ref_counter_file(desc, shm_dir=str(tmp_path))
    (tmp_path / RC.lstrip("/")).write_bytes(bytes(80000 + 8192))
    with pytest.raises(CudaIpcRefused, match="wrong size"):
        cu.check_ref_counter_file(desc, shm_dir=str(tmp_path))
    (tmp_path / RC.lstrip("/")).write_bytes(bytes(80000))
    cu.check_ref_counter_file(desc, shm_dir=str(tmp_path))
    (tmp_path / RC.lstrip("/")).write_bytes(bytes(80064))  # torch 2.11's file: a 64-byte header
    cu.check_ref_counter_file(desc, shm_dir=str(tmp_path))
    with pytest.raises(CudaIpcRefused, match="another process"):
        cu.check_ref_counter_file(desc, shm_dir=str(tmp_path), expected_pid=PID + 1)


def test_allocation_bounds_check() -> None:
    def ranges(ptr: int) -> Any:
        return (1000, 500) if 1000 <= ptr < 1500 else None

    cu._check_allocation(1100, 400, range_of=ranges)
    with pytest.raises(CudaIpcRefused, match="reaches past"):
        cu._check_allocation(1100, 401, range_of=ranges)
    with pytest.raises(CudaIpcRefused, match="outside"):
        cu._check_allocation(2000, 1, range_of=ranges)
    cu._check_allocation(2000, 0, range_of=ranges)  # nothing to read
    cu._check_allocation(2000, 8, range_of=lambda p: NotImplemented)  # driver unavailable


def test_local_device_by_uuid() -> None:
    assert cu.local_device_for("GPU-b", uuids=["GPU-a", "GPU-b"]) == 1
    with pytest.raises(CudaIpcRefused, match="not visible"):
        cu.local_device_for("GPU-c", uuids=["GPU-a"])


@pytest.mark.parametrize(
    ("conf", "backend", "refused"),
    [
        ("", "native", None),
        ("expandable_segments:True", "native", "expandable_segments"),
        ("max_split_size_mb:128, expandable_segments:true", None, "expandable_segments"),
        ("expandable_segments:False", "native", None),
        ("backend:cudaMallocAsync", None, "cudaMallocAsync"),
        ("", "cudaMallocAsync", "cudaMallocAsync"),
    ],
)
def test_allocator_refusal(conf: str, backend: str | None, refused: str | None) -> None:
    reason = allocator_refusal(conf, backend or "native" if "backend" not in conf else None)
    if refused is None:
        assert reason is None
    else:
        assert reason is not None and refused in reason


def test_allocator_refusal_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    reason = allocator_refusal()
    assert reason is not None and "expandable" in reason


def test_export_refuses_cpu_tensors() -> None:
    with pytest.raises(CudaIpcRefused, match="only torch CUDA tensors"):
        cu.export_ipc(torch.ones(3))
    with pytest.raises(CudaIpcRefused, match="only torch CUDA tensors"):
        cu.export_ipc(np.ones(3))


@pytest.mark.skipif(HAS_CUDA, reason="checks the refusal of a server without CUDA")
def test_open_refuses_without_cuda() -> None:
    with pytest.raises(CudaIpcRefused, match="no CUDA device"):
        cu.open_ipc(IpcDescriptor.from_wire(wire()))


# ------------------------------------------------------------------ leases (CPU)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_leases_renew_expire_and_collect() -> None:
    clock, collected = Clock(), []
    leases = LeaseTable(10.0, clock=clock, collect=lambda: collected.append(1), max_leases=2)
    leases.add("a", "A")
    leases.add("b", "B", ttl=1.0)
    with pytest.raises(CudaIpcRefused, match="too many"):
        leases.add("c", "C")
    clock.now += 5
    assert leases.get("a") == "A"  # renewed until 115
    assert leases.reap() == 1 and "b" not in leases and collected == [1]
    clock.now += 9
    assert leases.get("a") == "A"
    clock.now += 11
    assert leases.get("a") is None and collected == [1, 1]
    leases.add("d", "D")
    assert leases.release("d") and not leases.release("d")
    assert len(leases) == 0 and collected == [1, 1, 1]
    with pytest.raises(ValueError):
        LeaseTable(0)


def test_imports_cache_by_allocation_and_release_new_slots(tmp_path: Path) -> None:
    (tmp_path / RC.lstrip("/")).write_bytes(bytes(80000))
    rc2 = f"/torch_{PID}_123456_8"
    (tmp_path / rc2.lstrip("/")).write_bytes(bytes(80000))
    opened: list[IpcDescriptor] = []
    storage = torch.arange(2048, dtype=torch.float32)

    def opener(desc: IpcDescriptor, **kw: Any) -> Any:
        opened.append(desc)
        assert kw["expected_pid"] == PID and kw["shm_dir"] == str(tmp_path)
        return torch.empty(0).set_(storage.untyped_storage(), desc.offset, desc.shape,
                                   desc.strides)

    imports = IpcImports(expected_pid=PID, shm_dir=str(tmp_path), opener=opener,
                         leases=LeaseTable(30.0, collect=lambda: None))
    released: list[tuple[str, int]] = []
    imports._release_slot = lambda d, base: released.append((d.ref_counter, d.ref_offset))
    first = imports.open(wire(ev=None))
    assert first.shape == (4, 8) and float(first[0, 0]) == 2.0
    again = imports.open(wire(ev=None, off=10, sh=[2, 2], st=[2, 1]))  # same allocation
    assert len(opened) == 1 and float(again[0, 0]) == 10.0 and released == []
    imports.open(wire(ev=None, rc=rc2, ro=5))  # a fresh export of it: its slot goes back
    assert released == [(rc2, 5)]
    imports.open(wire(ev=None, rc=rc2, ro=5))
    assert released == [(rc2, 5)]  # the same export again: nothing more to release
    imports.open(wire(ev=None, so=0))  # another storage: opened
    assert len(opened) == 2
    strict = IpcImports(expected_pid=PID + 1, shm_dir=str(tmp_path), opener=opener,
                        leases=LeaseTable(30.0, collect=lambda: None))
    desc = IpcDescriptor.from_wire(wire(ev=None))
    strict.leases.add((desc.handle, desc.storage_offset, desc.storage_size),
                      cu._Import(first, set()))
    with pytest.raises(CudaIpcRefused, match="another process"):
        strict.open(wire(ev=None))  # an open allocation is still checked per request
    imports.close()
    assert len(imports.leases) == 0


def test_a_storage_export_seen_before_checks_only_the_view(tmp_path: Path) -> None:
    (tmp_path / RC.lstrip("/")).write_bytes(bytes(80000))
    storage = torch.arange(2048, dtype=torch.float32)
    opened: list[IpcDescriptor] = []

    def opener(desc: IpcDescriptor, **kw: Any) -> Any:
        opened.append(desc)
        return torch.empty(0).set_(storage.untyped_storage(), desc.offset, desc.shape,
                                   desc.strides)

    imports = IpcImports(expected_pid=PID, shm_dir=str(tmp_path), opener=opener,
                         leases=LeaseTable(30.0, collect=lambda: None))
    imports.open(wire(ev=None))
    (tmp_path / RC.lstrip("/")).unlink()  # no file check on a repeat: the slot is known
    again = imports.open(wire(ev=None, off=10, sh=[2, 2], st=[2, 1]))
    assert len(opened) == 1 and float(again[0, 0]) == 10.0 and again.shape == (2, 2)
    for bad, message in (({"off": 1000}, "past its storage"), ({"dt": "object"}, "dtype"),
                         ({"sh": [2, 2, 2]}, "differ in length"), ({"ev": b"x"}, "'ev'")):
        with pytest.raises(CudaIpcRefused, match=message):
            imports.open(wire(**{"ev": None, **bad}))
    with pytest.raises(CudaIpcRefused, match="'ro'"):  # not the same export: checked in full
        imports.open(wire(ev=None, ro=True))
    desc = IpcDescriptor.from_wire(wire(ev=None))
    imports.release([list(desc.key)])  # the client dropped it: the next map opens anew
    imports.open(wire(ev=None))
    assert len(opened) == 2


# ------------------------------------------------------------------ pinned registration (CPU)


class FakeRuntime:
    def __init__(self, fail: int = 0) -> None:
        self.fail = fail
        self.calls: list[tuple[Any, ...]] = []

    def cudaHostRegister(self, ptr: int, size: int, flags: int) -> int:  # noqa: N802
        self.calls.append(("register", ptr, size, flags))
        return self.fail

    def cudaHostUnregister(self, ptr: int) -> int:  # noqa: N802
        self.calls.append(("unregister", ptr))
        return 0


def test_register_host_with_a_runtime() -> None:
    buf = np.zeros(1 << 16, dtype=np.uint8)
    rt = FakeRuntime()
    reg = register_host(buf, runtime=rt)
    ptr = buf.ctypes.data
    assert reg.active and rt.calls == [("register", ptr, 1 << 16, 0)]
    assert is_registered(ptr + 100, 1000) and is_registered(ptr, 1 << 16)
    assert not is_registered(ptr + 100, 1 << 16) and not is_registered(ptr - 1, 2)
    unregister_host(reg)
    unregister_host(reg)  # idempotent
    assert rt.calls[1:] == [("unregister", ptr)] and not is_registered(ptr, 1)


def test_register_host_failure_and_no_cuda() -> None:
    buf = np.zeros(4096, dtype=np.uint8)
    reg = register_host(buf, runtime=FakeRuntime(fail=2))
    assert not reg.active and "error 2" in reg.reason and not is_registered(buf.ctypes.data, 1)
    unregister_host(reg)
    if not HAS_CUDA:
        reg = register_host(buf)
        assert not reg.active and reg.reason == "no CUDA device"
    with pytest.raises(ValueError, match="contiguous"):
        register_host(np.zeros((8, 8), dtype=np.uint8)[:, ::2])


def test_server_channel_pins_both_arenas_and_unpins_first(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    rt = FakeRuntime()
    monkeypatch.setattr(cu, "cuda_available", lambda: True)
    monkeypatch.setattr(cu, "_cudart", lambda: rt)
    channel = ServerChannel(1 << 20, pin=True)
    try:
        assert [c[0] for c in rt.calls] == ["register", "register"]
        ptr = np.frombuffer(channel.c2s.segment.buf, np.uint8).ctypes.data
        assert is_registered(ptr, 1 << 20)
    finally:
        channel.close()
    assert [c[0] for c in rt.calls] == ["register", "register", "unregister", "unregister"]
    assert not is_registered(ptr, 1)
    plain = ServerChannel(1 << 20)
    assert plain.pinned == []
    plain.close()


def test_server_channel_pin_is_a_noop_without_cuda() -> None:
    if HAS_CUDA:
        pytest.skip("checks the no-CUDA path")
    channel = ServerChannel(1 << 20, pin=True)
    assert all(not r.active for r in channel.pinned)
    channel.close()


# ------------------------------------------------------------------ trace (CPU)


def _trace(server: Any) -> dict[str, Any]:
    return build_trace(serialize=0.1, send=0.1, wait=1.0, deserialize=0.1, server=server,
                       request_paths=["shm"], reply_paths=["shm"])


def test_trace_device_stages() -> None:
    device = {"host_to_device": 0.01, "device_compute": 0.2, "device_to_host": 0.02,
              "h2d": "pinned", "evil": "x"}
    t = _trace([0.1, 0.1, 0.5, 0.1, device])
    assert [t[k] for k in DEVICE_STAGES] == [0.01, 0.2, 0.02]
    assert t["paths"]["h2d"] == "pinned" and "evil" not in t
    assert t["compute"] == 0.5 and t["receive"] == pytest.approx(0.2)  # not counted twice
    plain = _trace([0.1, 0.1, 0.5, 0.1])
    assert not set(DEVICE_STAGES) & set(plain) and "h2d" not in plain["paths"]
    odd = _trace([0.1, 0.1, 0.5, 0.1, {"host_to_device": "x", "h2d": "teleport"}])
    assert odd["host_to_device"] == 0.0 and "h2d" not in odd["paths"]
    assert _trace([0.1, 0.1, 0.5, 0.1, [1]])["compute"] == 0.5
    assert _trace([1, 2, 3])["compute"] == 0.0


# ------------------------------------------------------------------ torch CPU path unchanged


def test_torch_cpu_path_unchanged() -> None:
    from tensorwire.server.ops import make_backend

    cpu = make_backend("torch", "cpu")
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    t = cpu.from_wire(arr)
    assert t.data_ptr() == arr.ctypes.data  # still a zero-copy view
    ro = arr.copy()
    ro.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cpu.from_wire(ro).data_ptr() != ro.ctypes.data  # read-only: copied
    assert cpu.from_wire(t) is t
    assert cpu.take_timings() == {} and cpu.stream is None
    assert make_backend("numpy").take_timings() == {}
    out = cpu.to_wire(t.T)
    assert np.array_equal(out, arr.T)


# ------------------------------------------------------------------ the device check


@pytest.mark.parametrize(("flag", "code"), [([], 2), (["--allow-no-gpu"], 0)])
def test_gpu_check_without_a_gpu(tmp_path: Path, flag: list[str], code: int) -> None:
    if HAS_CUDA:
        pytest.skip("a CUDA device is present: the check would measure")
    out = tmp_path / "check.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), *flag,
                           "--json", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == code, proc.stderr
    assert "no CUDA device: nothing measured" in proc.stdout
    assert '"no-gpu"' in out.read_text()


def test_cuda_costs_without_a_gpu() -> None:
    if HAS_CUDA:
        pytest.skip("a CUDA device is present: it would measure")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "cuda_costs.py")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no CUDA device: nothing measured" in proc.stdout


def test_cuda_costs_bare_ping_pongs(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import cuda_costs

    rows = cuda_costs.bare_ping_pongs(50, str(tmp_path))
    assert set(rows) == {"bare os.pipe ping-pong, 1 byte", "bare ZeroMQ ipc ping-pong, 1 KB"}
    assert all(0 < v < 1e6 for v in rows.values())  # microseconds, from real round trips


def _gpu_check() -> Any:
    """benchmarks/gpu_check.py as a module (benchmarks/ is no package)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return gpu_check


@pytest.mark.timeout(120)
def test_gpu_check_pipeline_row_dry_run_on_the_cpu() -> None:
    """The pipeline row's own code (two servers, two client threads, results checked after
    the clock) runs against CPU servers; what it measures there is not overlap."""
    gpu_check = _gpu_check()
    report = gpu_check.Report()
    gpu_check.check_pipeline(report, 1 << 20, 3, 2, device="cpu")
    (row,) = report.rows
    assert row["check"] == "pipeline" and "wrong results: 0" in row["note"], row
    details = report.details["pipeline"]
    assert details["device"] == "cpu" and details["launched_behind"] >= 0
    assert all(len(times) == 2 and min(times) > 0 for times in details["seconds"].values())
    assert float(row["value"].rstrip("x")) > 0


def test_gpu_check_op_samples_cover_the_table() -> None:
    gpu_check = _gpu_check()
    from tensorwire.server.ops import default_registry, make_backend
    from tensorwire.server.ops._table import OPS

    samples = gpu_check.op_samples(np.random.default_rng(0))
    assert {r.name for r in OPS} <= set(samples)
    registry, cpu = default_registry(), make_backend("torch", "cpu")
    for name, (args, kwargs) in samples.items():
        registry.call(name, cpu, args, kwargs)  # every sample is a valid call


def test_no_ucx_transport_registered() -> None:
    from tensorwire.transport import get_transport

    with pytest.raises(Exception, match="ucx"):
        get_transport("ucx://host:1234")


# ------------------------------------------------------------------ on a GPU


@pytest.mark.gpu
@needs_cuda
def test_cuda_timings_and_pinned_path() -> None:
    from tensorwire.server.ops import default_registry, make_backend

    backend, registry = make_backend("torch", "cuda"), default_registry()
    arena = Arena.create(1 << 22)
    reg = register_host(arena.segment.buf)
    try:
        assert reg.active, reg.reason
        x = arena.segment.ndarray(0, (512, 512), np.float32)
        x[...] = np.random.default_rng(0).standard_normal((512, 512), dtype=np.float32)
        assert backend.take_timings() == {}  # nothing ran yet; turns async copies on
        y = registry.call("gelu", backend, [x], {})
        t = backend.take_timings()
        assert set(DEVICE_STAGES) <= set(t) and t["h2d"] == "pinned"
        assert t["host_to_device"] > 0 and t["device_to_host"] > 0
        ref = registry.call("gelu", make_backend("torch", "cpu"), [x.copy()], {})
        np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
        registry.call("gelu", backend, [x.copy()], {})
        assert backend.take_timings()["h2d"] == "pageable"
        assert backend.take_timings() == {}
    finally:
        unregister_host(reg)
        arena.segment.close()


@pytest.mark.gpu
@needs_cuda
def test_cuda_read_only_input_and_copy_to_host() -> None:
    from tensorwire.server.ops import make_backend

    backend = make_backend("torch", "cuda")
    arr = np.arange(64, dtype=np.float32)
    arr.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t = backend.from_wire(arr)
    dst = np.empty(64, dtype=np.float32)
    backend.copy_to_host(t * 2, dst)
    np.testing.assert_array_equal(dst, arr * 2)
    backend.take_timings()


PRODUCER = r"""
import sys, msgpack, torch
from tensorwire.channel._cuda import CudaIpcRefused, export_ipc
try:
    t = torch.arange(1 << 20, dtype=torch.int32, device="cuda").reshape(1024, 1024)[:, 1:]
    torch.cuda.synchronize()
    out = export_ipc(t).to_wire()
except CudaIpcRefused as exc:
    out = {"refused": str(exc)}
sys.stdout.write(msgpack.packb(out).hex() + "\n")
sys.stdout.flush()
sys.stdin.readline()
"""


def _producer(env: dict[str, str]) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    import msgpack

    proc = subprocess.Popen([sys.executable, "-c", PRODUCER], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True,
                            env=child_env(**env))
    assert proc.stdout is not None
    return proc, msgpack.unpackb(bytes.fromhex(proc.stdout.readline().strip()))


@pytest.mark.gpu
@needs_cuda
def test_cuda_ipc_round_trip() -> None:
    proc, desc = _producer({"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:False"})
    try:
        imports = IpcImports(expected_pid=proc.pid)
        t = imports.open(desc)
        want = torch.arange(1 << 20, dtype=torch.int32, device="cuda").reshape(1024, 1024)[:, 1:]
        assert torch.equal(t, want)
        assert imports.open(desc).data_ptr() == t.data_ptr()  # leased: not opened again
        del t
        imports.close()
    finally:
        assert proc.stdin is not None
        proc.stdin.write("done\n")
        proc.stdin.close()
        proc.wait(30)


@pytest.mark.gpu
@needs_cuda
def test_cuda_ipc_refuses_expandable_segments() -> None:
    proc, out = _producer({"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"})
    try:
        assert "expandable" in out.get("refused", "")
    finally:
        assert proc.stdin is not None
        proc.stdin.write("done\n")
        proc.stdin.close()
        proc.wait(30)


# ------------------------------------------------------------------ CUDA IPC through the client


@pytest.fixture
def cuda_server(tmp_path: Path) -> Any:
    from conftest import ServerProcess

    server = ServerProcess([f"ipc://{tmp_path / 'gpu.sock'}"], "--backend", "torch",
                           "--device", "cuda")
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.gpu
@needs_cuda
def test_client_sends_cuda_tensors_by_ipc(cuda_server: Any) -> None:
    import tensorwire as tw

    with tw.Client(cuda_server.url) as gpu:
        assert gpu.server_info["ipc"] is True, gpu.server_info.get("ipc_reason")
        t = torch.arange(4096, dtype=torch.float32, device="cuda").reshape(64, 64)
        same = gpu.identity(t)  # a view of t itself comes back: no bytes
        assert same.data_ptr() == t.data_ptr() and torch.equal(same, t)
        assert gpu.last_trace["paths"]["request"] == ["cuda_ipc"]
        tt = gpu.transpose(t)
        assert tt.device == t.device and torch.equal(tt, t.T)
        neg = gpu.neg(t)  # a new result: device-to-host there, back onto the GPU here
        assert neg.device == t.device and torch.equal(neg, -t)
        y = gpu.matmul(t, torch.eye(64, device="cuda"))
        torch.testing.assert_close(y, t)
        kept = gpu.identity(t, out="remote")
        t += 1  # the resident copy must not see the client's write
        np.testing.assert_array_equal(gpu.fetch(kept), (t - 1).cpu().numpy())
        del same, tt, t
        gc.collect()
        gpu.identity(np.ones(2))  # carries the release of t's storage ("fi")
        assert not gpu._ipc._shared


@pytest.mark.gpu
@needs_cuda
def test_lazy_conjugates_and_negations_are_sent_resolved(cuda_server: Any) -> None:
    """z.conj() is a bit on the tensor, not in its memory: the server must see its values."""
    import tensorwire as tw

    z = torch.complex(torch.arange(8.0), torch.arange(8.0) + 1).cuda()
    with tw.Client(cuda_server.url) as gpu:
        zc = z.conj()
        assert zc.is_conj()
        assert torch.equal(gpu.identity(zc), zc)
        assert torch.equal(gpu.neg(zc), -zc)
        imag = zc.imag  # a negated view of z's memory
        assert imag.is_neg()
        assert torch.equal(gpu.neg(imag), -imag)


CLIENT = r"""
import sys, torch, tensorwire as tw
from tensorwire.channel._cuda import CudaIpcRefused
with tw.Client(sys.argv[1]) as gpu:
    try:
        gpu.identity(torch.ones(1024, device="cuda"))
        print("sent")
    except CudaIpcRefused as exc:
        print("refused:", exc)
"""


@pytest.mark.gpu
@needs_cuda
def test_client_refuses_expandable_segments(cuda_server: Any) -> None:
    env = child_env(PYTORCH_CUDA_ALLOC_CONF="expandable_segments:True")
    proc = subprocess.run([sys.executable, "-c", CLIENT, cuda_server.url], env=env,
                          capture_output=True, text=True, timeout=120)
    assert "refused:" in proc.stdout and "expandable" in proc.stdout, proc.stderr


@pytest.mark.gpu
@needs_cuda
def test_cuda_results_are_copied_straight_into_the_arena(cuda_server: Any) -> None:
    import tensorwire as tw

    x = np.random.default_rng(0).standard_normal((512, 512), dtype=np.float32)
    with tw.Client(cuda_server.url, shm_size=64 << 20) as gpu:
        xa = gpu.asarray(x)
        np.testing.assert_array_equal(gpu.neg(xa), -x)
        trace = gpu.last_trace
        assert trace["paths"]["reply"] == ["shm(direct)"], trace["paths"]
        assert trace["paths"]["h2d"] == "pinned" and trace["device_to_host"] > 0
        with gpu.graph() as g:
            out = g.relu(g.neg(g.input("x")))
        np.testing.assert_array_equal(g.run(out, x=xa), np.maximum(-x, 0))
        assert gpu.last_trace["paths"]["reply"] == ["shm(direct)"], gpu.last_trace["paths"]


@pytest.mark.gpu
@needs_cuda
def test_client_shares_a_storage_once_and_orders_by_its_event(cuda_server: Any) -> None:
    import tensorwire as tw

    with tw.Client(cuda_server.url) as gpu:
        t = torch.zeros(1 << 22, device="cuda")
        for i in range(1, 4):
            t.add_(1)  # queued on the client's stream just before the request
            assert float(gpu.sum(t[1:])) == i * ((1 << 22) - 1)
        assert len(gpu._ipc._shared) == 1  # one share, reused by every call and view


@pytest.mark.gpu
@needs_cuda
def test_new_cuda_results_are_exported_not_copied(cuda_server: Any) -> None:
    import tensorwire as tw

    with tw.Client(cuda_server.url, cuda_results="map") as gpu:
        t = torch.randn(1024, 1024, device="cuda")
        y = gpu.neg(t)  # 4 MB, new memory on the server: mapped here, no PCIe crossing
        assert y.is_cuda and y.device == t.device and torch.equal(y, -t)
        assert gpu.last_trace["paths"]["reply"] == ["cuda_ipc"], gpu.last_trace["paths"]
        assert "device_to_host" not in gpu.last_trace
        assert len(gpu._ipc._acks) == 1
        s = gpu.sum(t)  # small: copied back as before; carries the acknowledgement
        assert s.is_cuda and not gpu._ipc._acks
        torch.testing.assert_close(s, t.sum(), rtol=1e-4, atol=1e-2)
        y2 = gpu.relu(y.clone())  # memory received by IPC goes back as a copy of it
        assert torch.equal(y2, torch.relu(-t))
        del y, y2
        gc.collect()
        gpu.identity(np.ones(2))


@pytest.mark.gpu
@needs_cuda
def test_narrowed_arguments_are_widened_on_the_gpu(cuda_server: Any) -> None:
    import ml_dtypes

    import tensorwire as tw

    def bf16(a: np.ndarray) -> np.ndarray:
        return a.astype(ml_dtypes.bfloat16).astype(np.float32)

    x = np.random.default_rng(1).standard_normal((1024, 1024), dtype=np.float32)
    with tw.Client(cuda_server.url, transport="zmq", wire_dtype="bfloat16") as gpu:
        y = gpu.neg(x)  # 2 MB cross to the GPU and are widened there, not 4 MB
        assert gpu.last_trace["paths"]["request"] == ["frame+bfloat16"]
        assert gpu.last_trace["host_to_device"] > 0
        with gpu.graph() as g:
            out = g.relu(g.neg(g.input("x")))
        z = g.run(out, x=x)  # a graph input: widened on the GPU as well
    np.testing.assert_array_equal(y, bf16(-bf16(x)))
    np.testing.assert_array_equal(z, bf16(np.maximum(-bf16(x), 0)))


@pytest.mark.gpu
@needs_cuda
def test_results_are_narrowed_on_the_gpu(tmp_path: Path) -> None:
    """A float32 result the reply narrows leaves the GPU narrowed: into the client's arena
    over shared memory, as frames over tcp; the bits are the codec's."""
    import ml_dtypes

    import tensorwire as tw

    def bf16(a: np.ndarray) -> np.ndarray:
        return a.astype(ml_dtypes.bfloat16).astype(np.float32)

    x = np.random.default_rng(2).standard_normal((1024, 1024), dtype=np.float32)
    listen = ["tcp://127.0.0.1:0", f"ipc://{tmp_path}/tw.sock"]
    with tw.Server(listen=listen, backend="torch", device="cuda", insecure=True) as server:
        backend = server._core.handler.backend
        assert backend.device_casts
        made: list[str] = []
        narrowed = backend._narrowed

        def counting(t: Any, wire: str) -> Any:
            made.append(f"{t.device.type}:{wire}")
            return narrowed(t, wire)

        backend._narrowed = counting
        tcp, ipc = server.urls
        with tw.Client(tcp, transport="zmq", wire_dtype="bfloat16") as gpu:
            y = gpu.neg(x)
            assert gpu.last_trace["paths"]["reply"] == ["frame+bfloat16"]
        with tw.Client(ipc, wire_dtype="bfloat16") as gpu:
            z = gpu.neg(x)
            (reply,) = gpu.last_trace["paths"]["reply"]
            assert reply.startswith("shm") and "bfloat16" in reply
            assert gpu.last_trace["device_to_host"] > 0
    assert made == ["cuda:bfloat16", "cuda:bfloat16"]
    np.testing.assert_array_equal(y, bf16(-bf16(x)))
    np.testing.assert_array_equal(z, bf16(-bf16(x)))


# ------------------------------------------------------------------ pipelined on a GPU


@pytest.mark.gpu
@needs_cuda
def test_pipelined_requests_run_on_their_clients_streams() -> None:
    """Two requests launched before either is waited for: each on its client's stream,
    its copies back to the host deferred to its fence, its timings its own."""
    from tensorwire.server.ops import default_registry, make_backend

    backend, registry = make_backend("torch", "cuda"), default_registry()
    backend.pipelined = True
    x = np.random.default_rng(3).standard_normal((1024, 1024), dtype=np.float32)
    backend.begin_request("a")
    stream_a = backend.stream
    ya = registry.call("neg", backend, [x], {})
    fence_a = backend.fence()
    backend.begin_request("b")
    yb = registry.call("relu", backend, [x], {})
    fence_b = backend.fence()
    assert backend.stream is not stream_a
    times_b, times_a = fence_b.wait(), fence_a.wait()
    assert set(DEVICE_STAGES) <= set(times_a) and set(DEVICE_STAGES) <= set(times_b)
    assert times_a["device_to_host"] > 0 and times_b["device_to_host"] > 0
    np.testing.assert_array_equal(ya, -x)
    np.testing.assert_array_equal(yb, np.maximum(x, 0))
    backend.begin_request("a")
    assert backend.stream is stream_a
    backend.fence().wait()
    backend.forget_client("a")


@pytest.mark.gpu
@needs_cuda
def test_pipelined_read_of_a_shared_resident_keeps_its_memory_until_the_read_ends() -> None:
    """A resident tensor made on client a's stream, read on client b's: once its last
    reference goes while b's read is still queued, a's next allocation of that size must not
    get its memory (torch's allocator would hand it back to a's stream at once)."""
    from tensorwire.server._resident import ContentCache, Quotas, ResidentStore
    from tensorwire.server.ops import make_backend

    backend = make_backend("torch", "cuda")
    backend.pipelined = True
    store = ResidentStore(backend, ContentCache(), Quotas())
    n = 1 << 20
    backend.begin_request("a")
    ref = store.add(torch.ones(n, device="cuda"))  # allocated on a's stream
    freed_at = store.get(ref).data_ptr()
    backend.begin_request("b")
    torch.cuda._sleep(200_000_000)  # b's stream stays busy for a while (~0.1 s)
    read = store.get(ref) * 2  # queued on b's stream behind the sleep
    store.free([ref.hid])  # the last reference goes while that read waits
    backend.begin_request("a")
    reused = torch.empty(n, device="cuda")  # a's stream, same size
    assert reused.data_ptr() != freed_at
    torch.cuda.synchronize()
    assert torch.equal(read, torch.full((n,), 2.0, device="cuda"))
    backend.fence().wait()


@pytest.mark.gpu
@needs_cuda
def test_pipelined_server_on_cuda(tmp_path: Path) -> None:
    import tensorwire as tw

    with tw.Server(listen=f"ipc://{tmp_path}/tw.sock", backend="torch", device="cuda",
                   pipeline_depth=4) as server:

        def work(seed: int) -> None:
            rng = np.random.default_rng(seed)
            with tw.Client(server.url, shm_size=256 << 20) as gpu:
                xs = [gpu.asarray(rng.standard_normal(1 << 20, dtype=np.float32))
                      for _ in range(16)]
                futures = [gpu.submit("neg", x) for x in xs]
                for x, future in zip(xs, futures, strict=True):
                    np.testing.assert_array_equal(future.result(timeout=60), -x)
                gpu.neg(xs[0])
                assert gpu.last_trace["device_to_host"] > 0

        assert run_in_threads(work, 2, timeout=120) == []
