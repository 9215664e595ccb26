"""CUDA IPC wiring that runs without a GPU: the codec's reference, the server's refusals and
cleanup, the client's refusals, release bookkeeping and result aliasing (on CPU tensors
standing in for opened CUDA storages). The GPU end of it is in tests/test_gpu.py.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest

import tensorwire as tw
from _ipc_wire import PID, RC, descriptor
from conftest import ServerProcess
from tensorwire.channel import host_token
from tensorwire.channel._cuda import (
    CudaIpcRefused,
    IpcDescriptor,
    IpcImports,
    LeaseTable,
    view_fields,
)
from tensorwire.client._cuda_ipc import Export, IpcSender, _Shared, ipc_results
from tensorwire.codec import CUDA_IPC_PATH, EXT_CUDA_IPC, IpcRef, decode, encode_payload
from tensorwire.errors import ProtocolError
from tensorwire.server._handlers import Handler, Request
from tensorwire.server._ipc import IpcCall, IpcExports, ipc_refusal
from tensorwire.server._sessions import Sessions
from tensorwire.server.ops import default_registry, make_backend

torch = pytest.importorskip("torch")


def wire(**over: Any) -> dict[str, Any]:
    """A descriptor at the start of its storage, without an event."""
    return descriptor(**{"so": 0, "off": 0, "ev": None, **over})


class CudaLike:
    """A DLPack object claiming CUDA memory: what the client must refuse without a CUDA server."""

    def __dlpack_device__(self) -> tuple[int, int]:
        return (2, 0)

    def __dlpack__(self, **kw: Any) -> Any:
        raise BufferError("not really on a GPU")


# ------------------------------------------------------------------ codec


def test_ipc_reference_round_trips_and_counts_as_a_handle() -> None:
    enc = encode_payload({"a": [IpcRef(3, wire()), np.ones(2, np.float32)]})
    assert enc.handles == 1 and enc.paths[0] == CUDA_IPC_PATH
    dec = decode([enc.frames({"id": 1})[0], *enc.tensor_frames])
    ref, arr = dec.payload["a"]
    assert isinstance(ref, IpcRef) and ref.index == 3 and ref.body == wire()
    assert dec.handles == 1 and dec.paths == [CUDA_IPC_PATH, "frame"]
    assert IpcDescriptor.from_wire(ref.body).key == (wire()["h"], 0, 4096)


def test_exporter_replaces_tensors() -> None:
    marker = object()
    enc = encode_payload([marker, np.ones(1)],
                         exporter=lambda o: IpcRef(0, {"x": 1}) if o is marker else None)
    assert enc.paths == [CUDA_IPC_PATH, "frame"] and enc.handles == 1


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        ([0], r"expected \[index, map\]"),
        ("x", r"expected \[index, map\]"),
        ([-1, {}], "index"),
        ([1 << 16, {}], "index"),
        ([True, {}], "index"),
        ([0, [1, 2]], "map"),
        ([0, {str(i): i for i in range(33)}], "at most 32"),
    ],
)
def test_malformed_ipc_references(parts: Any, message: str) -> None:
    header = msgpack.packb([1, {}, [msgpack.ExtType(EXT_CUDA_IPC, msgpack.packb(parts))]])
    for _ in range(2):  # refused again: a reference that failed its checks is not kept
        with pytest.raises(ProtocolError, match=message):
            decode([header])


def test_references_received_again_are_decoded_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from tensorwire.codec import _ipc

    monkeypatch.setattr(_ipc, "_received", {})

    def received(ref: IpcRef) -> IpcRef:
        got = decode([encode_payload([ref]).frames({"id": 1})[0]]).payload[0]
        assert isinstance(got, IpcRef) and got.index == ref.index and got.body == ref.body
        return got

    first = received(IpcRef(0, wire()))
    assert received(IpcRef(0, wire())) is first  # the same bytes: the same reference
    assert received(IpcRef(1, wire())) is not first  # another position is another reference
    big = IpcRef(0, {**wire(), "pad": bytes(_ipc.RECEIVED_MAX_BYTES)})
    assert received(big) is not received(big)  # large ones are not kept
    for i in range(_ipc.RECEIVED_MAX + 5):  # a peer sending ever new ones: memory stays bounded
        received(IpcRef(i, {"x": i}))
        assert len(_ipc._received) <= _ipc.RECEIVED_MAX


# ------------------------------------------------------------------ a real server on the CPU


@pytest.fixture(scope="module")
def cpu_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    path = tmp_path_factory.mktemp("ipc") / "tw.sock"
    server = ServerProcess([f"ipc://{path}"], "--backend", "numpy")
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (wire(uuid="../../etc"), "'uuid' must name a GPU"),
        (wire(h=b"\x02e" + bytes(64)), "expandable segments"),
        (wire(rc="/dev/shm/tensorwire-1-secret"), "ref-counter"),
        (wire(off=10_000), "past its storage"),
        (wire(), "not accepted here: the server computes on cpu"),
    ],
)
def test_server_refuses_descriptors_clearly_and_keeps_serving(cpu_server: ServerProcess,
                                                               body: Any, message: str) -> None:
    with tw.Client(cpu_server.url) as gpu:
        with pytest.raises(ProtocolError, match=message) as info:
            gpu._request("call", "identity", (IpcRef(0, body),), {})
        text = str(info.value)
        assert "request " in text and "CUDA IPC argument 0" in text
        assert "/dev/shm" not in text and "secret" not in text and RC not in text
        np.testing.assert_array_equal(gpu.identity(np.arange(3)), np.arange(3))


def test_server_refuses_malformed_references_and_releases(cpu_server: ServerProcess) -> None:
    with tw.Client(cpu_server.url) as gpu:
        with pytest.raises(ProtocolError, match="CUDA IPC reference"):
            gpu._request("call", "identity", (IpcRef(0, [1]),), {})  # type: ignore[arg-type]
        with pytest.raises(ProtocolError, match="CUDA IPC releases"):
            gpu._request("call", "identity", (np.ones(2),), {}, extra={"fi": "junk"})
        with pytest.raises(ProtocolError, match=r"\[handle, offset, size\]"):
            gpu._request("call", "identity", (np.ones(2),), {}, extra={"fi": [[1, 2]]})
        unknown = [[b"\x02c" + bytes(64), 0, 16]]  # nothing open under it: ignored
        out = gpu._request("call", "identity", (np.ones(2),), {}, extra={"fi": unknown})
        np.testing.assert_array_equal(out, np.ones(2))


def test_client_refuses_cuda_tensors_with_the_reason(cpu_server: ServerProcess) -> None:
    with tw.Client(cpu_server.url) as gpu:
        assert gpu.server_info["ipc"] is False
        with pytest.raises(ProtocolError, match="server computes on cpu.*move it to the CPU"):
            gpu.identity(CudaLike())
        with tw.Client(cpu_server.url, transport="zmq") as plain:  # same host, no shm
            with pytest.raises(ProtocolError, match="computes on cpu"):
                plain.identity(CudaLike())
        np.testing.assert_array_equal(gpu.neg(np.ones(2)), -np.ones(2))


def test_in_process_server_refuses_cuda_ipc(tmp_path: Path) -> None:
    with tw.Server(listen=[f"ipc://{tmp_path / 's.sock'}"], backend="numpy") as server:
        with tw.Client(server.urls[0]) as gpu:
            assert "server's own process" in gpu.server_info["ipc_reason"]
            with pytest.raises(ProtocolError, match="server's own process"):
                gpu.submit("identity", CudaLike()).result(10)


def test_cuda_results_option() -> None:
    with pytest.raises(ValueError, match="cuda_results must be one of"):
        tw.Client("ipc:///nowhere", cuda_results="export")


def test_ipc_refusal_reasons() -> None:
    assert ipc_refusal(False, 1, "cuda:0") == "the client is on another host"
    assert "own process" in ipc_refusal(True, os.getpid(), "cuda:0")
    assert "on cpu" in ipc_refusal(True, os.getpid() + 1, "cpu")
    assert ipc_refusal(True, os.getpid() + 1, "cuda:0") == ""
    sender = IpcSender({})
    assert not sender.enabled and "does not accept" in sender.reason


# ------------------------------------------------------------------ sessions clean up


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_sessions_reap_and_close_their_imports() -> None:
    sessions = Sessions(make_backend("numpy"), enabled=False)
    collected: list[int] = []
    meta = {"host": host_token(), "pid": os.getpid() + 1, "shm": 0}
    sid = sessions.hello(meta)["session"]
    session = sessions.get({"s": sid})
    assert session is not None and session.ipc is not None
    assert session.ipc.expected_pid == os.getpid() + 1 and "on cpu" in session.ipc_refusal
    session.ipc.leases = LeaseTable(0.01, collect=lambda: collected.append(1))
    session.ipc.leases.add("a", "A")
    session.local = False  # keep the pid check out of it; the idle timeout is 600 s
    time.sleep(0.02)
    sessions._next_reap = 0.0
    sessions.reap()
    assert len(session.ipc.leases) == 0 and collected == [1]
    session.ipc.leases.add("b", "B", ttl=60)
    sessions.bye({"s": sid})
    assert len(session.ipc.leases) == 0 and collected == [1, 1]
    dead = sessions.hello({"host": host_token(), "pid": _dead_pid(), "shm": 0})["session"]
    gone = sessions.get({"s": dead})
    assert gone is not None and gone.ipc is not None
    gone.ipc.leases = LeaseTable(60, collect=lambda: collected.append(2))
    gone.ipc.leases.add("c", "C")
    sessions._next_reap = 0.0
    sessions.reap()  # its process is gone: the session ends, its imports with it
    assert collected == [1, 1, 2] and len(sessions) == 0
    remote = sessions.hello({"host": "elsewhere", "pid": 7, "shm": 0})
    assert remote["ipc"] is False and remote["ipc_reason"] == "the client is on another host"


# ------------------------------------------------------------------ the native path, CPU stand-ins


def _imports(tmp_path: Path, storage: Any) -> IpcImports:
    (tmp_path / RC.lstrip("/")).write_bytes(bytes(80000))

    def opener(desc: IpcDescriptor, **kw: Any) -> Any:
        return torch.empty(0).set_(storage.untyped_storage(), desc.offset, desc.shape,
                                   desc.strides)

    return IpcImports(expected_pid=PID, shm_dir=str(tmp_path), opener=opener,
                      leases=LeaseTable(30.0, collect=lambda: None))


def test_handler_opens_arguments_and_answers_aliases(tmp_path: Path) -> None:
    backend = make_backend("torch", "cpu")
    sessions = Sessions(backend, enabled=False)
    handler = Handler(default_registry(), backend, sessions)
    sid = sessions.hello({"host": host_token(), "pid": PID, "shm": 0})["session"]
    session = sessions.get({"s": sid})
    assert session is not None
    client_memory = torch.arange(32, dtype=torch.float32)  # stands for the client's tensor
    session.ipc, session.ipc_refusal = _imports(tmp_path, client_memory), ""

    def call(op: str, out: str = "local", body: Any = None, **kw: Any) -> Any:
        ref = IpcRef(0, body if body is not None else wire())
        req = Request("call", 7, op, [ref], kw, {"out": out} if out else {})
        return handler.handle(req, session, 1)[0]

    synced: list[int] = []
    backend.synchronize = lambda: synced.append(1)  # type: ignore[method-assign]
    (alias,) = [call("reshape", shape=[8, 4])]
    assert isinstance(alias, IpcRef) and alias.index == 0
    assert synced == []  # a view of the client's memory: no kernel ran, nothing to wait for
    assert alias.body == {"dt": "float32", "off": 0, "sh": [8, 4], "st": [4, 1]}
    (t_alias,) = [call("transpose")]
    assert t_alias.body["st"] == [1, 8]
    same = call("identity")  # the argument itself comes back: the same view, found faster
    assert isinstance(same, IpcRef) and same.body == {**alias.body, "sh": [4, 8], "st": [8, 1]}
    inner = call("identity", body=wire(off=2, sh=[3, 8]))  # 2 elements into the storage
    assert inner.body == {"dt": "float32", "off": 8, "sh": [3, 8], "st": [8, 1]}
    negated = call("neg")
    assert isinstance(negated, np.ndarray) and negated[0, 1] == -1.0  # bytes, as for any call
    assert synced == [1]
    kept = call("identity", out="remote")
    client_memory[1] = 100.0
    assert float(session.store.get(kept)[0, 1]) == 1.0  # cloned: the client's writes stay out
    # What the client makes of the reply: a view of its own tensor, and a CUDA-side copy.
    enc = encode_payload([alias, t_alias, negated])
    dec = decode([enc.frames({"id": 7})[0], *enc.tensor_frames])
    view, tview, neg = ipc_results(dec.payload, [client_memory.reshape(4, 8)])
    assert view.untyped_storage().data_ptr() == client_memory.untyped_storage().data_ptr()
    assert view.shape == (8, 4) and float(view[0, 1]) == 100.0
    assert torch.equal(tview, client_memory.reshape(4, 8).T)
    assert isinstance(neg, torch.Tensor) and float(neg[0, 1]) == -1.0
    session.ipc.release([list(IpcDescriptor.from_wire(wire()).key)])
    assert len(session.ipc.leases) == 0


def test_handler_refusal_names_the_argument() -> None:
    backend = make_backend("numpy")
    call = IpcCall(9, None, "the client is on another host", backend)
    with pytest.raises(ProtocolError, match="request 9: CUDA IPC argument 2: .*another host"):
        call.open(IpcRef(2, wire()))
    with pytest.raises(ProtocolError, match="request 9: CUDA IPC argument 2: .*unsupported dtype"):
        call.open(IpcRef(2, wire(dt="object")))
    assert isinstance(call.to_reply(np.ones(2)), np.ndarray)


# ------------------------------------------------------------------ client bookkeeping


def test_client_releases_storages_it_dropped() -> None:
    from torch.multiprocessing.reductions import StorageWeakRef

    sender = IpcSender({"ipc": True})
    t = torch.ones(4)
    storage = t.untyped_storage()
    sender._shared[storage._cdata] = _Shared(StorageWeakRef(storage), {"h": b"h", "so": 0,
                                                                        "ss": 16}, 0.0)
    del storage
    view = t[1:]
    del t
    gc.collect()
    assert sender.take_released() is None  # a view still holds the storage
    del view
    gc.collect()
    assert sender.take_released() == [[b"h", 0, 16]]
    assert sender.take_released() is None


def test_client_checks_a_bounded_number_of_storages_per_request() -> None:
    from torch.multiprocessing.reductions import StorageWeakRef

    from tensorwire.client._cuda_ipc import RELEASE_SCAN

    sender = IpcSender({"ipc": True})
    tensors = [torch.ones(4) for _ in range(2 * RELEASE_SCAN + 8)]
    for i, t in enumerate(tensors):
        storage = t.untyped_storage()
        sender._shared[storage._cdata] = _Shared(StorageWeakRef(storage),
                                                 {"h": b"h", "so": i, "ss": 16}, 0.0)
    kept = tensors[5]
    del storage, t
    tensors.clear()
    gc.collect()
    released = []
    for _ in range(3):
        got = sender.take_released() or []
        assert len(got) <= RELEASE_SCAN  # never a scan of everything on one request
        released += got
    assert sorted(k[1] for k in released) == [i for i in range(2 * RELEASE_SCAN + 8) if i != 5]
    assert sender.take_released() is None and len(sender._shared) == 1  # the one still held
    del kept


def test_client_shares_a_storage_once_then_again_when_idle(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import tensorwire.client._cuda_ipc as client_ipc

    shares: list[int] = []

    def share(tensor: Any) -> dict[str, Any]:
        shares.append(1)
        return {"h": b"h", "so": 0, "ss": 64, "ro": len(shares)}

    clock = [1000.0]
    monkeypatch.setattr(client_ipc, "share_storage", share)
    monkeypatch.setattr(client_ipc.time, "monotonic", lambda: clock[0])
    sender = IpcSender({"ipc": True})
    t = torch.arange(16, dtype=torch.float32)
    first = sender.storage_map(t)
    assert sender.storage_map(t[4:]) is first and len(shares) == 1  # a view: same storage
    clock[0] += client_ipc.RESHARE_AFTER_S - 1
    assert sender.storage_map(t) is first  # used again: its clock starts over
    clock[0] += client_ipc.RESHARE_AFTER_S + 1  # idle longer: the server may have let go
    again = sender.storage_map(t)
    assert again["ro"] == 2 and len(shares) == 2 and len(sender._shared) == 1
    other = torch.ones(4)
    assert sender.storage_map(other)["ro"] == 3 and len(sender._shared) == 2
    del other
    gc.collect()
    assert sender.take_released() == [[b"h", 0, 64]] and len(sender._shared) == 1


def test_exporter_builds_descriptors_and_records_the_event_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import tensorwire.client._cuda_ipc as client_ipc

    monkeypatch.setattr(client_ipc, "_cuda_device", lambda obj: "cuda:0")  # CPU stand-ins
    monkeypatch.setattr(client_ipc, "exportable", lambda t: (t, "float32"))
    monkeypatch.setattr(client_ipc, "share_storage", lambda t: {"h": b"h", "so": 0, "ss": 64})
    recorded: list[Any] = []
    sender = IpcSender({"ipc": True})
    monkeypatch.setattr(sender, "event_handle", lambda d: recorded.append(d) or bytes(64))
    export = Export(sender, True)
    t = torch.arange(16, dtype=torch.float32)
    a, b = export(t.reshape(4, 4)), export(t[2:])
    assert (a.index, b.index) == (0, 1) and export.sent[1].shape == (14,)
    assert a.body == {"h": b"h", "so": 0, "ss": 64, "off": 0, "dt": "float32", "sh": [4, 4],
                      "st": [4, 1], "ev": bytes(64)}
    assert b.body["off"] == 2 and b.body["sh"] == [14]
    assert len(recorded) == 1  # one event record per device and request
    with pytest.raises(ProtocolError, match="only to call/submit"):
        Export(sender, False)(t)


def test_a_tensor_sent_again_reuses_its_reference_packed_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """One IpcRef per storage, view and position, packed by the codec once; another view or
    position is another reference, and a storage shared anew starts over."""
    import tensorwire.client._cuda_ipc as client_ipc

    clock = [1000.0]
    monkeypatch.setattr(client_ipc, "_cuda_device", lambda obj: "cuda:0")  # CPU stand-ins
    monkeypatch.setattr(client_ipc, "exportable", lambda t: (t, "float32"))
    monkeypatch.setattr(client_ipc, "share_storage", lambda t: {"h": b"h", "so": 0, "ss": 64})
    monkeypatch.setattr(client_ipc.time, "monotonic", lambda: clock[0])
    sender = IpcSender({"ipc": True})
    monkeypatch.setattr(sender, "event_handle", lambda d: bytes(64))
    t = torch.arange(16, dtype=torch.float32).reshape(4, 4)

    def send(*args: Any) -> list[IpcRef]:
        export = Export(sender, True)
        frames = encode_payload(list(args), exporter=export).frames({"id": 1})
        return decode(frames).payload  # type: ignore[no-any-return]

    first = Export(sender, True)(t)
    assert Export(sender, True)(t) is first and first.raw == b""
    (got,) = send(t)
    assert first.raw == got.raw == msgpack.packb([0, first.body]) and got.body == first.body
    assert Export(sender, True)(t) is first
    view, at_1 = Export(sender, True)(t[2:]), send(t[:1], t)[1]
    assert view is not first and view.body["off"] == 8 and at_1.index == 1
    t.t_()  # its view changed in place: another reference
    assert Export(sender, True)(t).body["st"] == [1, 4] and Export(sender, True)(t) is not first
    clock[0] += client_ipc.RESHARE_AFTER_S + 1  # shared anew: its references start over
    assert Export(sender, True)(t.t_()) is not first


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"dt": "float32", "off": 0, "sh": [5, 8], "st": [8, 1]}, "past the argument"),
        ({"dt": "float32", "off": 2, "sh": [1], "st": [1]}, "past the argument"),
        ({"dt": "object", "off": 0, "sh": [1], "st": [1]}, "malformed"),
        ({"dt": "float32", "off": 0, "sh": [1, 1], "st": [1]}, "malformed"),
        ({"dt": "float32", "off": -4, "sh": [1], "st": [1]}, "malformed"),
    ],
)
def test_client_checks_aliases(body: dict[str, Any], message: str) -> None:
    arg = torch.zeros(32)
    for refs in (None, sent_as(arg)):
        with pytest.raises(ProtocolError, match=message):
            ipc_results([IpcRef(0, body)], [arg], refs=refs)
        with pytest.raises(ProtocolError, match="argument 1; 1 were sent"):
            ipc_results(IpcRef(1, body), [arg], refs=refs)


def sent_as(arg: Any) -> list[IpcRef]:
    """The reference a client sent `arg` as (its view part is what the alias check reads)."""
    return [IpcRef(0, {"h": b"h", **view_fields(arg, "float32")})]


@pytest.mark.parametrize("with_refs", [False, True], ids=["by the tensor", "by its reference"])
def test_alias_of_the_argument_itself_is_a_new_tensor_on_it(with_refs: bool) -> None:
    """The usual reply (identity) describes the argument exactly: rebuilt without bounds
    checks, as a new tensor on the same memory; any other view gets every check. The client
    knows it from the reference it sent (its offset counts elements, the alias's bytes)."""
    arg = torch.arange(40, dtype=torch.float32)[8:].view(4, 8).t()  # offset, non-contiguous
    refs = sent_as(arg) if with_refs else None
    body = {"dt": "float32", "off": 32, "sh": [8, 4], "st": [1, 8]}
    got = ipc_results(IpcRef(0, body), [arg], refs=refs)
    assert got is not arg and got.data_ptr() == arg.data_ptr() and not got.requires_grad
    assert got.shape == arg.shape and got.stride() == arg.stride() and torch.equal(got, arg)
    arg[0, 0] = -1.0
    assert got[0, 0] == -1.0
    as_int = ipc_results(IpcRef(0, {**body, "dt": "int32"}), [arg], refs=refs)
    assert as_int.dtype == torch.int32 and as_int.data_ptr() == arg.data_ptr()
    with pytest.raises(ProtocolError, match="past the argument"):
        ipc_results(IpcRef(0, {**body, "off": 36}), [arg], refs=refs)
    row = ipc_results(IpcRef(0, {**body, "sh": [4], "st": [8]}), [arg], refs=refs)
    assert row.data_ptr() == arg.data_ptr() and torch.equal(row, arg[0])


# ------------------------------------------------------------ exported results (CPU stand-ins)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _fake_share(counter: list[int]) -> Any:
    def share(tensor: Any) -> dict[str, Any]:
        counter[0] += 1
        body = descriptor(ro=counter[0])
        for key in ("off", "dt", "sh", "st"):
            body.pop(key)
        return body

    return share


def test_exports_are_taken_back_unless_acknowledged(monkeypatch: pytest.MonkeyPatch) -> None:
    released: list[tuple[str, int]] = []
    clock, slots = FakeClock(), [0]
    exports = IpcExports(60.0, share=_fake_share(slots), clock=clock,
                         release=lambda rc, ro: released.append((rc, ro)))
    assert not exports.wants(torch.ones(1 << 20))  # not on CUDA
    with pytest.raises(CudaIpcRefused):  # only CUDA tensors can be shared
        exports.export(torch.ones(4))
    import tensorwire.server._ipc as server_ipc

    monkeypatch.setattr(server_ipc, "exportable", lambda t: (t, "float32"))
    refs = [exports.export(torch.ones(4, 8)) for _ in range(3)]
    assert [r.body["ro"] for r in refs] == [1, 2, 3] and len(exports) == 3
    assert refs[0].body["sh"] == [4, 8] and refs[0].body["h"]  # a full descriptor
    exports.acknowledged([[RC, 1]])  # the client opened the first
    clock.now += 30
    assert exports.reap() == 0
    clock.now += 31
    assert exports.reap() == 2 and released == [(RC, 2), (RC, 3)] and len(exports) == 0
    for bad in ("x", [[RC]], [[1, 2]], [[RC, "1"]], [[RC, 1]] * 5000):
        with pytest.raises(ProtocolError):
            exports.acknowledged(bad)
    exports.export(torch.ones(2))
    exports.close()  # the session ended: nothing unacknowledged stays reserved
    assert released[-1] == (RC, 4) and len(exports) == 0


class RecordingExports(IpcExports):
    """Exports every torch tensor of 64 bytes or more, without CUDA."""

    def __init__(self) -> None:
        super().__init__(share=lambda t: {})
        self.exported: list[Any] = []

    def wants(self, value: Any) -> bool:
        return isinstance(value, torch.Tensor) and value.numel() * value.element_size() >= 64

    def export(self, tensor: Any) -> IpcRef:
        self.exported.append(tensor)
        return IpcRef(0, {"h": b"handle", "sh": list(tensor.shape)})


def test_handler_exports_new_results_only(tmp_path: Path) -> None:
    backend = make_backend("torch", "cpu")
    sessions = Sessions(backend, enabled=False)
    registry = default_registry()
    registry.register("second", lambda a, b: b)  # returns a (resident) argument as it is
    handler = Handler(registry, backend, sessions)
    sid = sessions.hello({"host": host_token(), "pid": PID, "shm": 0})["session"]
    session = sessions.get({"s": sid})
    assert session is not None
    client_memory = torch.arange(32, dtype=torch.float32)
    session.ipc, session.ipc_refusal = _imports(tmp_path, client_memory), ""
    session.exports = exports = RecordingExports()
    resident = session.store.add(torch.ones(4, 8))

    def call(op: str, *extra: Any) -> Any:
        req = Request("call", 7, op, [IpcRef(0, wire()), *extra], {}, {})
        return handler.handle(req, session, 1 + len(extra))[0]

    assert isinstance(call("transpose"), IpcRef) and exports.exported == []  # an alias
    negated = call("neg")  # new memory: exported, not copied
    assert isinstance(negated, IpcRef) and negated.body["h"] == b"handle"
    assert len(exports.exported) == 1 and float(exports.exported[0][0, 1]) == -1.0
    assert isinstance(call("add", resident), IpcRef) and len(exports.exported) == 2
    # The resident tensor itself must not be handed out for the client to write into.
    same = call("second", resident)
    assert isinstance(same, np.ndarray) and len(exports.exported) == 2
    req = Request("call", 8, "neg", [resident], {}, {})
    plain = handler.handle(req, session, 1)[0]  # no CUDA IPC argument: bytes, as ever
    assert isinstance(plain, np.ndarray) and len(exports.exported) == 2


def test_client_maps_exported_results_and_acknowledges(tmp_path: Path) -> None:
    opened: list[dict[str, Any]] = []

    def open_result(body: dict[str, Any]) -> Any:
        opened.append(body)
        return torch.full((2,), 7.0)

    exported = IpcRef(0, wire())
    (got,) = ipc_results([exported], [torch.zeros(32)], open_result)
    assert opened == [exported.body] and torch.equal(got, torch.full((2,), 7.0))
    with pytest.raises(ProtocolError, match="exported CUDA result"):
        ipc_results(exported, [torch.zeros(32)])
    sender = IpcSender({"ipc": True})  # a server that names no pid
    with pytest.raises(ProtocolError, match="without naming its process"):
        sender.open_result(wire())
    sender = IpcSender({"ipc": True, "pid": PID})
    with pytest.raises(ProtocolError, match="ref-counter file does not exist"):
        sender.open_result(wire())  # not on this host: the server takes its slot back
    assert sender.take_acks() is None
    with pytest.raises(ProtocolError, match="cannot map"):
        sender.open_result(wire(pid=PID + 1, rc=f"/torch_{PID + 1}_1_1"))
    assert sender.take_acks() is None


def test_sessions_export_only_where_ipc_is_accepted() -> None:
    class CudaNamed:  # hello needs only the backend's device name
        device = "cuda:0"

    sessions = Sessions(CudaNamed(), enabled=False)  # type: ignore[arg-type]
    released: list[tuple[str, int]] = []
    plain = sessions.hello({"host": host_token(), "pid": os.getpid() + 1, "shm": 0})
    assert plain["ipc"] is True and "pid" not in plain  # results are copied unless asked
    copying = sessions.get({"s": plain["session"]})
    assert copying is not None and copying.exports is None
    reply = sessions.hello({"host": host_token(), "pid": os.getpid() + 1, "shm": 0, "xr": True})
    assert reply["ipc"] is True and reply["pid"] == os.getpid()
    session = sessions.get({"s": reply["session"]})
    assert session is not None and session.exports is not None
    session.exports._release = lambda rc, ro: released.append((rc, ro))
    session.exports._pending[(RC, 9)] = 0.0  # long expired
    session.local = False
    sessions._next_reap = 0.0
    sessions.reap()
    assert released == [(RC, 9)]
    session.exports._pending[(RC, 10)] = 1e18
    sessions.bye({"s": reply["session"]})
    assert released == [(RC, 9), (RC, 10)]
    cpu = Sessions(make_backend("numpy"), enabled=False)
    reply = cpu.hello({"host": host_token(), "pid": os.getpid() + 1, "shm": 0, "xr": True})
    assert reply["ipc"] is False and "pid" not in reply
    session = cpu.get({"s": reply["session"]})
    assert session is not None and session.exports is None


def test_a_storage_sent_again_is_a_new_tensor_each_time(tmp_path: Path) -> None:
    """The tensor first opened, sent again, is a new tensor on the same memory and view: an
    op that changes its argument's view in place changes nothing for later requests."""
    client_memory = torch.arange(64, dtype=torch.float32)
    imports = _imports(tmp_path, client_memory)
    first = imports.open(wire(ss=256, sh=[8, 8], st=[8, 1]))
    again = imports.open(wire(ss=256, sh=[8, 8], st=[8, 1]))
    assert again is not first and again.data_ptr() == first.data_ptr()
    assert again.shape == (8, 8) and again.stride() == (8, 1)
    again.t_()
    first.t_()
    assert imports.open(wire(ss=256, sh=[8, 8], st=[8, 1])).stride() == (8, 1)
    assert imports.open(wire(ss=256, off=8, sh=[8], st=[1])).tolist() == list(range(8, 16))


def test_a_map_received_again_in_the_same_bytes_is_not_checked_again(tmp_path: Path) -> None:
    """A decoded reference keeps its bytes; the same bytes again (one tensor sent call after
    call) reuse the checks they passed, until their import is dropped."""
    body = wire(ss=256, sh=[8, 8], st=[8, 1])
    enc = encode_payload([IpcRef(0, body)])
    (ref,) = decode(enc.frames({"id": 1})).payload
    assert ref.raw == msgpack.packb([0, body]) and ref.body == body
    imports = _imports(tmp_path, torch.arange(64, dtype=torch.float32))
    first = imports.open(ref.body, raw=ref.raw)
    again = imports.open({}, raw=ref.raw)  # not even read: these bytes passed before
    assert again is not first and again.data_ptr() == first.data_ptr()
    assert again.shape == (8, 8) and again.stride() == (8, 1)
    with pytest.raises(CudaIpcRefused, match="version"):
        imports.open({}, raw=b"other bytes")
    (key,) = imports.leases.keys()
    assert imports.release([list(key)]) == 1
    with pytest.raises(CudaIpcRefused, match="version"):  # dropped: checked anew
        imports.open({}, raw=ref.raw)
    assert imports.open(ref.body, raw=ref.raw).shape == (8, 8)


def test_aliases_in_another_dtype_share_the_memory(tmp_path: Path) -> None:
    """A view in the argument's dtype is made with as_strided, one in another dtype (a custom
    op's .view(torch.int32), say) on the storage itself: both alias the same memory, on the
    client (the reply) and on the server (a second argument on an opened storage)."""
    base = torch.arange(8, dtype=torch.float32)
    same = ipc_results(IpcRef(0, {"dt": "float32", "off": 8, "sh": [2, 2], "st": [1, 2]}),
                       [base])
    other = ipc_results(IpcRef(0, {"dt": "int32", "off": 4, "sh": [3], "st": [1]}), [base])
    assert same.tolist() == [[2.0, 4.0], [3.0, 5.0]]
    assert other.dtype == torch.int32 and other.tolist() == base[1:4].view(torch.int32).tolist()
    base[2] = -1.0
    assert same[0, 0] == -1.0 and other[1] == base[2:3].view(torch.int32)[0]

    client_memory = torch.arange(64, dtype=torch.float32)
    imports = _imports(tmp_path, client_memory)
    first = imports.open(wire(ss=256, sh=[8, 8], st=[8, 1]))
    as_float = imports.open(wire(ss=256, off=4, sh=[4], st=[2]))
    as_int = imports.open(wire(ss=256, off=1, dt="int32", sh=[2], st=[1]))
    assert as_float.tolist() == [4.0, 6.0, 8.0, 10.0] and as_int.dtype == torch.int32
    client_memory[1] = 0.0  # int32 0 has the bits of float32 0.0
    assert as_int[0] == 0 and first[0, 1] == 0.0
    with pytest.raises(CudaIpcRefused, match="reaches past"):
        imports.open(wire(ss=256, off=60, sh=[2], st=[4]))
