"""Paired evaluation from shadow traffic, by simulation: honest under A/A, and how much feedback
it saves against the split comparison.

Each simulated experiment has 300 sticky users sending ~8 feedbacks each (gamma-distributed
activity, random arrival order), each with an accuracy of their own (0.6 + 0.15 * N(0, 1)),
as in ``test_verdict_simulation``. Two ways to learn whether a candidate 5 accuracy points
better is better:

* **split**: half the users (drawn per user) are served by the candidate; the verdict's test
  (``stats.sequential_comparison``, user-clustered, always valid).
* **paired**: every user is served by the control and the candidate answers a shadow copy of
  every request; the user's true stars grade both answers (``stats.paired_comparison`` on the
  per-feedback difference, user-clustered, always valid). Two models mostly agree: where the
  control is right the candidate is wrong 5 % of the time, and right where the control is wrong
  often enough to be 5 points better on average, so a review's difficulty cancels.

Read after every feedback; a run is called at its first look with p < alpha.
Run with ``pytest -s`` to see the numbers.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from abtesting import stats

EXPERIMENTS = 500
USERS = 300
FEEDBACK_PER_USER = 8
GAIN = 0.05
LOST_WHEN_CONTROL_RIGHT = 0.05  # the candidate's misses where the control is right


def _users(rng: np.random.Generator) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Who sends each feedback (experiments x feedbacks), and each user's control accuracy."""
    feedbacks = USERS * FEEDBACK_PER_USER
    activity = rng.gamma(0.7, size=(EXPERIMENTS, USERS))
    per_user = rng.multinomial(feedbacks, activity / activity.sum(axis=1, keepdims=True))
    ordered = np.repeat(np.tile(np.arange(USERS), EXPERIMENTS), per_user.ravel())
    user = rng.permuted(ordered.reshape(EXPERIMENTS, feedbacks), axis=1)
    accuracy = np.clip(0.6 + 0.15 * rng.standard_normal((EXPERIMENTS, USERS)), 0.02, 0.98)
    return user, np.take_along_axis(accuracy, user, axis=1)


def _paired(gain: float, seed: int) -> stats.PairedSequence:
    rng = np.random.default_rng(seed)
    user, p = _users(rng)
    live = rng.random(user.shape) < p
    # P(candidate right | control wrong) that makes the candidate `gain` better on average.
    lost = LOST_WHEN_CONTROL_RIGHT if gain else 0.0
    won = np.clip((gain + p * lost) / (1 - p), 0.0, 1.0)
    shadow = np.where(live, rng.random(user.shape) >= lost, rng.random(user.shape) < won)
    difference = shadow.astype(np.float64) - live
    return stats.paired_comparison(difference, user, stats.MIXTURE_SD["accuracy"], binary=True)


def _split(gain: float, seed: int) -> stats.SequentialComparison:
    rng = np.random.default_rng(seed)
    user, p = _users(rng)
    is_candidate = np.take_along_axis(rng.random((EXPERIMENTS, USERS)) < 0.5, user, axis=1)
    correct = rng.random(user.shape) < p + np.where(is_candidate, gain, 0.0)
    return stats.sequential_comparison(
        is_candidate, correct, user, stats.MIXTURE_SD["accuracy"], binary=True
    )


def _first_call(p_value: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Feedbacks at each run's first look with p < alpha (nan: never called)."""
    called = p_value < stats.ALPHA
    first = np.argmax(called, axis=1).astype(np.float64) + 1
    return np.where(called.any(axis=1), first, np.nan)


def test_paired_aa_experiments_are_rarely_called() -> None:
    """The same model as live and shadow answers disagree only by chance (here: never), and a
    shadow that is as good but different (right and wrong on other reviews) is called at most
    alpha of the time."""
    identical = _paired(0.0, seed=31)
    assert (identical.p_value[:, -1] == 1.0).all()
    rng = np.random.default_rng(32)
    user, p = _users(rng)
    live = rng.random(user.shape) < p
    shadow = rng.random(user.shape) < p  # as good, but right on other reviews
    different = stats.paired_comparison(
        shadow.astype(np.float64) - live, user, stats.MIXTURE_SD["accuracy"], binary=True
    )
    rate = float((different.p_value[:, -1] < stats.ALPHA).mean())
    print(f"\npaired A/A (as good, different answers): called in {rate:.1%} of {EXPERIMENTS}")
    assert rate <= stats.ALPHA + 2 * np.sqrt(stats.ALPHA * (1 - stats.ALPHA) / EXPERIMENTS)


def test_paired_evaluation_needs_far_less_feedback_than_the_split() -> None:
    paired = _first_call(_paired(GAIN, seed=33).p_value)
    split = _first_call(_split(GAIN, seed=33).p_value)
    paired_power, split_power = np.isfinite(paired).mean(), np.isfinite(split).mean()
    # Medians over all runs, a run never called counting as beyond the horizon.
    horizon = USERS * FEEDBACK_PER_USER + 1
    paired_median = float(np.median(np.nan_to_num(paired, nan=horizon)))
    split_median = float(np.median(np.nan_to_num(split, nan=horizon)))
    print(
        f"\n+{GAIN:.0%} accuracy, {USERS} users x ~{FEEDBACK_PER_USER} feedbacks: called better "
        f"in {paired_power:.1%} paired vs {split_power:.1%} split; median feedbacks to the call "
        f"{paired_median:.0f} paired vs {split_median:.0f} split (>{horizon - 1}: not called)"
    )
    assert paired_power >= 0.8
    assert split_power < 0.5
    assert paired_median * 3 < split_median
