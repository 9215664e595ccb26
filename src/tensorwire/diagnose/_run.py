"""Run the diagnosis: start (or connect to) a server, measure, return the report's data.

The data is plain JSON (see `run_diagnose`); the report and charts are built from it alone,
so a recorded JSON file renders the same report.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from .._version import __version__
from ..client import Client
from ..errors import TensorwireError
from ._env import environment
from ._ladder import measure_ladder, step_count
from ._local import local_server, seed_server
from ._seed_client import SeedClient
from ._sizes import format_size
from ._stages import StageRow, measure
from ._workload import DESCRIPTION

TRANSPORTS = ("ipc", "tcp", "shm")
SEED_PATHS = ("seed-binary", "seed-tolist")
SHM_SIZE = 128 << 20  # bytes per direction: room for the seed workload's 10 MB tensors
Tick = Callable[[str], None]


@dataclass
class Settings:
    sizes: list[int]
    transports: list[str]
    workload: str = "seed"  # "seed" or "none"
    connect: str | None = None
    backend: str = "auto"
    quick: bool = False
    repeats: int = field(init=False)
    max_seconds: float = field(init=False)  # time box per stage-table row
    workload_seconds: float = field(init=False)  # time box per ladder step

    def __post_init__(self) -> None:
        unknown = set(self.transports) - set(TRANSPORTS)
        if unknown or not self.transports:
            raise ValueError(f"transports {sorted(unknown)}: known are {', '.join(TRANSPORTS)}")
        if self.workload not in ("seed", "none"):
            raise ValueError(f"workload {self.workload!r}: known are seed, none")
        self.repeats = 5 if self.quick else 50
        self.max_seconds = 0.3 if self.quick else 2.0
        self.workload_seconds = 0.5 if self.quick else 5.0

    def steps(self) -> int:
        rows = len(self.sizes) * (len(self.transports) + len(SEED_PATHS))
        return rows + (step_count() if self.workload == "seed" else 0)


def run_diagnose(settings: Settings, tick: Tick) -> dict[str, Any]:
    """Measure everything; return the report's data (JSON-ready)."""
    started = time.time()
    data: dict[str, Any] = {
        "version": __version__,
        "settings": asdict(settings),
        "environment": environment(),
    }
    with ExitStack() as stack:
        urls = stack.enter_context(_tensorwire_urls(settings))
        seed_url = stack.enter_context(seed_server(settings.backend))
        data["server"], data["viable"] = _probe(urls, {*settings.transports, "shm"})
        data["stages"] = [
            r.as_dict() for r in _stage_rows(settings, urls, seed_url, tick, data["viable"])
        ]
        if settings.workload == "seed":
            tw_url = urls.get("ipc") or next(iter(urls.values()))
            data["workload"] = {"name": "seed", "description": DESCRIPTION}
            data["ladder"] = measure_ladder(
                tw_url, seed_url, settings.repeats, settings.workload_seconds, tick
            )
    data["elapsed_s"] = time.time() - started
    data["started"] = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started))
    return data


@contextmanager
def _tensorwire_urls(settings: Settings) -> Iterator[dict[str, str]]:
    """{scheme: url} of the server measured: --connect's, or a fresh local one."""
    if settings.connect:
        yield {settings.connect.split("://", 1)[0]: settings.connect}
        return
    listens = sorted({"tcp" if t == "tcp" else "ipc" for t in settings.transports})
    with local_server(listens, "--backend", settings.backend) as urls:
        yield urls


def _probe(urls: dict[str, str], transports: set[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The server's self-description, and for each transport 'yes' or why not."""
    server: dict[str, Any] = {}
    viable: dict[str, str] = {}
    for transport in sorted(transports, key=TRANSPORTS.index):
        try:
            with _client(transport, urls) as client:
                info = client.server_info
                server = {k: info.get(k) for k in ("version", "backend", "device", "host")}
                viable[transport] = "yes"
        except (TensorwireError, KeyError) as exc:
            viable[transport] = str(exc).strip("'") or type(exc).__name__
    return server, viable


def _client(transport: str, urls: dict[str, str]) -> Client:
    if transport == "shm":
        url = urls.get("ipc") or next(iter(urls.values()))
        return Client(url, transport="auto", require="shm", shm_size=SHM_SIZE)
    if transport not in urls:
        raise KeyError(f"server not listening on {transport}")
    return Client(urls[transport], transport="zmq")


def _stage_rows(
    settings: Settings, urls: dict[str, str], seed_url: str, tick: Tick, viable: dict[str, str]
) -> list[StageRow]:
    rows = []
    for transport in (*settings.transports, *SEED_PATHS):
        if viable.get(transport, "yes") != "yes":
            for _ in settings.sizes:
                tick(f"{transport}: skipped ({viable[transport]})")
            continue
        with _any_client(transport, urls, seed_url) as client:
            for nbytes in settings.sizes:
                tick(f"stage table: {transport}, {format_size(nbytes)}")
                rows.append(
                    measure(client, transport, nbytes, settings.repeats, settings.max_seconds)
                )
    return rows


def _any_client(transport: str, urls: dict[str, str], seed_url: str) -> Any:
    if transport in SEED_PATHS:
        return SeedClient(seed_url, transport.removeprefix("seed-"))
    return _client(transport, urls)
