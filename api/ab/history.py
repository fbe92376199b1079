"""The always-valid interval of the primary metric over time, for the dashboard.

After each feedback (in arrival order, with its stored time) the difference in the primary metric
(candidate - control) and its always-valid 95% interval: the mSPRT confidence sequence
(``stats.always_valid_half_width``) on the running difference and variance of the report's own
sequential test (``stats.sequential_comparison``: cluster-robust, the user being the
randomisation unit). Because the interval is valid at every look at once, a
user may watch it narrow and see where the autopilot acted without the picture lying about
significance. Long experiments are thinned to at most ``MAX_POINTS`` evenly spaced looks, the
first and the last always among them.

Pure: no I/O. ``report.build_report`` calls it on the feedback it already read from the store.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from api.ab import stats
from api.ab.assessment import FeedbackObs, primary_values

# At most this many looks per candidate: enough for a smooth line, small enough for the report.
MAX_POINTS = 200


class IntervalPoint(BaseModel):
    feedbacks: int = Field(description="feedbacks of the experiment so far (all variants)")
    at: datetime = Field(description="when the last of them was stored")
    difference: float = Field(description="candidate minus control in the primary metric")
    low: float = Field(description="always-valid 95% interval")
    high: float


def look_positions(first: int, last: int, max_points: int = MAX_POINTS) -> list[int]:
    """At most ``max_points`` evenly spaced positions from ``first`` to ``last``, both kept."""
    if last < first:
        return []
    if max_points < 2:
        raise ValueError(f"max_points must be at least 2, got {max_points}")
    count = min(last - first + 1, max_points)
    return [int(p) for p in np.unique(np.rint(np.linspace(first, last, count)))]


def interval_history(
    control: str,
    candidates: Sequence[str],
    feedback: Sequence[FeedbackObs],
    metric: Literal["accuracy", "mae"],
    *,
    alpha: float = stats.ALPHA,
    burn_in: int = stats.SEQUENTIAL_BURN_IN,
    max_points: int = MAX_POINTS,
) -> dict[str, list[IntervalPoint]]:
    """For each candidate, the difference and its always-valid interval at each look.

    ``feedback`` is the experiment's feedback in arrival order
    (``store.feedback_observations``). The mixture SD is the report's for ``metric``. The
    running difference and its variance come from ``stats.sequential_comparison``, the same
    computation as the report's sequential test, so the last look agrees with the report. A
    look counts once both arms have
    ``burn_in`` units (the test's burn-in); a candidate with less has an empty list.
    """
    values = primary_values(
        metric,
        np.array([f.true_stars for f in feedback], dtype=np.int64),
        np.array([f.predicted_stars for f in feedback], dtype=np.int64),
    )
    variants = np.array([f.variant for f in feedback], dtype=object)
    mixture_sd = stats.MIXTURE_SD[metric]
    units = stats.unit_codes([f.unit for f in feedback])
    history: dict[str, list[IntervalPoint]] = {candidate: [] for candidate in candidates}
    if not feedback:
        return history
    for candidate in candidates:
        is_candidate = variants == candidate
        running = stats.sequential_comparison(
            is_candidate,
            values,
            units,
            mixture_sd,
            binary=metric == "accuracy",
            include=is_candidate | (variants == control),
            burn_in=burn_in,
        )
        usable = np.flatnonzero(running.usable)
        if usable.size == 0:
            continue
        looks = look_positions(int(usable[0]), len(feedback) - 1, max_points)
        half = stats.always_valid_half_width(running.variance[looks], mixture_sd, alpha)
        history[candidate] = [
            IntervalPoint(
                feedbacks=position + 1,
                at=feedback[position].at,
                difference=float(running.difference[position]),
                low=float(running.difference[position] - h),
                high=float(running.difference[position] + h),
            )
            for position, h in zip(looks, half, strict=True)
            if running.usable[position]
        ]
    return history
