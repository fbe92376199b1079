"""Temperature scaling recovers a known over-confidence and lowers the calibration error."""

from __future__ import annotations

import numpy as np

from training.calibration import expected_calibration_error, fit_temperature, probabilities


def _overconfident(true_temperature: float, n: int = 4000) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    calibrated_logits = rng.normal(0, 2, size=(n, 5))
    probs = probabilities(calibrated_logits)
    labels = np.array([rng.choice(5, p=p) for p in probs])
    return calibrated_logits * true_temperature, labels  # logits too sharp by the temperature


def test_fitted_temperature_undoes_overconfidence() -> None:
    logits, labels = _overconfident(2.5)
    temperature = fit_temperature(logits, labels)
    assert abs(temperature - 2.5) < 0.25
    before = expected_calibration_error(probabilities(logits), labels)
    after = expected_calibration_error(probabilities(logits, temperature), labels)
    assert after < before / 3


def test_temperature_keeps_every_prediction() -> None:
    logits, _ = _overconfident(3.0, n=200)
    assert (probabilities(logits, 3.0).argmax(1) == logits.argmax(1)).all()


def test_perfectly_confident_and_right_is_calibrated() -> None:
    probs = np.eye(5)[[0, 1, 2, 3, 4]]
    assert expected_calibration_error(probs, np.arange(5)) == 0.0
    assert expected_calibration_error(probs, np.array([1, 2, 3, 4, 0])) == 1.0
