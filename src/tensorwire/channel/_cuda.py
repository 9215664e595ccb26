"""CUDA helpers of the channel: page-locked arenas and CUDA IPC (same host, same GPU).

Pinned arenas
-------------
``register_host(buffer)`` page-locks a shared-memory arena with ``cudaHostRegister`` so that
host-to-device copies out of it run as DMA at full bandwidth (and may be asynchronous);
``unregister_host(handle)`` undoes it and must run before the segment is unmapped. The
handle holds a view of the buffer, so the mapping cannot disappear while it is registered.
``is_registered(ptr, nbytes)`` tells the torch backend whether a source array lies in a
registered range. Without CUDA (or torch) every call is a no-op and ``is_registered`` is
False: the CPU path is unchanged.

CUDA IPC
--------
A same-host client holding a torch CUDA tensor sends an :class:`IpcDescriptor` instead of the
bytes; the server opens it with ``open_ipc``. The descriptor carries what torch's own
``_share_cuda_`` produces (the allocation's shareable handle, the storage's byte offset and
size inside it, torch's producer ref-counter slot, an IPC event to wait on) plus the tensor's
dtype, shape, strides and element offset, the producer's pid and the GPU's UUID.
Everything is validated before anything is opened; notably:

- the handle must be a plain ``cudaMalloc`` handle: memory from expandable segments (VMM) or
  ``cudaMallocAsync`` cannot be imported by an unprivileged process and is refused with
  :class:`CudaIpcRefused`, never copied through the host behind the caller's back;
- the tensor's extent must lie inside the storage (no read past what the client shared);
- torch's consumer-side deleter decrements an int64 in a shared-memory file *named by the
  producer*; the name must be torch's pattern for the producer's pid, the slot index must be
  inside torch's counter file, and the file must be a regular file of the right size owned
  by this user. Otherwise a client could make the server write into any segment.

:class:`LeaseTable` keeps exported or imported tensors alive for a TTL (renewed on use) and
runs ``torch.cuda.ipc_collect()`` after dropping any, so memory a dead peer held comes back.
Nothing here is ever pickled; descriptors travel as plain msgpack maps.

Where it is wired in: the codec carries a descriptor as ``codec.IpcRef`` (EXT_CUDA_IPC); the
client exports torch CUDA arguments in same-host sessions of a CUDA server
(``client._cuda_ipc``), keeps them alive until the reply and tells the server, with its next
request ("fi"), which storages it dropped so their imports go at once instead of on expiry;
the server opens them with the session's :class:`IpcImports` (``server._ipc``), reaped with
the sessions and closed when a session ends. Only the GPU-free parts have run so far (see
tests/test_gpu.py); the rest is written against torch's ``multiprocessing.reductions``.
"""

from __future__ import annotations

import bisect
import logging
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from ..codec import native_name
from ..errors import ProtocolError
from ._errors import ChannelError

log = logging.getLogger("tensorwire.channel")

__all__ = [
    "IPC_VERSION",
    "CudaIpcRefused",
    "HostRegistration",
    "IpcDescriptor",
    "LeaseTable",
    "allocator_refusal",
    "cuda_available",
    "export_ipc",
    "exportable",
    "is_registered",
    "open_ipc",
    "register_host",
    "registered_bytes",
    "share_storage",
    "unregister_host",
]

IPC_VERSION = 1
HANDLE_VERSION = 2  # torch's shareable-handle format: version byte, type byte, payload
HANDLE_CUDA_MALLOC = ord("c")
HANDLE_EXPANDABLE = ord("e")
CUDA_IPC_HANDLE_SIZE = 64  # cudaIpcMemHandle_t / cudaIpcEventHandle_t
REF_COUNTER_SLOTS = 10000  # torch::CUDA_IPC_REF_COUNTER_FILE_SIZE (int64 slots per file)
# torch maps the counter file with a RefcountedMapAllocator, whose small header precedes
# the slots: the file is a little larger than the slots alone.
REF_COUNTER_HEADER_MAX = 4096
MAX_DIMS = 32
MAX_DEVICES = 64
MAX_RELEASES = 4096  # imports one request may release
SHM_DIR = "/dev/shm"
_REF_COUNTER_NAME = re.compile(r"^/torch_(\d{1,10})_(\d{1,20})_(\d{1,20})$")
_UUID = re.compile(r"^[0-9A-Za-z-]{1,64}$")
# dtype names a descriptor may carry (torch spelling without "torch."), and their sizes.
ITEMSIZE = {
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4,
    "int16": 2, "int8": 1, "uint8": 1, "bool": 1, "complex64": 8, "complex128": 16,
}  # fmt: skip


class CudaIpcRefused(ChannelError):
    """A CUDA IPC descriptor (or tensor to export) cannot be used; the message says why."""


def cuda_available() -> bool:
    """torch imports and sees a CUDA device (without importing torch when it is absent)."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


# -------------------------------------------------------------------- pinned host memory


@dataclass
class HostRegistration:
    """One page-locked range; ``active`` is False when registration was a no-op."""

    ptr: int
    size: int
    active: bool
    reason: str = ""  # why it is not active ("no CUDA device", the CUDA error, ...)
    _view: Any = field(default=None, repr=False)  # keeps the mapping alive while registered
    _runtime: Any = field(default=None, repr=False)


_ranges_lock = threading.Lock()
_starts: list[int] = []  # sorted starts of registered ranges
_ends: dict[int, int] = {}  # start -> end


def _buffer_view(buffer: Any) -> np.ndarray:
    view = np.frombuffer(buffer, dtype=np.uint8) if not isinstance(buffer, np.ndarray) else buffer
    if not (view.flags.c_contiguous or view.flags.f_contiguous):
        raise ValueError("only a contiguous buffer can be page-locked")
    return view.reshape(-1).view(np.uint8) if view.ndim != 1 or view.dtype != np.uint8 else view


def _cudart() -> Any:
    import torch

    return torch.cuda.cudart()  # type: ignore[no-untyped-call]


def register_host(buffer: Any, *, runtime: Any = None) -> HostRegistration:
    """Page-lock ``buffer`` (an mmap, memoryview or contiguous numpy array) for DMA.

    ``runtime`` is an object with ``cudaHostRegister(ptr, size, flags) -> int`` and
    ``cudaHostUnregister(ptr) -> int`` (default: ``torch.cuda.cudart()`` when CUDA is
    available). Without CUDA, or when the driver refuses (RLIMIT_MEMLOCK, say), the
    registration is inactive and says why; copies from that memory are then pageable and
    the trace says so ("h2d": "pageable").
    """
    view = _buffer_view(buffer)
    ptr, size = int(view.ctypes.data), int(view.nbytes)
    if runtime is None:
        if not cuda_available():
            return HostRegistration(ptr, size, False, "no CUDA device")
        runtime = _cudart()
    if size == 0:
        return HostRegistration(ptr, size, False, "empty buffer")
    code = int(runtime.cudaHostRegister(ptr, size, 0))  # 0: cudaHostRegisterDefault
    if code != 0:
        reason = f"cudaHostRegister failed with CUDA error {code}"
        log.warning("arena not page-locked (%s); host-to-device copies stay pageable", reason)
        return HostRegistration(ptr, size, False, reason)
    with _ranges_lock:
        if ptr in _ends:  # the same range twice: keep the larger extent
            _ends[ptr] = max(_ends[ptr], ptr + size)
        else:
            bisect.insort(_starts, ptr)
            _ends[ptr] = ptr + size
    return HostRegistration(ptr, size, True, "", view, runtime)


def unregister_host(handle: HostRegistration | None) -> None:
    """Undo ``register_host`` (idempotent); call it before the segment is unmapped."""
    if handle is None or not handle.active:
        return
    handle.active = False
    with _ranges_lock:
        if _ends.pop(handle.ptr, None) is not None:
            _starts.remove(handle.ptr)
    try:
        code = int(handle._runtime.cudaHostUnregister(handle.ptr))
        if code != 0:
            log.warning("cudaHostUnregister failed with CUDA error %d", code)
    finally:
        handle._view = handle._runtime = None


def is_registered(ptr: int, nbytes: int) -> bool:
    """Whether [ptr, ptr + nbytes) lies inside one registered range (cheap: one bisect)."""
    with _ranges_lock:
        i = bisect.bisect_right(_starts, ptr) - 1
        return i >= 0 and ptr + nbytes <= _ends[_starts[i]]


def registered_bytes() -> int:
    with _ranges_lock:
        return sum(_ends[s] - s for s in _starts)


# -------------------------------------------------------------------- allocator checks


def allocator_refusal(conf: str | None = None, backend: str | None = None) -> str | None:
    """Why this process's CUDA memory cannot be exported by IPC, or None if it can.

    ``conf`` defaults to ``PYTORCH_CUDA_ALLOC_CONF`` / ``PYTORCH_ALLOC_CONF`` (and torch's
    live allocator settings when available); ``backend`` to torch's allocator backend.
    """
    if conf is None:
        conf = ",".join(v for v in (os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
                                     os.environ.get("PYTORCH_ALLOC_CONF"),
                                     _live_settings()) if v)
    for item in re.split(r"[,\s]+", conf):
        key, _, value = item.partition(":")
        key, value = key.strip().lower(), value.strip().lower()
        if key == "expandable_segments" and value in ("true", "1"):
            return ("expandable_segments is on (PYTORCH_CUDA_ALLOC_CONF): memory from "
                    "expandable segments (CUDA VMM) cannot be shared by CUDA IPC from an "
                    "unprivileged process; set expandable_segments:False for tensors you "
                    "send, or send them through shared memory")
        if key == "backend" and value == "cudamallocasync":
            backend = "cudaMallocAsync"
    if backend is None:
        backend = _live_backend()
    if backend not in (None, "native"):
        return (f"the {backend} CUDA allocator's memory cannot be shared by cudaIpcGetMemHandle; "
                "use the native caching allocator for tensors you send")
    return None


def _live_settings() -> str:
    try:
        import torch

        get = getattr(torch._C, "_accelerator_getAllocatorSettings", None)
        return str(get()) if get is not None else ""
    except Exception:  # noqa: BLE001 (best effort: the env is checked anyway)
        return ""


def _live_backend() -> str | None:
    if not cuda_available():
        return None
    import torch

    return str(torch.cuda.memory.get_allocator_backend())


# -------------------------------------------------------------------- IPC descriptor


def _int(d: dict[str, Any], key: str, lo: int, hi: int) -> int:
    v = d.get(key)
    if type(v) is not int or not lo <= v <= hi:
        raise CudaIpcRefused(f"CUDA IPC descriptor: {key!r} must be an int in [{lo}, {hi}]")
    return v


def _bytes(d: dict[str, Any], key: str, lo: int, hi: int, *, optional: bool = False) -> bytes:
    v = d.get(key)
    if v is None and optional:
        return b""
    if type(v) is not bytes or not lo <= len(v) <= hi:
        raise CudaIpcRefused(f"CUDA IPC descriptor: {key!r} must be {lo}..{hi} bytes")
    return v


def _ints(d: dict[str, Any], key: str, lo: int) -> tuple[int, ...]:
    v = d.get(key)
    if not isinstance(v, list | tuple) or len(v) > MAX_DIMS:
        raise CudaIpcRefused(f"CUDA IPC descriptor: {key!r} must be a list of at most "
                             f"{MAX_DIMS} ints")
    for x in v:  # a plain loop: this runs for every CUDA argument of every call
        if type(x) is not int or x < lo or x > _MAX_INT:
            raise CudaIpcRefused(f"CUDA IPC descriptor: {key!r} must hold ints >= {lo}")
    return tuple(v)


_MAX_INT = 1 << 62


class View(NamedTuple):
    """Where one tensor lies in a shared storage (offset in elements), and the producer's
    event to wait on (b"": none)."""

    offset: int
    dtype: str
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    event: bytes


def _view_part(d: dict[str, Any]) -> View:
    """The per-tensor fields of a descriptor map, validated (not yet against the storage)."""
    dtype = d.get("dt")
    if dtype not in ITEMSIZE:
        raise CudaIpcRefused(f"CUDA IPC descriptor: unsupported dtype {dtype!r}")
    shape, strides = _ints(d, "sh", 0), _ints(d, "st", 0)
    if len(shape) != len(strides):
        raise CudaIpcRefused("CUDA IPC descriptor: shape and strides differ in length")
    return View(_int(d, "off", 0, 1 << 62), dtype, shape, strides,
                _bytes(d, "ev", CUDA_IPC_HANDLE_SIZE, CUDA_IPC_HANDLE_SIZE, optional=True))


def _check_extent(view: View | IpcDescriptor, storage_size: int) -> None:
    """The tensor's last element must lie inside the storage the client shared."""
    last = view.offset
    for n, st in zip(view.shape, view.strides, strict=True):
        if n == 0:
            return  # no elements: nothing to reach
        last += (n - 1) * st
    if (last + 1) * ITEMSIZE[view.dtype] > storage_size:
        raise CudaIpcRefused("CUDA IPC descriptor: the tensor reaches past its storage")


def check_handle(handle: bytes) -> None:
    """Refuse shareable handles other than torch's plain cudaMalloc kind, with the reason."""
    if len(handle) < 2 or handle[0] != HANDLE_VERSION:
        raise CudaIpcRefused("CUDA IPC handle of an unknown format (a different torch "
                             "version on the client?)")
    if handle[1] == HANDLE_EXPANDABLE:
        raise CudaIpcRefused("the client's tensor lives in expandable segments (CUDA VMM), "
                             "which cannot be imported by CUDA IPC here; the client must set "
                             "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:False for tensors "
                             "it sends, or send them through shared memory")
    if handle[1] != HANDLE_CUDA_MALLOC or len(handle) != 2 + CUDA_IPC_HANDLE_SIZE:
        raise CudaIpcRefused("CUDA IPC handle of an unsupported kind")


@dataclass(frozen=True)
class IpcDescriptor:
    """A torch CUDA tensor shared by IPC; ``to_wire``/``from_wire`` give the msgpack map."""

    device: int  # the producer's device index (informative: the UUID decides)
    uuid: str  # the GPU's UUID: the server opens it on its device with the same UUID
    handle: bytes  # torch's shareable handle of the allocation (66 bytes, kind 'c')
    storage_offset: int  # bytes: where the storage starts inside the allocation
    storage_size: int  # bytes of the storage
    offset: int  # elements: where the tensor starts inside the storage
    dtype: str
    shape: tuple[int, ...]
    strides: tuple[int, ...]  # elements
    ref_counter: str  # torch's producer ref-counter file ("/torch_<pid>_<n>_<n>")
    ref_offset: int  # int64 slot in that file
    event: bytes  # cudaIpcEventHandle to wait on before reading; b"" for none
    pid: int  # the producer's pid

    def to_wire(self) -> dict[str, Any]:
        return {
            "v": IPC_VERSION, "dev": self.device, "uuid": self.uuid, "h": self.handle,
            "so": self.storage_offset, "ss": self.storage_size, "off": self.offset,
            "dt": self.dtype, "sh": list(self.shape), "st": list(self.strides),
            "rc": self.ref_counter, "ro": self.ref_offset, "ev": self.event or None,
            "pid": self.pid,
        }  # fmt: skip

    @classmethod
    def from_wire(cls, d: Any, *, max_bytes: int = 1 << 40) -> IpcDescriptor:
        """Validate a received map; CudaIpcRefused names the first problem."""
        if not isinstance(d, dict):
            raise CudaIpcRefused("CUDA IPC descriptor must be a map")
        if d.get("v") != IPC_VERSION:
            raise CudaIpcRefused(f"CUDA IPC descriptor version {d.get('v')!r} is not "
                                 f"{IPC_VERSION}")
        uuid = d.get("uuid")
        if not isinstance(uuid, str) or not _UUID.match(uuid):
            raise CudaIpcRefused("CUDA IPC descriptor: 'uuid' must name a GPU")
        handle = _bytes(d, "h", 2, 4096)
        check_handle(handle)
        rc = d.get("rc")
        if not isinstance(rc, str):
            raise CudaIpcRefused("CUDA IPC descriptor: 'rc' must be torch's ref-counter name")
        desc = cls(
            device=_int(d, "dev", 0, MAX_DEVICES - 1), uuid=uuid, handle=handle,
            storage_offset=_int(d, "so", 0, 1 << 62), storage_size=_int(d, "ss", 0, max_bytes),
            ref_counter=rc, ref_offset=_int(d, "ro", 0, REF_COUNTER_SLOTS - 1),
            pid=_int(d, "pid", 1, (1 << 31) - 1), **_view_part(d)._asdict(),
        )  # fmt: skip
        _check_extent(desc, desc.storage_size)
        desc._check_ref_counter_name()
        return desc

    def view_of(self, d: dict[str, Any]) -> View:
        """The (validated) view and event of another map on this same storage export: all
        a storage seen before needs, without a whole descriptor (~3 us less per argument)."""
        view = _view_part(d)
        _check_extent(view, self.storage_size)
        return view

    @property
    def key(self) -> tuple[bytes, int, int]:
        """What the importing side caches an opened storage under (and releases by)."""
        return (self.handle, self.storage_offset, self.storage_size)

    @property
    def nbytes(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n * ITEMSIZE[self.dtype]

    def _check_ref_counter_name(self) -> None:
        m = _REF_COUNTER_NAME.match(self.ref_counter)
        if m is None or int(m.group(1)) != self.pid:
            raise CudaIpcRefused("CUDA IPC descriptor: 'rc' is not the producer's torch "
                                 "ref-counter")


def check_ref_counter_file(desc: IpcDescriptor, *, shm_dir: str = SHM_DIR,
                           expected_pid: int | None = None) -> None:
    """The file torch's deleter will write into must be the producer's counter file.

    It must exist as a regular file (not a link) of torch's size, owned by this user; with
    ``expected_pid`` (the session's client pid) the producer pid must match it.
    """
    if expected_pid is not None and desc.pid != expected_pid:
        raise CudaIpcRefused("CUDA IPC descriptor comes from another process than this "
                             "session's client")
    path = os.path.join(shm_dir, desc.ref_counter.lstrip("/"))
    try:
        st = os.lstat(path)
    except OSError:
        raise CudaIpcRefused("CUDA IPC: the producer's ref-counter file does not exist "
                             "(is the client on this host?)") from None
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
        raise CudaIpcRefused("CUDA IPC: the producer's ref-counter file is not a regular "
                             "file owned by this user")
    if not 8 * REF_COUNTER_SLOTS <= st.st_size <= 8 * REF_COUNTER_SLOTS + REF_COUNTER_HEADER_MAX:
        raise CudaIpcRefused("CUDA IPC: the producer's ref-counter file has the wrong size")


# -------------------------------------------------------------------- export / import


def _uuid_of(index: int) -> str:
    import torch

    return str(torch.cuda.get_device_properties(index).uuid)


def local_device_for(uuid: str, *, uuids: list[str] | None = None) -> int:
    """This process's device index for a GPU UUID; CudaIpcRefused when it is not visible."""
    if uuids is None:
        import torch

        uuids = [_uuid_of(i) for i in range(torch.cuda.device_count())]
    for i, u in enumerate(uuids):
        if u == uuid:
            return i
    raise CudaIpcRefused("CUDA IPC: the client's GPU is not visible to this server (CUDA IPC "
                         "works only between processes on the same GPU and host)")


def exportable(tensor: Any) -> tuple[Any, str]:
    """(tensor, its dtype's name) when it can be sent by CUDA IPC; CudaIpcRefused says why not.

    Checks the tensor itself (cheap, per call); ``share_storage`` checks its memory."""
    import torch

    if not isinstance(tensor, torch.Tensor) or not tensor.is_cuda:
        raise CudaIpcRefused("only torch CUDA tensors can be sent by CUDA IPC")
    if tensor.layout != torch.strided or tensor.is_nested:
        raise CudaIpcRefused("only dense (strided) tensors can be sent by CUDA IPC")
    if tensor.requires_grad:
        tensor = tensor.detach()
    if tensor.is_conj() or tensor.is_neg():
        # A lazy conjugate or negation is a bit on the tensor, not in its memory, and only
        # the memory is shared: the server would compute on the unconjugated values.
        tensor = tensor.resolve_conj().resolve_neg()  # a copy on the GPU, sent instead
    dtype = native_name(tensor.dtype)
    if dtype not in ITEMSIZE:
        raise CudaIpcRefused(f"dtype {dtype} cannot be sent by CUDA IPC")
    return tensor, dtype


def share_storage(tensor: Any) -> dict[str, Any]:
    """The storage half of a descriptor's wire map (torch's ``_share_cuda_``), the client side.

    Each call takes a new slot in torch's producer ref-counter file, which the importer
    releases: share a storage once and reuse the map for every tensor on it. The caller keeps
    the storage alive (and unmodified) until the server released it; torch's producer
    bookkeeping additionally keeps the memory out of reuse until the consumer drops it
    (``torch.cuda.ipc_collect()`` frees it afterwards). "ev" is torch's IPC event, to wait on
    before reading, or None.
    """
    reason = allocator_refusal()
    if reason is not None:
        raise CudaIpcRefused(reason)
    storage = tensor.untyped_storage()
    try:
        (device, handle, size, offset, ref_counter, ref_offset, event, event_required) = (
            storage._share_cuda_()
        )
    except RuntimeError as exc:  # memory torch's caching allocator does not own, say
        raise CudaIpcRefused("torch cannot share this tensor's memory by CUDA IPC (was it "
                             "allocated outside torch's caching allocator? .clone() it "
                             f"first): {str(exc).splitlines()[0][:200]}") from None
    if handle is None:
        raise CudaIpcRefused("an empty CUDA tensor has no memory to share")
    check_handle(bytes(handle))
    return {
        "v": IPC_VERSION, "dev": int(device), "uuid": _uuid_of(int(device)), "h": bytes(handle),
        "so": int(offset), "ss": int(size), "rc": bytes(ref_counter).decode(),
        "ro": int(ref_offset), "ev": bytes(event) if event_required else None,
        "pid": os.getpid(),
    }  # fmt: skip


def view_fields(tensor: Any, dtype: str) -> dict[str, Any]:
    """The tensor half of a descriptor's wire map: where the tensor lies in its storage."""
    return {"off": int(tensor.storage_offset()), "dt": dtype, "sh": list(tensor.shape),
            "st": list(tensor.stride())}


def export_ipc(tensor: Any) -> IpcDescriptor:
    """The descriptor of a torch CUDA tensor (the client side). Refuses what cannot travel."""
    tensor, dtype = exportable(tensor)
    return IpcDescriptor.from_wire({**share_storage(tensor), **view_fields(tensor, dtype)})


def open_ipc(desc: IpcDescriptor, *, expected_pid: int | None = None,
             shm_dir: str = SHM_DIR, stream: Any = None, wait_event: bool = True) -> Any:
    """Open a validated descriptor as a torch tensor on this server's device (the server side).

    With ``wait_event``, waits (on ``stream``, else the current stream) for the producer's
    event when it sent one; ``IpcImports`` waits itself, on events it keeps open. The tensor
    aliases the client's memory: drop it (or let its lease expire) promptly.
    """
    import torch

    if not torch.cuda.is_available():
        raise CudaIpcRefused("CUDA IPC: this server has no CUDA device")
    check_ref_counter_file(desc, shm_dir=shm_dir, expected_pid=expected_pid)
    index, storage = _open_storage(desc, stream)
    with torch.cuda.device(index):
        _check_allocation(storage.data_ptr(), desc.storage_size)
        out = torch.empty(0, dtype=getattr(torch, desc.dtype), device=f"cuda:{index}")
        out.set_(storage, desc.offset, desc.shape, desc.strides)
    if wait_event and desc.event:
        event = torch.cuda.Event.from_ipc_handle(out.device, desc.event)  # type: ignore[no-untyped-call]
        (stream or torch.cuda.current_stream(out.device)).wait_event(event)
    return out


def _open_storage(desc: IpcDescriptor, stream: Any) -> tuple[int, Any]:
    """torch's ``_new_shared_cuda`` on the GPU with the descriptor's UUID (the event is
    waited on by the caller).

    Until a storage owns the producer's counter slot, a failure must give the slot back.
    """
    import torch

    try:
        index = local_device_for(desc.uuid)
        ctx = torch.cuda.stream(stream) if stream is not None else torch.cuda.device(index)
        with torch.cuda.device(index), ctx:
            storage = torch.UntypedStorage._new_shared_cuda(
                index, desc.handle, desc.storage_size, desc.storage_offset,
                desc.ref_counter.encode(), desc.ref_offset, bytes(CUDA_IPC_HANDLE_SIZE), False,
            )  # fmt: skip
    except CudaIpcRefused:
        release_slot(desc.ref_counter, desc.ref_offset)
        raise
    except RuntimeError as exc:
        release_slot(desc.ref_counter, desc.ref_offset)
        raise CudaIpcRefused("CUDA IPC: the driver could not open the client's memory: "
                             f"{str(exc).splitlines()[0][:200]}") from None
    return index, storage


def release_slot(ref_counter: str, slot: int) -> bool:
    """Give back a producer ref-counter slot that no opened storage will (best effort);
    False (and a warning) when torch could not.

    Call only after ``check_ref_counter_file`` passed, or on this process's own file: torch
    maps that file to decrement it. Without it the producer would keep the memory out of
    reuse for as long as it lives.
    """
    try:
        import torch

        torch.UntypedStorage._release_ipc_counter(  # type: ignore[no-untyped-call]
            ref_counter.encode(), slot)
    except Exception as exc:  # noqa: BLE001 (nothing more can be done for that slot)
        log.warning("could not release a CUDA IPC ref-counter slot: %s", type(exc).__name__)
        return False
    return True


def _check_allocation(ptr: int, nbytes: int, *, range_of: Callable[[int], Any] | None = None
                      ) -> None:
    """The storage the client claims must lie inside the allocation its handle maps.

    A storage reaching past the allocation would make a kernel fault and take this
    server's CUDA context (every client's work) down with it. ``range_of(ptr)`` gives
    (allocation base, size) or None when ptr is not mapped (default: the driver's
    cuMemGetAddressRange); when the driver cannot be asked, the check is skipped with a log.
    """
    if nbytes == 0:
        return
    found = (range_of or _driver_address_range)(ptr)
    if found is NotImplemented:
        return
    if found is None:
        raise CudaIpcRefused("CUDA IPC: the storage offset lies outside the shared allocation")
    base, size = found
    if ptr + nbytes > base + size:
        raise CudaIpcRefused("CUDA IPC: the storage reaches past the shared allocation")


_libcuda: Any = None


def _driver_address_range(ptr: int) -> Any:
    global _libcuda
    import ctypes

    if _libcuda is None:
        try:
            _libcuda = ctypes.CDLL("libcuda.so.1")
        except OSError:
            _libcuda = False
            log.warning("libcuda not loadable: CUDA IPC storage bounds are not checked")
    if _libcuda is False:
        return NotImplemented
    base, size = ctypes.c_uint64(0), ctypes.c_size_t(0)
    fn = _libcuda.cuMemGetAddressRange_v2
    fn.argtypes = [ctypes.POINTER(ctypes.c_uint64), ctypes.POINTER(ctypes.c_size_t),
                   ctypes.c_uint64]
    if fn(ctypes.byref(base), ctypes.byref(size), ctypes.c_uint64(ptr)) != 0:
        return None
    return int(base.value), int(size.value)


# -------------------------------------------------------------------- leases


@dataclass
class _Lease:
    value: Any
    expires: float
    ttl: float


class LeaseTable:
    """Objects kept alive for a TTL, renewed on use; dropping any runs ``collect``.

    Used on the exporting side for result tensors a client maps (released by the client or
    on expiry) and on the importing side for opened IPC storages (opening a handle costs far
    more than a lookup). ``collect`` defaults to ``torch.cuda.ipc_collect`` when CUDA is
    available. Not thread-safe by itself beyond its own lock; callers own the objects' use.
    """

    def __init__(self, ttl: float = 30.0, *, max_leases: int = 1024,
                 clock: Callable[[], float] = time.monotonic,
                 collect: Callable[[], None] | None = None) -> None:
        if ttl <= 0:
            raise ValueError("a lease TTL must be positive")
        self.ttl, self.max_leases, self._clock = ttl, max_leases, clock
        self._collect = collect
        self._leases: dict[Any, _Lease] = {}
        self._lock = threading.Lock()

    def add(self, key: Any, value: Any, ttl: float | None = None) -> None:
        ttl = self.ttl if ttl is None else ttl
        if ttl <= 0:
            raise ValueError("a lease TTL must be positive")
        with self._lock:
            if key not in self._leases and len(self._leases) >= self.max_leases:
                raise CudaIpcRefused(f"too many CUDA IPC leases (at most {self.max_leases}); "
                                     "release some first")
            self._leases[key] = _Lease(value, self._clock() + ttl, ttl)

    def get(self, key: Any) -> Any:
        """The leased value (its lease renewed), or None when absent or expired."""
        with self._lock:
            lease = self._leases.get(key)
            if lease is None:
                return None
            now = self._clock()
            if lease.expires <= now:
                del self._leases[key]
                dropped = True
            else:
                lease.expires = now + lease.ttl
                return lease.value
        if dropped:
            self._run_collect()
        return None

    def release(self, key: Any) -> bool:
        with self._lock:
            found = self._leases.pop(key, None) is not None
        if found:
            self._run_collect()
        return found

    def reap(self) -> int:
        """Drop expired leases; returns how many went."""
        now = self._clock()
        with self._lock:
            dead = [k for k, lease in self._leases.items() if lease.expires <= now]
            for k in dead:
                del self._leases[k]
        if dead:
            self._run_collect()
        return len(dead)

    def clear(self) -> None:
        with self._lock:
            had = bool(self._leases)
            self._leases.clear()
        if had:
            self._run_collect()

    def __len__(self) -> int:
        return len(self._leases)

    def __contains__(self, key: object) -> bool:
        return key in self._leases

    def keys(self) -> Iterator[Any]:
        return iter(list(self._leases))

    def _run_collect(self) -> None:
        if self._collect is not None:
            self._collect()
        elif cuda_available():
            import torch

            torch.cuda.ipc_collect()  # type: ignore[no-untyped-call]


class IpcImports:
    """The server's opened IPC tensors, cached per (handle, storage offset) under leases.

    ``open(wire_map)`` validates, then returns a tensor view on the cached storage or opens
    it. ``expected_pid`` is the session client's pid (same-host sessions know it).
    """

    def __init__(self, *, ttl: float = 30.0, expected_pid: int | None = None,
                 max_bytes: int = 1 << 40, shm_dir: str = SHM_DIR,
                 opener: Callable[..., Any] = open_ipc,
                 leases: LeaseTable | None = None) -> None:
        self.expected_pid, self.max_bytes, self.shm_dir = expected_pid, max_bytes, shm_dir
        self._open = opener
        self.leases = leases or LeaseTable(ttl)
        self._events: dict[bytes, Any] = {}  # opened IPC events, by handle
        # Storage exports seen and checked, by their storage fields: a client sends the same
        # one with every tensor on that storage, and only the view part is new each time.
        self._seen: dict[tuple[Any, ...], IpcDescriptor] = {}
        # Whole maps checked before, by their msgpack bytes as received (a client sends the
        # same tensor again and again): their storage export, and their view.
        self._known: dict[bytes, tuple[IpcDescriptor, View | IpcDescriptor]] = {}

    def open(self, wire: Any, *, stream: Any = None, raw: bytes = b"") -> Any:
        """The tensor a descriptor map names, on its storage (opened once, then cached).

        ``raw`` is the map's msgpack form as received: a map that came before in exactly
        those bytes skips its checks, all of which passed on those bytes."""
        known = self._known.get(raw) if raw else None
        remember = known is None
        if known is None:
            seen = self._seen.get(_storage_fields(wire) if type(wire) is dict else ())
            if seen is not None:  # a storage export seen before: only its view is checked
                known = (seen, seen.view_of(wire))
        if known is not None:
            entry = self.leases.get(known[0].key)  # renewed; None once released or expired
            if entry is not None:
                if remember and raw:
                    _bounded_put(self._known, raw, known, self.leases.max_leases)
                return self._view(entry, known[1], stream)
        desc = IpcDescriptor.from_wire(wire, max_bytes=self.max_bytes)
        entry = self._import(desc, stream)
        _bounded_put(self._seen, _storage_fields(wire), desc, self.leases.max_leases)
        if raw:
            _bounded_put(self._known, raw, (desc, desc), self.leases.max_leases)
        return self._view(entry, desc, stream)

    def _import(self, desc: IpcDescriptor, stream: Any) -> _Import:
        """The import of a checked descriptor's storage: opened now, or already open."""
        key, slot = desc.key, (desc.ref_counter, desc.ref_offset)
        entry: _Import | None = self.leases.get(key)
        if entry is None:
            if len(self.leases) >= self.leases.max_leases:
                self.leases.reap()  # expired imports make room before "too many" is said
            base = self._open(desc, expected_pid=self.expected_pid, shm_dir=self.shm_dir,
                              stream=stream, wait_event=False)
            entry = _Import(base, {slot}, _where(base))
            self.leases.add(key, entry)  # the storage's deleter frees slot
            return entry
        # Already open. A fresh export of the same memory took a new ref-counter slot in
        # the producer: release it at once (torch's own rebuild does the same on a cache
        # hit). The same storage export again (clients reuse theirs) holds no new slot.
        check_ref_counter_file(desc, shm_dir=self.shm_dir, expected_pid=self.expected_pid)
        if slot not in entry.slots:
            entry.slots.add(slot)
            self._release_slot(desc, entry.base)
        return entry

    def _view(self, entry: _Import, v: View | IpcDescriptor, stream: Any) -> Any:
        """A new tensor with view `v` on an import (base itself is never handed out: an op
        changing its argument's view in place cannot change a later request's)."""
        view = entry.view(v)
        if v.event:  # the client's writes before the request, on its stream
            self._wait_event(v.event, view, stream)
        return view

    def release(self, keys: Any) -> int:
        """Drop the imports of storages the client says it no longer holds ("fi").

        ``keys`` is a list of [handle, storage offset, storage size]; unknown ones are
        ignored (their lease may have expired already). Returns how many were dropped.
        """
        if not isinstance(keys, list) or len(keys) > MAX_RELEASES:
            raise ProtocolError(f"CUDA IPC releases must be a list of at most {MAX_RELEASES}")
        dropped = 0
        for k in keys:
            if not (isinstance(k, list) and len(k) == 3 and type(k[0]) is bytes
                    and type(k[1]) is int and type(k[2]) is int):
                raise ProtocolError("CUDA IPC release must be [handle, offset, size]")
            dropped += self.leases.release(tuple(k))
        return dropped

    def _release_slot(self, desc: IpcDescriptor, base: Any) -> None:
        import torch

        torch.UntypedStorage._release_ipc_counter(  # type: ignore[no-untyped-call]
            desc.ref_counter.encode(), desc.ref_offset, device=base.device)

    def _wait_event(self, handle: bytes, base: Any, stream: Any) -> None:
        import torch

        event = self._events.get(handle)
        if event is None:
            if len(self._events) >= 256:
                self._events.clear()
            event = torch.cuda.Event.from_ipc_handle(  # type: ignore[no-untyped-call]
                base.device, handle)
            self._events[handle] = event
        (stream or torch.cuda.current_stream(base.device)).wait_event(event)

    def close(self) -> None:
        self._events.clear()
        self.leases.clear()


def _storage_fields(wire: dict[str, Any]) -> tuple[Any, ...]:
    """What names one storage export (hashable; a field of a type that is not gives a key no
    export was ever stored under, so that map goes the validating way)."""
    get = wire.get
    fields = (get("v"), get("uuid"), get("h"), get("so"), get("ss"), get("rc"), get("ro"),
              get("pid"), get("dev"))  # spelled out, not a loop: once per argument
    for f in fields:
        if type(f) not in _HASHABLE:
            return ()
    return fields


_HASHABLE = frozenset({int, str, bytes})


def _bounded_put(cache: dict[Any, Any], key: Any, value: Any, limit: int) -> None:
    if len(cache) >= limit:  # a client cycling through more than this starts them over
        cache.clear()
    cache[key] = value


@dataclass
class _Import:
    base: Any  # the tensor first opened on the storage
    slots: set[tuple[str, int]]  # producer ref-counter slots accounted for
    where: tuple[Any, ...] | None = None  # base's own view, as _where gives it

    def view(self, v: View | IpcDescriptor) -> Any:
        """Another tensor on this opened storage (its view checked by the caller)."""
        if self.where == (v.offset, v.dtype, v.shape, v.strides):
            # The tensor first opened, sent again (the usual case): detach() is torch's
            # cheapest new tensor on the same memory and view (base never requires grad).
            return self.base.detach()
        return view_on(self.base, v.dtype, v.offset, v.shape, v.strides)


def _where(base: Any) -> tuple[Any, ...]:
    """A tensor's view as a View spells it: (offset, dtype name, shape, strides)."""
    return (base.storage_offset(), native_name(base.dtype), tuple(base.shape), base.stride())


def view_on(base: Any, dtype: str, offset: int, shape: Any, strides: Any) -> Any:
    """A tensor on `base`'s storage (offset in elements of `dtype`), checked by the caller."""
    import torch

    dt = getattr(torch, dtype)
    if base.dtype == dt:  # the usual case, and half the cost of an empty tensor + set_
        return base.as_strided(shape, strides, offset)
    out = torch.empty(0, dtype=dt, device=base.device)
    return out.set_(base.untyped_storage(), offset, shape, strides)
