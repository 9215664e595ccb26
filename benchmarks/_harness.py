"""Shared helpers for the benchmark scripts: timing, child servers, tables, JSON, machine info.

Every figure a benchmark prints is a ratio against a baseline measured in the same run, so the
helpers here only measure and format; they never hold a reference number.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import resource
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SRC = REPO / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

# ---------------------------------------------------------------------------------------------
# sizes


_UNITS = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}


def parse_size(text: str) -> int:
    """'1KB' -> 1024, '10MB' -> 10485760, '512' -> 512 (bytes)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?B)?\s*", text.upper())
    if not m:
        raise ValueError(f"bad size {text!r}; use e.g. 1KB, 64KB, 10MB")
    return int(float(m.group(1)) * _UNITS[m.group(2) or "B"])


def size_label(nbytes: int) -> str:
    for unit in ("GB", "MB", "KB"):
        if nbytes >= _UNITS[unit] and nbytes % _UNITS[unit] == 0:
            return f"{nbytes // _UNITS[unit]} {unit}"
    return f"{nbytes} B"


# ---------------------------------------------------------------------------------------------
# timing


@dataclass
class Stats:
    """Summary of repeated timings, in seconds."""

    n: int
    median: float
    p10: float
    p90: float
    minimum: float
    faults: float = 0.0  # median minor page faults per call in this process

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _quantile(sorted_vals: Sequence[float], q: float) -> float:
    if len(sorted_vals) == 1:
        return sorted_vals[0]
    pos = q * (len(sorted_vals) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (pos - lo)


def summarize(samples_ns: Sequence[int], faults: Sequence[int] = ()) -> Stats:
    vals = sorted(s / 1e9 for s in samples_ns)
    return Stats(
        n=len(vals),
        median=statistics.median(vals),
        p10=_quantile(vals, 0.10),
        p90=_quantile(vals, 0.90),
        minimum=vals[0],
        faults=float(statistics.median(faults)) if faults else 0.0,
    )


def _minflt() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def time_call(fn: Callable[[], object]) -> tuple[int, int]:
    """One call: (elapsed ns via perf_counter_ns, minor page faults in this process)."""
    f0 = _minflt()
    t0 = time.perf_counter_ns()
    fn()
    t1 = time.perf_counter_ns()
    return t1 - t0, _minflt() - f0


def measure_interleaved(
    fns: dict[str, Callable[[], object]], reps: dict[str, int], warmup: int = 1, block: int = 1
) -> dict[str, Stats]:
    """Time several paths in the same run, round robin (order rotated each round), so that
    slow drifts of a noisy machine hit every path alike. `reps[name]` caps each path. With
    block > 1 each turn is one untimed call (it pays for waking that path's server after
    another path ran) and then `block` timed calls: steady state, as a busy client sees it."""
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    samples: dict[str, list[int]] = {n: [] for n in names}
    faults: dict[str, list[int]] = {n: [] for n in names}
    for r in range(-(-max(reps.values(), default=0) // block)):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            if block > 1 and len(samples[name]) < reps[name]:
                fns[name]()
            for _ in range(min(block, reps[name] - len(samples[name]))):
                ns, flt = time_call(fns[name])
                samples[name].append(ns)
                faults[name].append(flt)
    return {n: summarize(samples[n], faults[n]) for n in names}


def median_dicts(dicts: Sequence[dict[str, float]]) -> dict[str, float]:
    """Per-key median of several stage dicts (keys missing from some are medianed over the rest)."""
    keys: list[str] = []
    for d in dicts:
        keys.extend(k for k in d if k not in keys)
    return {k: statistics.median([d[k] for d in dicts if k in d]) for k in keys}


# ---------------------------------------------------------------------------------------------
# child servers


def endpoint(transport: str, tmpdir: str, name: str) -> str:
    """ipc -> a socket in tmpdir; tcp -> 127.0.0.1 port 0 (the server prints the real port)."""
    if transport == "ipc":
        return f"ipc://{tmpdir}/{name}.sock"
    if transport == "tcp":
        return "tcp://127.0.0.1:0"
    raise ValueError(f"unknown transport {transport!r}")


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, **(extra or {})}
    parts = [str(SRC)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _drain(stream: Any, sink: list[str]) -> None:
    for line in iter(stream.readline, ""):
        sink.append(line)
    stream.close()


@contextlib.contextmanager
def child_server(
    argv: list[str], ready: str, timeout: float = 30.0, env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Start `argv` (with `env` added to ours), wait for a stdout line matching regex `ready`
    whose group 1 is the URL it listens on, yield (process, url); always terminate (SIGTERM,
    then SIGKILL) and reap it."""
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=child_env(env),
        start_new_session=True,
    )
    seen: list[str] = []
    try:
        url = _wait_ready(proc, re.compile(ready), timeout, seen)
        drain = threading.Thread(target=_drain, args=(proc.stdout, seen), daemon=True)
        drain.start()
        yield proc, url
    finally:
        _stop(proc)


def _wait_ready(
    proc: subprocess.Popen[str], pattern: re.Pattern[str], timeout: float, seen: list[str]
) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None and not select.select([proc.stdout], [], [], 0)[0]:
            break
        r, _, _ = select.select([proc.stdout], [], [], 0.2)
        if not r:
            continue
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        seen.append(line)
        m = pattern.search(line)
        if m:
            return m.group(1).strip()
    out = "".join(seen)[-2000:]
    raise RuntimeError(
        f"server {proc.args!r} not ready (exit code {proc.poll()}) within {timeout}s:\n{out}"
    )


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout=10)
    if proc.stdout and not proc.stdout.closed:
        with contextlib.suppress(Exception):
            proc.stdout.close()


@contextlib.contextmanager
def temp_dir() -> Iterator[str]:
    # Short path: ipc socket paths are limited to ~107 bytes.
    with tempfile.TemporaryDirectory(prefix="twb-") as d:
        yield d


# ---------------------------------------------------------------------------------------------
# tensorwire availability


def tensorwire_status() -> tuple[bool, str]:
    """(usable, reason): whether tw.Client and the `tensorwire serve` command exist."""
    try:
        import tensorwire as tw
    except Exception as exc:  # noqa: BLE001 - any import failure means "skip with a reason"
        return False, f"import tensorwire failed: {exc!r}"
    if not hasattr(tw, "Client"):
        return False, "tensorwire.Client does not exist yet"
    try:
        from tensorwire.cli import main  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        return False, f"tensorwire.cli.main not importable: {exc!r}"
    return True, "ok"


def tensorwire_serve_argv(url: str, extra: Sequence[str] = ()) -> list[str]:
    script = Path(sys.executable).parent / "tensorwire"
    head = (
        [str(script)]
        if script.exists()
        else [sys.executable, "-c", "import sys; from tensorwire.cli import main; sys.exit(main())"]
    )
    insecure = ["--insecure"] if url.startswith("tcp://") else []  # loopback, this run only
    return [*head, "serve", "--listen", url, *insecure, *extra]


TW_READY = r"tensorwire: listening on (\S+)"


# ---------------------------------------------------------------------------------------------
# output


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg_1_5_15": list(os.getloadavg()),
    }
    for mod in ("numpy", "zmq", "msgpack", "torch", "ray", "grpc", "tensorwire"):
        info[f"{mod}_version"] = _version(mod)
    try:
        import zmq

        info["libzmq_version"] = zmq.zmq_version()
    except ImportError:
        pass
    try:  # which cast wire tensors get (codec/_native.py)
        from tensorwire.codec import _native

        info["native_cast"] = _native.best_isa()
        info["native_cast_text"] = _native.describe()
    except ImportError:
        pass
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(mod: str) -> str | None:
    try:
        m = __import__(mod)
    except Exception:  # noqa: BLE001 - optional modules
        return None
    v = getattr(m, "__version__", None)
    if mod == "msgpack" and v is None:
        v = ".".join(map(str, getattr(m, "version", ())))
    return str(v) if v is not None else "installed"


def print_machine(info: dict[str, Any]) -> None:
    versions = ", ".join(
        f"{k.removesuffix('_version')} {v}" for k, v in info.items() if k.endswith("_version") and v
    )
    load = ", ".join(f"{x:.2f}" for x in info["loadavg_1_5_15"])
    print(f"machine: {info['cpu_model']}, {info['cpu_count']} cpus; python {info['python']}")
    print(f"         load average at start (1/5/15 min): {load}; now {os.getloadavg()[0]:.2f}")
    print(f"         {versions}")
    if "native_cast_text" in info:
        print(f"         wire casts: {info['native_cast_text']}")


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")
    tmp.replace(path)


def _json_default(o: Any) -> Any:
    if isinstance(o, Stats):
        return o.as_dict()
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def print_table(
    title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]], notes: Sequence[str] = ()
) -> None:
    """Plain-text table: first column left-aligned, the rest right-aligned."""
    cells = [[str(h) for h in headers]] + [[_cell(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def fmt(row: list[str]) -> str:
        first = row[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest]).rstrip()

    print()
    print(title)
    print(fmt(cells[0]))
    print("  ".join("-" * w for w in widths))
    for row in cells[1:]:
        print(fmt(row))
    for note in notes:
        print(f"  {note}")


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def fmt_time(seconds: float | None) -> str:
    """Human figure with its unit: µs below 1 ms, ms otherwise."""
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1.0:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b <= 0:
        return None
    return a / b


def fmt_ratio(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}×"


def fmt_paths(paths: list[str] | None) -> str:
    """["request:shm", "reply:shm(alias)"] -> "shm → shm(alias)" (request → reply)."""
    if not paths:
        return "-"
    req = ",".join(p.split(":", 1)[-1] for p in paths if p.startswith("request:"))
    rep = ",".join(p.split(":", 1)[-1] for p in paths if p.startswith("reply:"))
    other = ",".join(p for p in paths if not p.startswith(("request:", "reply:")))
    if other:  # e.g. "message:pipe": how the control message travelled (the doorbell)
        rep = f"{rep or '?'} ({other})"
    return f"{req or '?'} → {rep or '?'}" if (req or rep) else ",".join(paths)
