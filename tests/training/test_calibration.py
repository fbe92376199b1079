"""Temperature scaling recovers a known over-confidence and lowers the calibration error."""

from __future__ import annotations

import numpy as np

from training.calibration import (
    choose_temperature,
    expected_calibration_error,
    fit_temperature,
    probabilities,
)


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


# -- cross-fitted choice: keep the temperature only where it helps on held-out reviews ----------


def _model(true_temperature: float, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from calibrated probabilities; logits sharpened by ``true_temperature``."""
    rng = np.random.default_rng(seed)
    calibrated_logits = rng.normal(0, 2, size=(n, 5))
    cumulative = probabilities(calibrated_logits).cumsum(axis=1)
    labels = (cumulative > rng.random((n, 1))).argmax(axis=1)
    return calibrated_logits * true_temperature, labels


def test_an_overconfident_model_keeps_its_temperature_and_it_holds_on_new_reviews() -> None:
    logits, labels = _model(2.0, n=370, seed=3)  # a validation split's size
    choice = choose_temperature(logits, labels)
    assert choice.calibrated and choice.temperature == choice.fitted_temperature > 1.5
    assert choice.folds == 5
    assert choice.heldout_ece_after is not None and choice.heldout_ece_before is not None
    assert choice.heldout_ece_after < choice.heldout_ece_before
    new_logits, new_labels = _model(2.0, n=4000, seed=4)  # reviews it never saw
    before = expected_calibration_error(probabilities(new_logits), new_labels)
    after = expected_calibration_error(probabilities(new_logits, choice.temperature), new_labels)
    assert after < before / 2


def test_a_calibrated_model_mostly_keeps_t_1_and_an_overconfident_one_rarely_does() -> None:
    calibrated = [choose_temperature(*_model(1.0, 370, seed)) for seed in range(40)]
    sharp = [choose_temperature(*_model(1.5, 370, seed)) for seed in range(40)]
    assert sum(not c.calibrated for c in calibrated) >= 24  # a fitted T ~ 1 rarely generalises
    assert sum(c.calibrated for c in sharp) >= 36
    for choice in calibrated:
        assert (choice.temperature == 1.0) == (
            choice.heldout_ece_after is not None
            and choice.heldout_ece_before is not None
            and choice.heldout_ece_after >= choice.heldout_ece_before
        )


def test_t_1_is_kept_where_no_temperature_changes_anything() -> None:
    logits = np.zeros((100, 5))  # uniform at every temperature
    choice = choose_temperature(logits, np.arange(100) % 5)
    assert choice.temperature == 1.0 and not choice.calibrated
    assert choice.heldout_ece_after == choice.heldout_ece_before
    assert "did not lower" in choice.decision


def test_too_few_validation_reviews_keep_t_1() -> None:
    logits, labels = _model(3.0, n=3, seed=0)
    choice = choose_temperature(logits, labels)
    assert (choice.temperature, choice.folds, choice.heldout_ece_before) == (1.0, 0, None)
    assert choice.to_json()["calibrated"] is False
