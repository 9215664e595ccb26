"""`tensorwire diagnose`: the report builder on recorded data, the seed baseline, a real run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq

from tensorwire.codec import _native
from tensorwire.diagnose import (
    Settings,
    findings,
    format_size,
    parse_size,
    parse_sizes,
    progress,
    render,
    seed_server,
    write_charts,
)
from tensorwire.diagnose._report import tree
from tensorwire.diagnose._seed_client import SeedClient
from tensorwire.diagnose._workload import budget

MB10 = 10 << 20


def _stage(path: str, nbytes: int, total: float, serialize: float) -> dict:
    return {
        "transport": path,
        "nbytes": nbytes,
        "serialize_ms": serialize,
        "send_ms": 0.1,
        "receive_ms": total - serialize - 0.3,
        "deserialize_ms": 0.2,
        "total_ms": total,
        "p10_ms": total * 0.9,
        "p90_ms": total * 1.2,
        "mb_per_s": 2 * nbytes / total / 1e3,
        "samples": 5,
        "paths": {"request": ["frame"], "reply": ["frame"]},
    }


def _measured(total: float, parts: dict) -> dict:
    full = {
        "serialize": 0.0,
        "transport": 0.0,
        "deserialize": 0.0,
        "queue": 0.0,
        "host_to_device": None,
        "compute": 0.0,
        "device_to_host": None,
        "other": 0.0,
    }
    return {
        "total_ms": total,
        "p10_ms": total * 0.95,
        "p90_ms": total * 1.1,
        "samples": 3,
        "budget": {"total_ms": total, "calls": 2, "parts": {**full, **parts}},
        "paths": [],
    }


def _ladder_row(
    key: str,
    step: str,
    predicted: float | None,
    measured: dict | None,
    speedup: float | None = None,
    reason: str = "",
) -> dict:
    return {
        "key": key,
        "step": step,
        "how": f"how {key}",
        "predicted_ms": predicted,
        "status": "measured" if measured else "not available",
        "reason": reason,
        "measured": measured,
        "speedup": speedup,
    }


@pytest.fixture
def recorded() -> dict:
    """What `run_diagnose` returns, built by hand (numbers chosen to be easy to check)."""
    return {
        "version": "0.1.0",
        "started": "2026-11-27 12:00:00 UTC",
        "elapsed_s": 42.0,
        "settings": {
            "sizes": [1024, MB10],
            "transports": ["ipc", "shm"],
            "workload": "seed",
            "connect": None,
            "backend": "numpy",
            "quick": True,
        },
        "environment": {
            "cpu": "Test CPU 9000",
            "cores": 2,
            "cores_usable": 2,
            "memory_gb": 8.0,
            "gpu": "none (torch sees no CUDA device)",
            "os": "Linux",
            "dev_shm": {"size_gb": 4.0, "free_gb": 3.5},
            "versions": {"python": "3.11.7", "numpy": "2.0"},
            "native_cast": "tensorwire's kernel (avx2)",
        },
        "server": {"backend": "numpy", "device": "cpu", "version": "0.1.0", "host": "h"},
        "viable": {"ipc": "yes", "shm": "yes"},
        "stages": [
            _stage("ipc", 1024, 0.25, 0.04),
            _stage("ipc", MB10, 6.0, 0.1),
            _stage("shm", 1024, 0.2, 0.04),
            _stage("shm", MB10, 1.25, 0.8),
            _stage("seed-tolist", 1024, 0.5, 0.1),
            _stage("seed-tolist", MB10, 600.0, 300.0),
        ],
        "workload": {"name": "seed", "description": "x: 2560x1024 float32 (10 MB); test"},
        "ladder": [
            _ladder_row(
                "seed",
                "seed baseline",
                332,
                _measured(
                    2000.0,
                    {
                        "serialize": 900.0,
                        "transport": 100.0,
                        "deserialize": 800.0,
                        "compute": 150.0,
                        "other": 50.0,
                    },
                ),
                1.0,
            ),
            _ladder_row(
                "frames",
                "binary frames",
                250,
                _measured(125.0, {"serialize": 5.0, "transport": 20.0, "compute": 100.0}),
                16.0,
            ),
            _ladder_row("bf16", "+ bf16 wire", 180, None, reason="wire_dtype rejected"),
            _ladder_row(
                "shm",
                "+ shared memory",
                50,
                _measured(100.0, {"serialize": 4.0, "transport": 6.0, "compute": 90.0}),
                20.0,
            ),
            _ladder_row(
                "resident", "+ resident weights and fusion", 10, None, reason="no Client.put"
            ),
            _ladder_row("cuda_ipc", "+ pinned memory / CUDA IPC", None, None, reason="no GPU"),
        ],
    }


def test_report_has_every_section_and_the_recorded_numbers(recorded):
    md = render(recorded)
    for title in (
        "## Environment",
        "## Stage table",
        "## Latency budget",
        "## Optimisation ladder",
        "## Findings",
    ):
        assert title in md
    assert "Test CPU 9000 — 2 cores" in md
    assert "| wire casts | tensorwire's kernel (avx2) |" in md
    assert "| ipc | 10 MB | 0.100 | 0.100 | 5.600 | 0.200 | 6.000 | 5.400–7.200 |" in md
    assert "| seed baseline | how seed | 2000.0 | 1900.0–2200.0 | 1.0x | 332 (predicted) |" in md
    assert "| + shared memory | how shm | 100.0 | 95.0–110.0 | 20.0x | 50 (predicted) |" in md
    assert "seed's prediction" in md


def test_missing_steps_are_not_available_never_estimated(recorded):
    md = render(recorded)
    rows = {line.split(" | ")[0]: line for line in md.splitlines() if line.startswith("| +")}
    assert "not available: wire_dtype rejected | — | — | 180 (predicted) |" in rows["| + bf16 wire"]
    assert (
        "not available: no Client.put | — | — | 10 (predicted) |"
        in rows["| + resident weights and fusion"]
    )
    assert (
        "not available: no GPU | — | — | — (part of the 10) |"
        in rows["| + pinned memory / CUDA IPC"]
    )


def test_budget_tree_percentages_and_unreported_device_stages(recorded):
    text = tree(recorded["ladder"][0]["measured"])
    lines = text.splitlines()
    assert lines[0] == "total 2000.0 ms (2 calls)"
    assert "├─ serialize          900.00 ms ( 45%)" in lines
    assert "├─ deserialize        800.00 ms ( 40%)" in lines
    assert "├─ host_to_device  n/a (the server does not report it)" in lines
    assert lines[-1] == "└─ other               50.00 ms (  2%)"


def test_findings_name_the_dominant_stage_and_the_measured_speedup(recorded):
    items = findings(recorded)
    assert items[0].startswith("Seed baseline: **serialize** dominates (45% of 2000.0 ms)")
    assert "(+ shared memory): **compute** dominates (90% of 100.0 ms)" in items[1]
    assert "2000.0 ms (seed baseline) → 100.0 ms (+ shared memory), 20.0x faster" in items[2]
    assert "Not available yet" in items[3] and "+ bf16 wire" in items[3]
    assert any("seed's tolist() path takes 600.0 ms" in f and "480x slower" in f for f in items)


def test_report_is_the_same_from_json(recorded):
    assert render(json.loads(json.dumps(recorded))) == render(recorded)


def test_charts_are_png_files_and_linked_from_the_report(recorded, tmp_path):
    charts = write_charts(recorded, str(tmp_path / "plots"))
    assert len(charts) == 4
    for path in charts.values():
        data = Path(path).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000
    md = render(recorded, {title: os.path.basename(p) for title, p in charts.items()})
    assert "![Optimisation ladder](ladder.png)" in md


def test_budget_sums_stages_over_calls_and_leaves_other():
    trace = {
        "client_serialize": 0.001,
        "server_serialize": 0.002,
        "send": 0.003,
        "receive": 0.004,
        "server_deserialize": 0.005,
        "client_deserialize": 0.006,
        "server_queue": 0.0,
        "compute": 0.010,
    }
    b = budget(0.070, [trace, trace])
    assert b["calls"] == 2 and b["total_ms"] == pytest.approx(70.0)
    parts = b["parts"]
    assert parts["serialize"] == pytest.approx(6.0)
    assert parts["transport"] == pytest.approx(14.0)
    assert parts["deserialize"] == pytest.approx(22.0)
    assert parts["compute"] == pytest.approx(20.0)
    assert parts["other"] == pytest.approx(8.0)
    assert parts["host_to_device"] is None and parts["device_to_host"] is None


def test_sizes():
    assert parse_sizes("1KB, 1MB,10MB") == [1024, 1 << 20, 10 << 20]
    assert parse_size("512") == 512 and parse_size("1.5KB") == 1536
    assert format_size(10 << 20) == "10 MB" and format_size(12) == "12 B"
    for bad in ("12XB", "0KB", "", "MB"):
        with pytest.raises(ValueError, match="size"):
            parse_size(bad)


def test_settings_refuse_unknown_transport_and_workload():
    with pytest.raises(ValueError, match="known are ipc, tcp, shm"):
        Settings(sizes=[1024], transports=["udp"])
    with pytest.raises(ValueError, match="known are seed, none"):
        Settings(sizes=[1024], transports=["ipc"], workload="mine")


@pytest.mark.parametrize("encoding", ["tolist", "binary"])
def test_seed_baseline_computes_like_numpy_and_traces_every_stage(encoding):
    rng = np.random.default_rng(1)
    x, w, b = (rng.standard_normal(s).astype(np.float32) for s in ((8, 4), (3, 4), (3,)))
    with seed_server("numpy") as url, SeedClient(url, encoding) as client:
        np.testing.assert_array_equal(client.call("identity", x), x)
        np.testing.assert_allclose(client.call("linear", x, w, b), x @ w.T + b, rtol=1e-5)
        trace = client.last_trace
        stages = [k for k in trace if k != "paths"]
        assert all(trace[k] >= 0 for k in stages) and trace["total"] > 0
        bad = {"op": "identity", "enc": encoding, "args": [{"array": [1], "dtype": "object"}]}
        assert "dtype 'object'" in _raw_request(url, msgpack.packb(bad))["error"]
        np.testing.assert_array_equal(client.call("identity", x), x)  # server still serves


def _raw_request(url: str, body: bytes) -> dict:
    with zmq.Context() as ctx, ctx.socket(zmq.DEALER) as sock:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, 10_000)
        sock.connect(url)
        sock.send(body)
        reply, _ = sock.recv_multipart()
        return msgpack.unpackb(reply)  # msgpack only: never unpickle


def test_plain_progress_counts_steps(capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    with progress(2) as tick:
        tick("first")
        tick("second")
    assert capsys.readouterr().err.splitlines() == ["[1/2] first", "[2/2] second"]


def _dead_owner_segments() -> set[str]:
    shm = Path("/dev/shm")
    found = set()
    for p in shm.glob("tensorwire-*") if shm.is_dir() else ():
        pid = p.name.split("-")[1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            found.add(p.name)
    return found


def test_real_quick_run_writes_json_with_positive_figures(tmp_path):
    before = _dead_owner_segments()
    path = tmp_path / "diag.json"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "tensorwire",
            "diagnose",
            "--quick",
            "--sizes",
            "1KB",
            "--transports",
            "ipc",
            "--backend",
            "numpy",
            "--json",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=55,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert "## Optimisation ladder" in out.stdout
    data = json.loads(path.read_text())
    assert {
        "version",
        "settings",
        "environment",
        "server",
        "viable",
        "stages",
        "ladder",
        "findings",
        "elapsed_s",
    } <= set(data)
    native = data["environment"]["native_cast"]  # the same install as this test's
    assert ("kernel" in native) == _native.available(), native
    assert [(r["transport"], r["nbytes"]) for r in data["stages"]] == [
        ("ipc", 1024),
        ("seed-binary", 1024),
        ("seed-tolist", 1024),
    ]
    for row in data["stages"]:
        assert row["total_ms"] > 0 and row["mb_per_s"] > 0 and row["samples"] >= 1
    ladder = {r["key"]: r for r in data["ladder"]}
    for key in ("seed", "seed_binary", "frames", "bf16", "shm", "resident"):
        assert ladder[key]["measured"]["total_ms"] > 0, key
        assert ladder[key]["measured"]["budget"]["parts"]["compute"] > 0
    assert ladder["resident"]["measured"]["budget"]["calls"] == 1  # one fused request
    assert ladder["cuda_ipc"]["status"] == "not available"
    assert ladder["cuda_ipc"]["measured"] is None
    assert sorted(os.listdir(tmp_path)) == ["diag.json"]  # nothing else left behind
    assert _dead_owner_segments() <= before
