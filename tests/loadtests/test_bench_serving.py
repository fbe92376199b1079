"""``starrating bench serving``: model resolution, the report's ratios, the command end to end."""

from __future__ import annotations

import json
import os
import shutil
import time
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from loadtests.bench_serving import (
    BenchError,
    ServingBenchReport,
    SetupResult,
    model_under_test,
    newest_mar,
)
from loadtests.limit import thread_counts

runner = CliRunner()


def setup(rps: float, p50: float = 10.0) -> SetupResult:
    return SetupResult(rps=rps, p50_ms=p50, p95_ms=2 * p50, p99_ms=3 * p50)


def test_report_ratios_follow_the_measured_setups():
    report = ServingBenchReport("m", "int8", users=8, duration=5.0)
    report.setups = {"limit": setup(200.0), "naive": setup(40.0), "stack": setup(150.0)}
    report.low_load = {"stack": setup(90.0, p50=13.5), "direct": setup(110.0, p50=12.0)}
    report.accuracy = {"fp32": 0.61, "int8": 0.6055}
    assert report.stack_over_limit == pytest.approx(0.75)
    assert report.stack_over_naive == pytest.approx(3.75)
    assert report.gateway_overhead_ms == pytest.approx(1.5)
    assert report.accuracy_change_points == pytest.approx(-0.45)
    payload = report.to_json()
    assert payload["stack_over_limit"] == pytest.approx(0.75)
    assert payload["stack_over_naive"] == pytest.approx(3.75)
    assert payload["gateway_overhead_ms"] == pytest.approx(1.5)
    for name in ("limit", "naive", "stack"):
        assert set(payload[name]) >= {"rps", "p50_ms", "p95_ms", "p99_ms"}
    assert payload["low_load"]["direct"]["p50_ms"] == 12.0
    json.dumps(payload)


def test_ratios_are_null_when_a_setup_did_not_run():
    report = ServingBenchReport("m", "fp32", users=1, duration=1.0)
    report.setups = {"limit": setup(100.0)}
    payload = report.to_json()
    assert payload["stack_over_limit"] is None
    assert payload["stack_over_naive"] is None
    assert payload["gateway_overhead_ms"] is None


def test_model_resolution(tiny_model_dir: Path, tmp_path: Path):
    run = tmp_path / "run"
    shutil.copytree(tiny_model_dir, run / "model")
    with model_under_test(run) as model:
        assert model.model_dir == run / "model" and model.mar is None
    with model_under_test(tiny_model_dir) as model:
        assert model.model_dir == tiny_model_dir
    mar = tmp_path / "stars-1.0.mar"
    with zipfile.ZipFile(mar, "w") as archive:
        for path in tiny_model_dir.iterdir():
            archive.write(path, f"model/{path.name}")
    with model_under_test(mar) as model:
        assert model.mar == mar
        assert (model.model_dir / "config.json").is_file()
    with pytest.raises(BenchError, match="neither"), model_under_test(tmp_path / "nothing"):
        pass


def test_newest_mar_picks_the_latest_written(tmp_path: Path):
    assert newest_mar(tmp_path) is None
    for name, age in (("stars-1.0.mar", 100), ("stars-2.0.mar", 10), ("other-3.0.mar", 0)):
        (tmp_path / name).write_bytes(b"")
        os.utime(tmp_path / name, (time.time() - age, time.time() - age))
    assert newest_mar(tmp_path) == tmp_path / "stars-2.0.mar"


def test_bad_options_fail_with_a_message():
    result = runner.invoke(app, ["bench", "serving", "--precision", "fp8"])
    assert result.exit_code == 2
    assert "fp32, bf16, int8" in result.output
    result = runner.invoke(app, ["bench", "serving", "--setup", "gpu"])
    assert result.exit_code == 2
    assert "unknown --setup gpu" in result.output


@pytest.mark.slow
@pytest.mark.integration
def test_every_setup_end_to_end(tiny_model_dir: Path, tiny_data_dir: Path, tmp_path: Path):
    """limit, naive, stack (gateway -> TorchServe -> handler) and direct in one invocation."""
    out = tmp_path / "bench.json"
    args = ["bench", "serving", "--model", str(tiny_model_dir), "--data", str(tiny_data_dir)]
    args += ["--duration", "1.5", "--users", "2", "--precision", "int8", "--json", str(out)]
    args += ["--setups", "limit,naive,stack,direct"]  # the peers: tests/loadtests/test_peers.py
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    for words in ("stack/limit", "stack/naive", "gateway overhead", "accuracy change int8"):
        assert words in result.output
    payload = json.loads(out.read_text())
    for name in ("limit", "naive", "stack", "direct"):
        assert payload[name]["rps"] > 0
        assert 0 < payload[name]["p50_ms"] <= payload[name]["p95_ms"] <= payload[name]["p99_ms"]
    for name in ("naive", "stack", "direct"):
        assert payload[name]["detail"]["errors"] == 0
    assert payload["stack"]["detail"]["precision"] == "int8"
    for name in ("stack", "direct"):
        for part in ("gateway", "torchserve"):
            assert payload[name]["detail"][f"{part}_cpu_ms_per_request"] >= 0
    assert payload["stack"]["detail"]["gateway_cpu_ms_per_request"] > 0
    for name in ("stack", "direct"):  # the model's process is part of TorchServe's tree
        workers, whole = (
            payload[name]["detail"][f"{part}_cpu_ms_per_request"]
            for part in ("torchserve_workers", "torchserve")
        )
        assert 0 < workers <= whole
    # Two users through the gateway: each TorchServe request carried one text or both.
    assert 1 <= payload["stack"]["detail"]["texts_per_torchserve_request"] <= 2
    assert "texts_per_torchserve_request" not in payload["direct"]["detail"]
    assert payload["stack_over_limit"] == pytest.approx(
        payload["stack"]["rps"] / payload["limit"]["rps"]
    )
    assert payload["stack_over_naive"] == pytest.approx(
        payload["stack"]["rps"] / payload["naive"]["rps"]
    )
    low = payload["low_load"]
    assert low["stack"]["detail"]["users"] == low["direct"]["detail"]["users"] == 1
    assert payload["gateway_overhead_ms"] == pytest.approx(
        low["stack"]["p50_ms"] - low["direct"]["p50_ms"]
    )
    assert len(payload["limit_runs"]) == 6 * len(thread_counts())
    assert payload["limit"]["rps"] == pytest.approx(max(r["rps"] for r in payload["limit_runs"]))
    assert set(payload["accuracy"]) == {"fp32", "int8"}
    change = 100 * (payload["accuracy"]["int8"] - payload["accuracy"]["fp32"])
    assert payload["accuracy_change_points"] == pytest.approx(change)


def test_auto_precision_is_resolved_as_the_handler_would(
    tiny_model_dir: Path, tiny_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from handlers.numerics import NumericsRecord
    from loadtests.bench_serving import resolve_precision

    monkeypatch.setattr("handlers.numerics.has_fast_bf16", lambda device: False)
    with model_under_test(tiny_model_dir) as model:
        assert resolve_precision(model, "bf16", tiny_data_dir) == ("bf16", "asked for")
        # No archive record: measured now on the validation split, then chosen for this CPU.
        precision, why = resolve_precision(model, "auto", tiny_data_dir)
    assert precision in ("fp32", "int8") and "validation" in why
    # An archive's own record decides, as it does in the handler.
    accuracy = {"fp32": 0.5, "int8": 0.5}
    record = NumericsRecord("auto", "v", 9, accuracy, kept=("fp32", "int8"))
    for version, numerics, served in (("1.0", record, "int8"), ("0.9", None, "fp32")):
        mar = tmp_path / f"stars-{version}.mar"
        with zipfile.ZipFile(mar, "w") as archive:
            for path in tiny_model_dir.iterdir():
                archive.write(path, f"model/{path.name}")
            if numerics is not None:
                archive.writestr("run/numerics.json", json.dumps(numerics.to_json()))
        with model_under_test(mar) as model:
            # An archive made before numerics.json existed is served fp32, not measured anew.
            assert resolve_precision(model, "auto", tiny_data_dir)[0] == served
