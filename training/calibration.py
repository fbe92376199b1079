"""Temperature scaling: calibrated probabilities from a single scalar fitted on validation.

Users read the probabilities ("5 stars, 92%"), so they should mean what they say. Dividing the
logits by a temperature T (fitted to minimise the validation log loss) keeps every prediction's
argmax and fixes over- or under-confidence; the expected calibration error (ECE) before and after
shows how much it helped. T travels in the saved model config (``save_artifacts(temperature=)``)
and the handler applies it.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

ECE_BINS = 15
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
