"""Smoke tests for the benchmark scripts: they run, exit 0 and write well-formed JSON.

They check shape, not speed: figures on a shared CI machine are too noisy to gate on here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks"
SEED_PATHS = ("tolist", "binary", "multipart")


def _run(script: str, *args: str, timeout: float = 50) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"{script} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def _positive_median(stats: dict[str, Any]) -> None:
    assert stats["n"] >= 1
    assert 0 < stats["p10"] <= stats["median"] <= stats["p90"]


def _tensorwire_usable(report: dict[str, Any]) -> bool:
    return bool(report["tensorwire"]["available"])


@pytest.mark.timeout(60)
def test_seed_baseline_quick(tmp_path: Path) -> None:
    out = tmp_path / "seed.json"
    proc = _run("seed_baseline.py", "--quick", "--sizes", "1KB,64KB", "--json", str(out))
    assert "Targets" in proc.stdout and "Round trip" in proc.stdout
    report = json.loads(out.read_text())
    assert {"machine", "config", "tensorwire", "results", "ratios", "targets"} <= set(report)
    assert report["machine"]["cpu_count"] >= 1
    assert set(report["results"]) == {"ipc", "tcp"}
    for transport, tres in report["results"].items():
        for key in ("pingpong_1B", "pingpong_1KB", "multipart_1KB"):
            _positive_median(tres["limits"][key])
        assert set(tres["sizes"]) == {"1 KB", "64 KB"}
        for label, sres in tres["sizes"].items():
            for path in SEED_PATHS:
                _positive_median(sres["round_trip"][path])
                assert sres["stages"][path]["total"] > 0
            if _tensorwire_usable(report):
                _positive_median(sres["round_trip"]["tw_zmq"])
            ratios = report["ratios"][transport][label]
            assert ratios["tolist"]["vs_tolist"] == pytest.approx(1.0)
            assert ratios["multipart"]["vs_multipart"] == pytest.approx(1.0)
    statuses = {t["status"] for t in report["targets"]}
    assert statuses <= {"PASS", "FAIL", "SKIP"}
    assert len(report["targets"]) >= 4


@pytest.mark.timeout(60)
def test_peers_quick(tmp_path: Path) -> None:
    out = tmp_path / "peers.json"
    _run("peers.py", "--quick", "--sizes", "1KB,64KB", "--json", str(out))
    report = json.loads(out.read_text())
    assert {"machine", "config", "skipped", "results"} <= set(report)
    for label in ("1 KB", "64 KB"):
        res = report["results"][label]
        _positive_median(res["round_trip"]["multipart"])
        assert res["ratios"]["multipart"]["vs_multipart"] == pytest.approx(1.0)
        if importlib.util.find_spec("torch") is not None:
            assert "torch_rpc" in res["round_trip"], report["skipped"].get("torch_rpc")
            _positive_median(res["round_trip"]["torch_rpc"])
        for name, stats in res["round_trip"].items():
            _positive_median(stats)
            assert name in res["ratios"]
    for name, why in report["skipped"].items():
        assert why, f"{name} skipped without a reason"
    assert {t["status"] for t in report["targets"]} <= {"PASS", "FAIL", "SKIP", "info"}


SHM_TARGETS = 5


@pytest.mark.timeout(60)
def test_shm_quick(tmp_path: Path) -> None:
    out = tmp_path / "shm.json"
    proc = _run("shm.py", "--quick", "--size", "64KB", "--large", "128KB", "--json", str(out))
    assert "Targets" in proc.stdout and "floor" in proc.stdout
    report = json.loads(out.read_text())
    assert {"machine", "config", "results", "targets"} <= set(report)
    assert report["config"]["quick"] is True
    assert set(report["results"]) == {"small", "main", "large"}
    small = report["results"]["small"]
    for key in ("pingpong_1B", "tw_auto_1KB", "tw_zmq_1KB", "empty_identity", "empty_neg"):
        _positive_median(small["round_trip"][key])
        assert key in small["ratios"]
    for group in ("main", "large"):
        res = report["results"][group]
        for key in ("floor", "copy_2x", "tw_auto", "tw_auto_copy", "tw_zmq", "multipart"):
            _positive_median(res["round_trip"][key])
        assert res["ratios"]["floor"]["vs_floor"] == pytest.approx(1.0)
        if report["config"]["auto_path"] == "shm":  # same host: the arena carries the bytes
            assert any(p.endswith("shm") for p in res["paths"]["tw_auto"]), res["paths"]
    assert len(report["targets"]) == SHM_TARGETS
    for t in report["targets"]:
        assert t["status"] in {"PASS", "FAIL", "SKIP"}
        assert t["value"] is None or t["value"] > 0


@pytest.mark.timeout(60)
def test_call_floor_quick(tmp_path: Path) -> None:
    out, prof = tmp_path / "floor.json", tmp_path / "floor.prof"
    proc = _run("call_floor.py", "--quick", "--json", str(out), "--profile", str(prof))
    assert "÷ pipe" in proc.stdout and "client_serialize" in proc.stdout
    report = json.loads(out.read_text())
    assert {"machine", "config", "baseline", "round_trip", "ratios", "stages"} <= set(report)
    rows = ("pipe", "doorbell", "tw_1KB", "tw_1MB_arena")
    for key in rows:
        _positive_median(report["round_trip"][key])
    assert report["ratios"]["pipe"] == pytest.approx(1.0)
    for key in rows[2:]:
        assert report["stages"][key]["client_serialize"] > 0
        assert report["stages"][key]["total"] > 0
    if report["paths"]["tw_1MB_arena"]["message"] == "pipe":  # same host: zero-copy arena
        assert report["paths"]["tw_1MB_arena"]["request"] == ["shm(zero-copy)"]
    assert prof.stat().st_size > 0


@pytest.mark.timeout(60)
def test_cast_threads_quick(tmp_path: Path) -> None:
    """Pooled against per-cast threads: both children ran every size and thread count."""
    from tensorwire.codec import _native

    if not _native.available():  # make test requires it (TENSORWIRE_REQUIRE_NATIVE=1)
        pytest.skip("the native cast kernel was not built")
    out = tmp_path / "casts.json"
    proc = _run("cast_threads.py", "--quick", "--sizes", "1MB", "--threads", "1,3",
                "--json", str(out))
    assert "started / pooled" in proc.stdout
    report = json.loads(out.read_text())
    assert [(r["nbytes"], r["threads"]) for r in report["rows"]] == [(1 << 20, 1), (1 << 20, 3)]
    for row in report["rows"]:
        assert row["pooled_s"] > 0 and row["started_s"] > 0
        assert row["started_over_pooled"] == pytest.approx(row["started_s"] / row["pooled_s"])
    assert [len(runs) for runs in report["runs"].values()] == [2, 2]


@pytest.mark.timeout(60)
def test_spin_quick(tmp_path: Path) -> None:
    """Stretched against fixed spins: every row timed both ways, CPU counted for both sides."""
    out = tmp_path / "spin.json"
    proc = _run("spin.py", "--quick", "--json", str(out))
    assert "fixed / stretched" in proc.stdout
    report = json.loads(out.read_text())
    assert [r["row"] for r in report["rows"]] == ["1KB identity", "1MB neg, bf16 wire"]
    for row in report["rows"]:
        got = row["round_trip_s"]
        assert got["fixed"] > 0 and got["stretched"] > 0
        assert row["fixed_over_stretched"] == pytest.approx(got["fixed"] / got["stretched"])
        assert [len(v) for v in row["rounds_s"].values()] == [2, 2]
        assert all(v >= 0 for v in row["server_cpu_s_per_call"].values())  # 10 ms ticks
        assert all(v > 0 for v in row["client_cpu_s_per_call"].values())


def test_call_floor_ipc_standin_quick(tmp_path: Path) -> None:
    """The CUDA IPC row on CPU stand-ins: the argument's own view comes back by IPC."""
    pytest.importorskip("torch")
    out = tmp_path / "floor.json"
    proc = _run("call_floor.py", "--quick", "--ipc-standin", "--json", str(out))
    assert "CUDA IPC identity (CPU stand-in)" in proc.stdout
    report = json.loads(out.read_text())
    _positive_median(report["round_trip"]["tw_ipc_standin"])
    assert report["paths"]["tw_ipc_standin"]["request"] == ["cuda_ipc"]
    assert report["paths"]["tw_ipc_standin"]["reply"] == ["cuda_ipc"]  # an alias, no bytes
    assert report["stages"]["tw_ipc_standin"]["compute"] > 0
    assert report["config"]["ipc_standin"] is True


WIRE_TARGETS = 3  # tcp speedup (one per size), seed-workload error bound, shm "auto" not slower


@pytest.mark.timeout(60)
def test_wire_quick(tmp_path: Path) -> None:
    out = tmp_path / "wire.json"
    proc = _run("wire.py", "--quick", "--json", str(out))
    assert "Targets" in proc.stdout
    report = json.loads(out.read_text())
    assert {"machine", "config", "tcp", "seed_workload", "shm", "targets"} <= set(report)
    tcp = report["tcp"]["1 MB"]
    for key in ("f32", "bf16", "auto", "bare_full", "bare_half"):
        _positive_median(tcp["round_trip"][key])
    assert tcp["speedup_vs_f32"]["f32"] == pytest.approx(1.0)
    assert "bfloat16" in tcp["paths"]["bf16"] and "bfloat16" not in tcp["paths"]["f32"]
    assert tcp["dtype_back"] == "float32"
    sw = report["seed_workload"]
    assert 0 < sw["measured_max_abs_error"] <= sw["bound_max_abs"]
    shm = report["shm"]
    for key in ("none", "auto"):
        _positive_median(shm["round_trip"][key])
    if shm["transport_path"] == "shm":  # same host: "auto" never casts over shared memory
        assert shm["casts"] == {"none": False, "auto": False}
    assert len(report["targets"]) == WIRE_TARGETS
    assert {t["status"] for t in report["targets"]} <= {"PASS", "FAIL", "info"}


@pytest.mark.timeout(90)
def test_huge_pages_quick(tmp_path: Path) -> None:
    out = tmp_path / "huge.json"
    proc = _run("huge_pages.py", "--size", "4MB", "--reps", "2", "--rounds", "1",
                "--json", str(out), timeout=80)  # fmt: skip
    assert "glibc huge pages" in proc.stdout
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert set(rows) == {f"client_{c}+server_{s}" for c in ("huge", "plain")
                         for s in ("huge", "plain")}  # fmt: skip
    for row in rows.values():
        _positive_median(row["stats"])
    assert rows["client_plain+server_plain"]["speedup"] == pytest.approx(1.0)
    assert report["server_glibc_tunables"]["server_plain"] == ""
