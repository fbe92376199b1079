"""Temperature scaling: calibrated probabilities from a single scalar fitted on validation.

Users read the probabilities ("5 stars, 92%"), so they should mean what they say. Dividing the
logits by a temperature T (fitted to minimise the validation log loss) keeps every prediction's
argmax and fixes over- or under-confidence; the expected calibration error (ECE) before and after
shows how much it helped. T travels in the saved model config (``save_artifacts(temperature=)``)
and the handler applies it.

A temperature fitted on a few hundred validation reviews can fit their noise and make the ECE
worse on other data. ``choose_temperature`` therefore cross-fits first: on each of
``CALIBRATION_FOLDS`` validation folds it measures the ECE at T = 1 and at the T fitted on the
other folds, and keeps the temperature fitted on all of validation only if the mean held-out ECE
went down; otherwise the model keeps T = 1.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax
from sklearn.model_selection import KFold, StratifiedKFold

ECE_BINS = 15
CALIBRATION_FOLDS = 5
CALIBRATION_SEED = 0
# exp(±3): T outside [0.05, 20] means the logits carry no usable confidence at all.
_LOG_T_BOUNDS = (-3.0, 3.0)


def probabilities(logits: NDArray[np.floating], temperature: float = 1.0) -> NDArray[np.float64]:
    return np.asarray(softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1))


def negative_log_likelihood(
    logits: NDArray[np.floating], labels: NDArray[np.integer], temperature: float = 1.0
) -> float:
    log_p = log_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)
    return float(-log_p[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: NDArray[np.floating], labels: NDArray[np.integer]) -> float:
    """The temperature that minimises the log loss of ``logits`` against ``labels``."""
    if len(labels) == 0:
        raise ValueError("cannot fit a temperature on an empty validation split")
    result = minimize_scalar(
        lambda log_t: negative_log_likelihood(logits, labels, float(np.exp(log_t))),
        bounds=_LOG_T_BOUNDS,
        method="bounded",
    )
    return float(np.exp(result.x))


def expected_calibration_error(
    probs: NDArray[np.floating], labels: NDArray[np.integer], bins: int = ECE_BINS
) -> float:
    """Mean gap between confidence and accuracy over equal-width confidence bins, weighted by
    how many predictions fall in each."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Right-closed bins: a confidence of exactly 1.0 belongs to the last one.
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    error = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            error += mask.mean() * abs(confidence[mask].mean() - correct[mask].mean())
    return float(error)


@dataclass(frozen=True)
class CalibrationChoice:
    """The temperature a model keeps and the held-out evidence it was chosen on."""

    temperature: float  # what the model keeps: ``fitted_temperature`` or 1.0
    fitted_temperature: float  # fitted on the whole validation split
    folds: int  # 0 where validation was too small to cross-fit
    heldout_ece_before: float | None  # mean over folds, at T = 1
    heldout_ece_after: float | None  # mean over folds, at the T fitted on the other folds
    decision: str

    @property
    def calibrated(self) -> bool:
        return self.temperature != 1.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"calibrated": self.calibrated}


def _folds(labels: NDArray[np.integer], folds: int, seed: int) -> list[NDArray[np.intp]]:
    """Held-out index sets: stratified by star where every star has ``folds`` reviews."""
    _, counts = np.unique(labels, return_counts=True)
    splitter = (
        StratifiedKFold(folds, shuffle=True, random_state=seed)
        if counts.min() >= folds
        else KFold(folds, shuffle=True, random_state=seed)
    )
    return [held_out for _, held_out in splitter.split(np.zeros(len(labels)), labels)]


def choose_temperature(
    logits: NDArray[np.floating],
    labels: NDArray[np.integer],
    *,
    folds: int = CALIBRATION_FOLDS,
    seed: int = CALIBRATION_SEED,
) -> CalibrationChoice:
    """Fit the temperature on validation, and keep it only if cross-fitting shows that it lowers
    the ECE on reviews it was not fitted on."""
    fitted = fit_temperature(logits, labels)
    folds = min(folds, len(labels) // 2)
    if folds < 2:
        return CalibrationChoice(
            1.0, fitted, 0, None, None, "T = 1 kept: too few validation reviews to cross-fit"
        )
    logits = np.asarray(logits, dtype=np.float64)
    before, after = [], []
    for held_out in _folds(labels, folds, seed):
        rest = np.setdiff1d(np.arange(len(labels)), held_out)
        temperature = fit_temperature(logits[rest], labels[rest])
        before.append(expected_calibration_error(probabilities(logits[held_out]), labels[held_out]))
        after.append(
            expected_calibration_error(
                probabilities(logits[held_out], temperature), labels[held_out]
            )
        )
    ece_before, ece_after = float(np.mean(before)), float(np.mean(after))
    if ece_after < ece_before:
        decision = "fitted temperature kept: it lowered the ECE on held-out validation folds"
        return CalibrationChoice(fitted, fitted, folds, ece_before, ece_after, decision)
    decision = "T = 1 kept: the fitted temperature did not lower the ECE on held-out folds"
    return CalibrationChoice(1.0, fitted, folds, ece_before, ece_after, decision)
