"""The soak driver (``loadtests/soak.py``, ``make soak``): its verdict logic, and one short run
end to end on the tiny model (the real run takes minutes; its results are in docs/soak.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from loadtests.locust_stats import EndpointStats, read_locust_stats
from loadtests.soak_memory import ProcessMemory
from loadtests.soak_report import SoakResult, render_markdown

REPO = Path(__file__).resolve().parents[2]
HEADER = (
    "Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,"
    "Min Response Time,Max Response Time,Average Content Size,Requests/s,Failures/s,"
    "50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%"
)


def result(failures: int, memory: list[ProcessMemory]) -> SoakResult:
    total = EndpointStats("Aggregated", 100, failures, 5.0, 40.0, 90.0, 120.0)
    return SoakResult(
        command="python -m loadtests.soak",
        started="now",
        duration_s=60,
        warmup_s=10,
        users=2,
        spawn_rate=1,
        model="tiny",
        machine={"cpus": 2, "memory_gib": 24, "python": "3.11", "platform": "linux"},
        endpoints=[total],
        memory=memory,
    )


def test_locust_statistics_are_read_per_endpoint_and_in_total(tmp_path: Path) -> None:
    stats = tmp_path / "locust_stats.csv"
    stats.write_text(
        HEADER + "\nPOST,/v1/predictions [one],120,0,35,40,20,300,150,4.0,0.0,"
        "35,40,45,50,70,90,120,150,300,300,300"
        + "\nPOST,/v1/feedback,0,0,0,0,0,0,0,0.0,0.0,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A"
        + "\n,Aggregated,120,3,35,40,20,300,150,4.0,0.1,35,40,45,50,70,90,120,150,300,300,300\n"
    )

    one, feedback, total = read_locust_stats(stats)

    assert (one.name, one.requests, one.p50_ms, one.p95_ms, one.p99_ms) == (
        "/v1/predictions [one]",
        120,
        35.0,
        90.0,
        150.0,
    )
    assert feedback.requests == 0 and feedback.error_rate == 0.0
    assert total.error_rate == pytest.approx(3 / 120)


def test_verdict_needs_zero_errors_and_every_process_within_its_memory_bound() -> None:
    steady = ProcessMemory("gateway (uvicorn)", 1, start_mib=150.0, end_mib=170.0)
    grown = ProcessMemory("TorchServe worker", 2, start_mib=400.0, end_mib=600.0)
    vanished = ProcessMemory("TorchServe worker", 3, start_mib=400.0, end_mib=None)

    assert steady.bound_mib == pytest.approx(150 * 1.2 + 32)
    assert result(0, [steady]).passed
    assert not result(1, [steady]).passed
    assert not result(0, [steady, grown]).passed
    assert not result(0, [steady, vanished]).passed
    report = render_markdown(result(0, [steady, grown]))
    assert "**FAIL**" in report and "| **no** |" in report


@pytest.mark.slow
@pytest.mark.integration
def test_a_short_soak_runs_the_stack_and_reports(tiny_model_dir: Path, tmp_path: Path) -> None:
    report, raw = tmp_path / "soak.md", tmp_path / "soak.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtests.soak",
            "--duration",
            "12",
            "--warmup",
            "4",
            "--users",
            "2",
            "--model",
            str(tiny_model_dir),
            "--report",
            str(report),
            "--json",
            str(raw),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    numbers = json.loads(raw.read_text())
    total = next(e for e in numbers["endpoints"] if e["name"] == "Aggregated")
    assert numbers["passed"] is True
    assert total["requests"] > 0 and total["failures"] == 0
    roles = [m["role"] for m in numbers["memory"]]  # a row per process: workers as sized
    assert set(roles) == {"TorchServe frontend (JVM)", "TorchServe worker", "gateway (uvicorn)"}
    assert roles.count("TorchServe frontend (JVM)") == roles.count("gateway (uvicorn)") == 1
    assert all(m["start_mib"] and m["end_mib"] for m in numbers["memory"])
    assert "python -m loadtests.soak --duration 12" in report.read_text()
