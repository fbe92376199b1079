"""The human ceiling: how often people who rated the same sentence agree on its star.

The embedded corpora keep every rater's rating (-4..+4) of every sentence, and a prepared row
carries them as ``ratings``. Two agreements, both mapped to stars by the cut points that make
the labels (``training.data.embedded.CUT_POINTS``), on the rows of one split:

- **single rater**: one rater's star against the star of the mean of the other raters, averaged
  over the raters of a sentence, then over sentences (what one person reading the sentence
  would answer);
- **half panel**: the star of the mean of a random half of the raters against the star of the
  mean of the other half, averaged over ``HALF_PANEL_SPLITS`` seeded random splits (what a
  second panel like the one that made the labels would answer: a ceiling worth aiming at).

Each is reported as exact-star accuracy and mean absolute error in stars, beside the model's.
Where rows carry their raters' ``distribution`` over stars, ``distribution_agreement`` says how
close the model's probabilities come to it (Brier score and KL divergence, lower is closer).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.special import rel_entr

from training.data.embedded import CUT_POINTS
from training.data.readers import open_text

HALF_PANEL_SPLITS = 200
HALF_PANEL_SEED = 0
_CUTS = np.asarray(CUT_POINTS)


def rating_stars(values: NDArray[np.floating]) -> NDArray[np.int64]:
    """Ratings (or mean ratings) on -4..+4 as 1-5 stars, element-wise, by the cut points."""
    return np.searchsorted(_CUTS, values, side="right").astype(np.int64) + 1


def _single_rater(ratings: NDArray[np.float64]) -> tuple[float, float]:
    """(accuracy, MAE) of each rater against the mean of the others, over one sentence."""
    others = (ratings.sum() - ratings) / (len(ratings) - 1)
    distance = np.abs(rating_stars(ratings) - rating_stars(others))
    return float((distance == 0).mean()), float(distance.mean())


def _half_panel(
    ratings: NDArray[np.float64], rng: np.random.Generator, splits: int
) -> tuple[float, float]:
    """(accuracy, MAE) of half the raters against the other half, over ``splits`` splits."""
    half = len(ratings) // 2
    shuffled = rng.permuted(np.tile(ratings, (splits, 1)), axis=1)
    first = rating_stars(shuffled[:, :half].mean(axis=1))
    second = rating_stars(shuffled[:, half:].mean(axis=1))
    distance = np.abs(first - second)
    return float((distance == 0).mean()), float(distance.mean())


def human_agreement(
    ratings: Sequence[Sequence[float]],
    *,
    seed: int = HALF_PANEL_SEED,
    splits: int = HALF_PANEL_SPLITS,
) -> dict[str, Any] | None:
    """Single-rater and half-panel agreement over sentences rated by two or more people;
    None when there is no such sentence."""
    rated = [np.asarray(r, dtype=np.float64) for r in ratings if len(r) >= 2]
    if not rated:
        return None
    rng = np.random.default_rng(seed)
    single = np.array([_single_rater(r) for r in rated])
    panel = np.array([_half_panel(r, rng, splits) for r in rated])
    raters = [len(r) for r in rated]
    return {
        "n": len(rated),
        "raters": {"min": min(raters), "max": max(raters)},
        "single_rater": {"accuracy": float(single[:, 0].mean()), "mae": float(single[:, 1].mean())},
        "half_panel": {
            "accuracy": float(panel[:, 0].mean()),
            "mae": float(panel[:, 1].mean()),
            "splits": splits,
            "seed": seed,
        },
    }


def _split_field(files: Sequence[Path], name: str) -> list[list[float] | None]:
    """One list-valued field of every row of a prepared split, in line order (None where a
    row lacks it)."""
    found: list[list[float] | None] = []
    for path in files:
        with open_text(path) as handle:
            for line in handle:
                if not line.strip():
                    continue
                try:
                    value = json.loads(line).get(name)
                except (ValueError, AttributeError):
                    value = None  # not a prepared row: the model's evaluation reports it
                found.append(value if isinstance(value, list) else None)
    return found


def split_human_agreement(files: Sequence[Path]) -> dict[str, Any] | None:
    """The human agreement on a prepared split, or None where its rows carry no ratings."""
    return human_agreement([r for r in _split_field(files, "ratings") if r is not None])


def distribution_agreement(
    probs: NDArray[np.floating], distributions: Sequence[Sequence[float] | None]
) -> dict[str, Any] | None:
    """Brier score and KL(raters || model) of predicted probabilities against the raters'
    distribution over stars, over the rows (in line order) that carry one."""
    rows = [i for i, d in enumerate(distributions) if d is not None and len(d) == probs.shape[1]]
    if not rows or len(distributions) != len(probs):
        return None
    target = np.asarray([distributions[i] for i in rows], dtype=np.float64)
    predicted = np.asarray(probs, dtype=np.float64)[rows]
    brier = ((predicted - target) ** 2).sum(axis=1).mean()
    kl = rel_entr(target, np.clip(predicted, 1e-12, None)).sum(axis=1).mean()
    return {"n": len(rows), "brier": float(brier), "kl": float(kl)}


def split_distribution_agreement(
    files: Sequence[Path], probs: NDArray[np.floating]
) -> dict[str, Any] | None:
    """``distribution_agreement`` of a split's predictions (in line order) with its rows."""
    return distribution_agreement(probs, _split_field(files, "distribution"))
