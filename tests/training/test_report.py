"""The summary of a finished run: calibrated on validation, reported on test where there is one."""

from __future__ import annotations

import numpy as np

from training.evaluate import Predictions
from training.report import summarise_run


def _predictions(n: int, seed: int) -> Predictions:
    """Over-confident logits that are right about half the time."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 5, n)
    logits = rng.normal(0, 1, size=(n, 5)).astype(np.float32)
    logits[np.arange(n), labels] += 1.0
    return Predictions(index=np.arange(n), logits=logits * 5, labels=labels)


def test_the_test_split_is_reported_with_the_validation_temperature() -> None:
    validation, test = _predictions(200, seed=0), _predictions(80, seed=1)
    result = summarise_run(validation, test, {"steps": 7, "stopped": "completed"})
    summary = result.summary
    assert (result.split, summary["split"], summary["n"]) == ("test", "test", 80)
    assert summary["validation"]["n"] == 200
    assert summary["temperature"] == result.temperature > 1  # the logits were too sharp
    assert summary["ece_after"] < summary["ece_before"]
    assert (summary["steps"], summary["stopped"]) == (7, "completed")
    assert sum(map(sum, summary["confusion_matrix"])) == 80
    assert result.final_metrics == {
        **{f"test_{k}": summary[k] for k in ("accuracy", "macro_f1", "mae", "off_by_one", "qwk")},
        "ece_before": summary["ece_before"],
        "ece_after": summary["ece_after"],
        "temperature": summary["temperature"],
    }


def test_without_a_test_split_validation_is_the_final_split() -> None:
    validation = _predictions(200, seed=0)
    result = summarise_run(validation, None, {})
    assert (result.split, result.summary["n"]) == ("validation", 200)
    assert result.predictions is validation
    assert "validation_accuracy" in result.final_metrics


def test_the_summary_records_the_cross_fitted_calibration_decision() -> None:
    validation, test = _predictions(200, seed=0), _predictions(80, seed=1)
    calibration = summarise_run(validation, test, {}).summary["calibration"]
    assert calibration["calibrated"] is True and calibration["folds"] == 5
    assert calibration["heldout_ece_after"] < calibration["heldout_ece_before"]
    assert calibration["temperature"] == calibration["fitted_temperature"]
    assert calibration["decision"].startswith("fitted temperature kept")
