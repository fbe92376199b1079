"""SageMaker metric definitions read the metric lines that training logs."""

from __future__ import annotations

import re

import pytest

from training.metric_lines import METRIC_DEFINITIONS, format_metric_line

TRAIN_LINE = format_metric_line(
    {
        "step": 120,
        "epoch": 2,
        "train_loss": 0.81234567,
        "learning_rate": 4.1e-05,
        "samples_per_sec": 35.25,
    }
)
VALIDATION_LINE = format_metric_line(
    {
        "step": 186,
        "epoch": 2,
        "validation_loss": 0.79,
        "validation_accuracy": 0.6612,
        "validation_mae": 0.4123,
        "validation_qwk": 0.85,
        "validation_macro_f1": 0.64,
    }
)
FINAL_LINE = format_metric_line(
    {
        "test_accuracy": 0.7,
        "test_macro_f1": 0.68,
        "test_mae": 0.35,
        "test_off_by_one": 0.97,
        "test_qwk": 0.86,
        "ece_before": 0.08,
        "ece_after": 0.02,
        "temperature": 1.4,
    }
)


def _read(name: str, line: str) -> float | None:
    regex = next(d["Regex"] for d in METRIC_DEFINITIONS if d["Name"] == name)
    match = re.search(regex, line)
    return float(match.group(1)) if match else None


@pytest.mark.parametrize(
    ("name", "line", "value"),
    [
        ("train:loss", TRAIN_LINE, 0.812346),
        ("train:learning_rate", TRAIN_LINE, 4.1e-05),
        ("validation:accuracy", VALIDATION_LINE, 0.6612),
        ("validation:mae", VALIDATION_LINE, 0.4123),
        ("test:qwk", FINAL_LINE, 0.86),
        ("calibration:ece_after", FINAL_LINE, 0.02),
    ],
)
def test_each_metric_is_read_from_its_line(name: str, line: str, value: float) -> None:
    assert _read(name, line) == pytest.approx(value)


def test_metrics_do_not_leak_into_each_other() -> None:
    assert _read("validation:loss", TRAIN_LINE) is None
    assert _read("train:loss", VALIDATION_LINE) is None
    assert _read("test:accuracy", VALIDATION_LINE) is None


def test_every_definition_reads_a_line_and_names_are_unique() -> None:
    lines = " ".join((TRAIN_LINE, VALIDATION_LINE, FINAL_LINE))
    names = [d["Name"] for d in METRIC_DEFINITIONS]
    assert len(set(names)) == len(names)
    assert all(_read(name, lines) is not None for name in names)
