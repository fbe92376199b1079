"""The assessment's interval over time: it narrows, it keeps its promise at every look, it stays
within the metric's range and small."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from abtesting import stats
from abtesting.assessment import MAX_LOOKS, FeedbackObs, Look, assess, look_positions
from abtesting.stats import MIXTURE_SD, Metric, SampleRatioCheck

START = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
SPLIT_OK = SampleRatioCheck({}, {}, 0.0, 1.0, False)


def interval_history(
    control: str,
    candidates: list[str],
    feedback: list[FeedbackObs],
    metric: Metric,
    max_points: int = MAX_LOOKS,
) -> dict[str, list[Look]]:
    """Each candidate's looks, as the assessment (and so the report) has them."""
    assessment = assess(
        control, candidates, SPLIT_OK, [], feedback, [], primary_metric=metric, max_looks=max_points
    )
    return {c.candidate: list(c.history) for c in assessment.primary}


def simulate(
    rng: np.random.Generator,
    n: int,
    accuracy: dict[str, float],
    weights: dict[str, float],
    users: int | None = None,
) -> list[FeedbackObs]:
    """``n`` feedbacks a second apart; each variant right with its accuracy (else one star off)."""
    names = list(weights)
    variants = rng.choice(names, size=n, p=[weights[v] for v in names])
    hits = rng.random(n)
    predicted = rng.integers(1, 6, size=n)
    units = rng.integers(0, users, size=n) if users else np.arange(n)
    return [
        FeedbackObs(
            variant=str(v),
            unit=f"{v}-{u}",
            true_stars=int(p) if hits[i] < accuracy[str(v)] else int(p % 5 + 1),
            predicted_stars=int(p),
            at=START + timedelta(seconds=i),
        )
        for i, (v, p, u) in enumerate(zip(variants, predicted, units, strict=True))
    ]


def test_the_interval_narrows_as_feedback_grows() -> None:
    rng = np.random.default_rng(1)
    feedback = simulate(
        rng, 3000, {"control": 0.6, "candidate": 0.7}, {"control": 0.5, "candidate": 0.5}
    )

    points = interval_history("control", ["candidate"], feedback, "accuracy")["candidate"]

    widths = [p.high - p.low for p in points]
    assert widths[0] > 3 * widths[-1]
    # Narrowing throughout, not only end to end: each quarter narrower than the one before.
    quarters = [float(np.mean(q)) for q in np.array_split(np.array(widths), 4)]
    assert quarters == sorted(quarters, reverse=True)
    assert all(p.low <= p.difference <= p.high for p in points)
    # The last look is the whole experiment: the plain difference in accuracy.
    right = {
        v: [f.true_stars == f.predicted_stars for f in feedback if f.variant == v]
        for v in ("control", "candidate")
    }
    assert points[-1].difference == pytest.approx(
        np.mean(right["candidate"]) - np.mean(right["control"])
    )


def test_the_interval_covers_the_true_difference_at_every_look_in_95_percent_of_runs() -> None:
    """Always valid: the share of runs whose interval ever misses the truth stays near 5%,
    where the fixed-horizon 95% interval, looked at as often, misses it far more often."""
    rng = np.random.default_rng(7)
    runs, truth = 300, 0.05
    accuracy = {"control": 0.6, "candidate": 0.6 + truth}
    ever_missed = naive_ever_missed = 0
    for _ in range(runs):
        feedback = simulate(rng, 800, accuracy, {"control": 0.5, "candidate": 0.5}, users=300)
        points = interval_history("control", ["candidate"], feedback, "accuracy", max_points=60)[
            "candidate"
        ]
        assert len(points) == 60
        ever_missed += any(not p.low <= truth <= p.high for p in points)
        # The classical 95% interval on the same running variance, looked at as often.
        running = stats.sequential_comparison(
            [f.variant == "candidate" for f in feedback],
            [float(f.true_stars == f.predicted_stars) for f in feedback],
            stats.unit_codes([f.unit for f in feedback]),
            MIXTURE_SD["accuracy"],
            binary=True,
        )
        looks = [p.feedbacks - 1 for p in points]
        miss = np.abs(running.difference[looks] - truth) > 1.959964 * np.sqrt(
            running.variance[looks]
        )
        naive_ever_missed += bool(miss.any())
    assert ever_missed / runs <= 0.06
    assert naive_ever_missed / runs > 0.15 > 2 * ever_missed / runs


def test_long_experiments_are_thinned_keeping_the_first_and_last_look() -> None:
    rng = np.random.default_rng(3)
    feedback = simulate(
        rng,
        5000,
        {"control": 0.6, "candidate": 0.6, "other": 0.5},
        {"control": 0.4, "candidate": 0.4, "other": 0.2},
    )

    history = interval_history("control", ["candidate", "other"], feedback, "mae")

    for name, points in history.items():
        assert len(points) == MAX_LOOKS, name
        counts = [p.feedbacks for p in points]
        assert counts == sorted(set(counts))
        assert counts[-1] == len(feedback) and points[-1].at == feedback[-1].at
        # The first look: the first feedback at which both arms have the burn-in (each
        # feedback here is its own user).
        variants = np.array([f.variant for f in feedback])
        both = np.minimum(np.cumsum(variants == "control"), np.cumsum(variants == name))
        first = int(np.argmax(both >= stats.SEQUENTIAL_BURN_IN)) + 1
        assert counts[0] == first
        assert points[0].at == feedback[first - 1].at


def test_no_interval_before_both_arms_have_their_burn_in() -> None:
    rng = np.random.default_rng(5)
    feedback = simulate(
        rng, 30, {"control": 0.6, "candidate": 0.7}, {"control": 0.5, "candidate": 0.5}
    )

    history = interval_history("control", ["candidate", "absent"], feedback, "accuracy")

    assert history == {"candidate": [], "absent": []}


def test_the_band_stays_within_the_possible_range_of_the_difference() -> None:
    """Early looks of a small experiment with a large difference reach past what the metric
    allows (an accuracy difference lies in [-1, 1], an MAE difference in [-4, 4]): the band is
    cut there instead of promising values no experiment can have."""
    rng = np.random.default_rng(11)
    feedback = simulate(
        rng, 80, {"control": 0.1, "candidate": 0.95}, {"control": 0.5, "candidate": 0.5}
    )
    accuracy = interval_history("control", ["candidate"], feedback, "accuracy")["candidate"]
    assert accuracy and all(-1.0 <= p.low <= p.difference <= p.high <= 1.0 for p in accuracy)
    assert accuracy[0].high == 1.0  # cut: the uncut interval of the first look passes 1
    mae = interval_history("control", ["candidate"], feedback, "mae")["candidate"]
    assert mae and all(-4.0 <= p.low <= p.difference <= p.high <= 4.0 for p in mae)


def test_look_positions_are_even_and_keep_both_ends() -> None:
    assert look_positions(3, 7) == [3, 4, 5, 6, 7]
    assert look_positions(5, 4) == []
    positions = look_positions(19, 10_018, max_points=200)
    assert len(positions) == 200 and positions[0] == 19 and positions[-1] == 10_018
    gaps = np.diff(positions)
    assert gaps.max() - gaps.min() <= 1
