"""``starrating bench training``: step timing, the 10x copy, the report and the command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from loadtests.bench_training import EnoughSteps, StepClock, TrainingBenchReport, larger_copy
from loadtests.reviews import load_reviews

runner = CliRunner()


def test_step_clock_measures_throughput_after_the_warmup_and_stops_when_told():
    clock = StepClock(stop_after=5, started=10.0)
    clock.ends = [12.0, 12.5, 13.0, 14.0]
    assert clock.first_step_s == pytest.approx(2.0)
    # Steps 2-4 (after one warm-up step): 2 steps of 32 samples in 1.5 s.
    assert clock.samples_per_s(warmup_steps=1, batch_size=32) == pytest.approx(64 / 1.5)
    with pytest.raises(ValueError, match="two timed steps"):
        clock.samples_per_s(warmup_steps=3, batch_size=32)
    with pytest.raises(EnoughSteps):
        clock.tick()
    assert len(clock.ends) == 5


def test_wrapped_step_runs_the_step_then_ticks():
    calls: list[int] = []
    clock = StepClock(stop_after=2)
    timed = clock.wrap(lambda x: calls.append(x))
    timed(1)
    assert calls == [1] and len(clock.ends) == 1
    with pytest.raises(EnoughSteps):
        timed(2)
    assert calls == [1, 2]


def test_larger_copy_repeats_the_training_split_and_its_row_count(tmp_path: Path):
    data = tmp_path / "data"
    data.mkdir()
    rows = [{"text": f"review {i}", "stars": i % 5 + 1} for i in range(7)]
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (data / "validation.jsonl").write_text(json.dumps(rows[0]) + "\n")
    splits = {"train": {"rows": 7}, "validation": {"rows": 1}}
    (data / "summary.json").write_text(json.dumps({"splits": splits}))
    large = larger_copy(data, tmp_path / "large", factor=10)
    assert len(load_reviews(large, splits=("train",))) == 70
    assert len(load_reviews(large, splits=("validation",))) == 1
    summary = json.loads((large / "summary.json").read_text())
    assert summary["splits"]["train"]["rows"] == 70


def test_report_ratios():
    report = TrainingBenchReport("m", batch_size=32, steps=10)
    report.samples_per_s = {"loop": {"fp32": 30.0, "bf16": 45.0}, "trainer": {"fp32": 25.0}}
    report.first_step_s = {"1x": 4.0, "10x": 4.4}
    payload = report.to_json()
    assert payload["loop_over_trainer"] == pytest.approx(1.2)
    assert payload["first_step_ratio_10x"] == pytest.approx(1.1)
    assert payload["samples_per_s"]["loop"]["bf16"] == 45.0
    empty = TrainingBenchReport("m", batch_size=32, steps=10).to_json()
    assert empty["loop_over_trainer"] is None and empty["first_step_ratio_10x"] is None


@pytest.mark.slow
def test_bench_training_end_to_end(tiny_model_dir: Path, tiny_data_dir: Path, tmp_path: Path):
    out = tmp_path / "training.json"
    args = ["bench", "training", "--model", str(tiny_model_dir), "--data", str(tiny_data_dir)]
    args += ["--steps", "2", "--warmup-steps", "1", "--num-workers", "0", "--repeats", "1"]
    args += ["--json", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "loop/Trainer" in result.output and "time to first step" in result.output
    payload = json.loads(out.read_text())
    for name in ("loop", "trainer"):
        assert set(payload["samples_per_s"][name]) == {"fp32", "bf16"}
        assert all(v > 0 for v in payload["samples_per_s"][name].values())
    assert payload["loop_over_trainer"] == pytest.approx(
        payload["samples_per_s"]["loop"]["fp32"] / payload["samples_per_s"]["trainer"]["fp32"]
    )
    assert payload["first_step_ratio_10x"] == pytest.approx(
        payload["first_step_s"]["10x"] / payload["first_step_s"]["1x"]
    )
    assert payload["rows"] == {"1x": 200, "10x": 2000}


def test_bench_training_refuses_a_directory_without_a_training_split(tmp_path: Path):
    result = runner.invoke(app, ["bench", "training", "--data", str(tmp_path)])
    assert result.exit_code == 2
    assert "train.jsonl" in result.output
