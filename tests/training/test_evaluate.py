"""Rating metrics and evaluation files on hand-checked examples."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from training.evaluate import compute_metrics, plot_confusion_matrix, plot_training_curves


def _one_hot(predicted: list[int]) -> np.ndarray:
    return np.eye(5)[predicted]


def test_metrics_of_a_known_confusion() -> None:
    labels = np.array([0, 1, 2, 3, 4, 4])
    predicted = [0, 1, 3, 3, 2, 4]  # one off by one, one off by two
    metrics = compute_metrics(labels, _one_hot(predicted))
    assert metrics["n"] == 6
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert metrics["mae"] == pytest.approx(3 / 6)
    assert metrics["off_by_one"] == pytest.approx(5 / 6)
    assert metrics["confusion_matrix"][4] == [0, 0, 1, 0, 1]
    assert metrics["per_class"]["5"]["recall"] == pytest.approx(0.5)
    assert 0 < metrics["qwk"] < 1


def test_perfect_and_reversed_predictions_bound_the_kappa() -> None:
    labels = np.array([0, 1, 2, 3, 4] * 4)
    assert compute_metrics(labels, _one_hot(list(labels)))["qwk"] == pytest.approx(1.0)
    reversed_qwk = compute_metrics(labels, _one_hot(list(4 - labels)))["qwk"]
    assert reversed_qwk == pytest.approx(-1.0)


def test_macro_f1_averages_over_the_classes_that_occur() -> None:
    labels = np.array([0, 0, 1, 1])
    metrics = compute_metrics(labels, _one_hot([0, 0, 1, 1]))
    assert metrics["macro_f1"] == pytest.approx(1.0)  # stars absent from the split do not count
    skewed = compute_metrics(labels, _one_hot([0, 0, 0, 0]))
    assert skewed["macro_f1"] < 0.5


def test_empty_split_is_an_error() -> None:
    with pytest.raises(ValueError, match="no reviews"):
        compute_metrics(np.zeros(0, dtype=int), np.zeros((0, 5)))


def test_plots_are_png_files(tmp_path: Path) -> None:
    matrix = [[3, 1, 0, 0, 0]] * 5
    confusion = plot_confusion_matrix(matrix, tmp_path / "cm.png", "test")
    history = [
        {"step": 10, "train_loss": 1.5},
        {"step": 20, "train_loss": 1.2},
        {
            "step": 20,
            "validation_loss": 1.3,
            "validation_accuracy": 0.5,
            "validation_mae": 0.7,
            "validation_qwk": 0.6,
        },
    ]
    curves = plot_training_curves(history, tmp_path / "curves.png")
    for path in (confusion, curves):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    json.dumps(history)


def test_reliability_diagram_shows_a_temperature_that_was_not_kept(tmp_path: Path) -> None:
    from training.evaluate import Predictions, plot_reliability

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 200)
    logits = rng.normal(0, 1, size=(200, 5)).astype(np.float32)
    predictions = Predictions(index=np.arange(200), logits=logits, labels=labels)
    path = plot_reliability(predictions, 1.0, tmp_path / "plots" / "reliability.png", fitted=1.7)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
