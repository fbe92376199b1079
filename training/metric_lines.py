"""Metric log lines that a regular expression can read (SageMaker metric definitions).

Rank 0 logs one line per logging interval, evaluation and final result, such as::

    metrics step=120 epoch=1 train_loss=0.8123 learning_rate=4.1e-05 samples_per_sec=35.2
    metrics step=186 epoch=2 validation_loss=0.79 validation_accuracy=0.66 validation_mae=0.41

``METRIC_DEFINITIONS`` is the list a SageMaker training job takes as ``metric_definitions``
(``{"Name", "Regex"}``; the first group of the regex is the value).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

logger = logging.getLogger("training.metrics")

_NUMBER = r"([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"
# log key -> SageMaker metric name
_NAMES = {
    "train_loss": "train:loss",
    "learning_rate": "train:learning_rate",
    "samples_per_sec": "train:samples_per_sec",
    "validation_loss": "validation:loss",
    "validation_accuracy": "validation:accuracy",
    "validation_macro_f1": "validation:macro_f1",
    "validation_mae": "validation:mae",
    "validation_qwk": "validation:qwk",
    "test_accuracy": "test:accuracy",
    "test_macro_f1": "test:macro_f1",
    "test_mae": "test:mae",
    "test_off_by_one": "test:off_by_one",
    "test_qwk": "test:qwk",
    "ece_before": "calibration:ece_before",
    "ece_after": "calibration:ece_after",
    "temperature": "calibration:temperature",
}
METRIC_DEFINITIONS: list[dict[str, str]] = [
    {"Name": name, "Regex": rf"\b{key}={_NUMBER}"} for key, name in _NAMES.items()
]


def format_metric_line(values: Mapping[str, float | int]) -> str:
    """``metrics key=value ...`` with numbers in a form the regexes read."""
    parts = []
    for key, value in values.items():
        text = str(value) if isinstance(value, int) else f"{value:.6g}"
        parts.append(f"{key}={text}")
    return "metrics " + " ".join(parts)


def log_metrics(values: Mapping[str, float | int]) -> None:
    logger.info("%s", format_metric_line(values))
