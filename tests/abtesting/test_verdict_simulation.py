"""Proof by simulation: the report's verdict, read after every feedback, is honest and useful.

Each simulated experiment has sticky users, half of them (drawn per user) in the candidate arm.
Users send feedbacks at different rates (a gamma-distributed activity, ~8 feedbacks per user on
average, some send none) in random arrival order, and each user has an accuracy of their own
(0.6 + 0.15 * N(0, 1), clipped to [0, 1]) and a way of being wrong of their own (how many stars
a wrong answer is off), so one user's feedbacks are correlated. The verdict is read after every
feedback: an experiment counts as "called" if at any look its Holm-adjusted always-valid p-value
is below alpha (with one candidate Holm is the identity, and the p-value is a running minimum,
so "at any look" is "at the last look").

Vectorised over experiments through the very function ``assessment.assess`` runs per candidate
and metric (``stats.sequential_comparison`` with the arguments ``assessment._compare`` passes);
``test_the_vectorised_reading_is_the_assessment`` checks that ``assess`` on the same feedback
says the same. Side by side on the same data: the per-request test the report used before
(every feedback its own unit), which is too eager.

Power at +10 accuracy points: 300 users x ~8 feedbacks (~2,400) call the candidate better in
only ~56 % of runs; 80 % is reached at ~450 users (~3,600 feedbacks), so the power test runs
500 users x ~8 feedbacks (``POWER_USERS``, ~85 %).

Run with ``pytest -s`` to see the numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import numpy.typing as npt
import pytest

from abtesting import stats
from abtesting.assessment import Comparison, FeedbackObs, assess

AA_EXPERIMENTS = 1000
POWER_EXPERIMENTS = 500
USERS = 300
POWER_USERS = 500  # +10 accuracy points called in >= 80 % of runs (~450 reach it, 300 do not)
FEEDBACK_PER_USER = 8
ACTIVITY_SHAPE = 0.7  # gamma shape of each user's activity: a few busy users, many quiet ones
USER_ACCURACY = 0.6
USER_ACCURACY_SD = 0.15
ALPHA = stats.ALPHA
CONTROL, CANDIDATE = "control", "candidate"
ARMS = (CONTROL, CANDIDATE)


@dataclass(frozen=True)
class Feedback:
    """Experiments (rows) of feedback in arrival order (columns)."""

    user: npt.NDArray[np.int64]
    is_candidate: npt.NDArray[np.bool_]
    errors: npt.NDArray[np.int64]  # |true - predicted| stars

    def values(self, metric: stats.Metric) -> npt.NDArray[np.float64]:
        """As ``assessment.primary_values``: 1/0 correct, or the absolute error."""
        return (self.errors == 0 if metric == "accuracy" else self.errors).astype(np.float64)

    def compare(
        self, metric: stats.Metric, *, per_request: bool = False
    ) -> stats.SequentialComparison:
        """What ``assessment._compare`` computes, for every experiment and look; per request:
        every feedback its own unit (the test that took them as independent)."""
        units = np.broadcast_to(np.arange(self.user.shape[1]), self.user.shape)
        return stats.sequential_comparison(
            self.is_candidate,
            self.values(metric),
            units if per_request else self.user,
            stats.MIXTURE_SD[metric],
            binary=metric == "accuracy",
        )

    def first(self, experiments: int) -> Feedback:
        return Feedback(
            self.user[:experiments], self.is_candidate[:experiments], self.errors[:experiments]
        )

    def observations(self, row: int) -> list[FeedbackObs]:
        """One experiment's feedback as the store hands it to ``assess``."""
        start = datetime(2025, 1, 1, tzinfo=UTC)
        return [
            FeedbackObs(
                CANDIDATE if candidate else CONTROL,
                f"user-{user:05d}",  # sorts as the integer codes: the same unit codes
                true_stars=1 + int(error),
                predicted_stars=1,
                at=start + timedelta(seconds=i),
            )
            for i, (user, candidate, error) in enumerate(
                zip(self.user[row], self.is_candidate[row], self.errors[row], strict=True)
            )
        ]


def simulate(experiments: int, users: int, accuracy_gain: float, seed: int) -> Feedback:
    """``users`` sticky users per experiment, ``users * FEEDBACK_PER_USER`` feedbacks; the
    candidate's users are right ``accuracy_gain`` more often."""
    rng = np.random.default_rng(seed)
    feedbacks = users * FEEDBACK_PER_USER
    activity = rng.gamma(ACTIVITY_SHAPE, size=(experiments, users))
    per_user = rng.multinomial(feedbacks, activity / activity.sum(axis=1, keepdims=True))
    ordered = np.repeat(np.tile(np.arange(users), experiments), per_user.ravel())
    user = rng.permuted(ordered.reshape(experiments, feedbacks), axis=1)
    in_candidate = rng.random((experiments, users)) < 0.5
    accuracy = np.clip(
        USER_ACCURACY + USER_ACCURACY_SD * rng.standard_normal((experiments, users)), 0.0, 1.0
    )
    far = rng.beta(2.0, 6.0, size=(experiments, users))  # how far off a user's wrong answers are
    is_candidate = np.take_along_axis(in_candidate, user, axis=1)
    p_correct = np.take_along_axis(accuracy, user, axis=1) + np.where(
        is_candidate, accuracy_gain, 0.0
    )
    correct = rng.random(user.shape) < p_correct
    off = 1 + rng.binomial(3, np.take_along_axis(far, user, axis=1))
    return Feedback(user, is_candidate, np.where(correct, 0, off).astype(np.int64))


def _rate_bound(rate: float, n: int, sds: float) -> float:
    return rate + sds * float(np.sqrt(rate * (1 - rate) / n))


@pytest.fixture(scope="module")
def aa() -> Feedback:
    return simulate(AA_EXPERIMENTS, USERS, accuracy_gain=0.0, seed=24)


@pytest.fixture(scope="module")
def better() -> Feedback:
    return simulate(POWER_EXPERIMENTS, POWER_USERS, accuracy_gain=0.10, seed=25)


@pytest.mark.parametrize("metric", stats.METRICS)
def test_aa_experiments_are_rarely_called_while_per_request_tests_call_many(
    aa: Feedback, metric: stats.Metric
) -> None:
    clustered = aa.compare(metric)
    per_request = aa.compare(metric, per_request=True)
    called = float(np.mean(clustered.p_value[:, -1] < ALPHA))
    called_per_request = float(np.mean(per_request.p_value[:, -1] < ALPHA))
    # For context: one fixed-horizon test per request at the last look (not always valid).
    z = np.abs(per_request.difference[:, -1]) / np.sqrt(per_request.variance[:, -1])
    fixed_per_request = float(np.mean(z > 1.959963984540054))
    print(
        f"\nA/A {metric}, {AA_EXPERIMENTS} experiments x {USERS} users x ~{FEEDBACK_PER_USER} "
        f"feedbacks, verdict after every feedback: ever better/worse {called:.1%} "
        f"(user-clustered, the verdict's test) vs {called_per_request:.1%} (per request); "
        f"a fixed-horizon per-request test at the last look {fixed_per_request:.1%}"
    )
    assert called <= _rate_bound(ALPHA, AA_EXPERIMENTS, 2)
    # The per-request test's rate is far beyond what a valid 5 % test could show by chance.
    assert called_per_request > _rate_bound(ALPHA, AA_EXPERIMENTS, 4)
    assert called_per_request > 3 * max(called, 1 / AA_EXPERIMENTS)


def test_ten_points_better_is_called_better_in_most_runs(better: Feedback) -> None:
    comparison = better.compare("accuracy")
    significant = comparison.p_value < ALPHA
    called_better = significant[:, -1] & (comparison.difference[:, -1] > 0)
    called_worse = significant[:, -1] & (comparison.difference[:, -1] < 0)
    feedbacks_to_call = np.argmax(significant, axis=1)[called_better] + 1
    smaller = simulate(POWER_EXPERIMENTS, USERS, accuracy_gain=0.10, seed=26).compare("accuracy")
    smaller_power = float(
        np.mean((smaller.p_value[:, -1] < ALPHA) & (smaller.difference[:, -1] > 0))
    )
    print(
        f"\n+10 accuracy points, {POWER_EXPERIMENTS} experiments x {POWER_USERS} users x "
        f"~{FEEDBACK_PER_USER} feedbacks: called better {called_better.mean():.1%}, "
        f"median feedbacks to call it {np.median(feedbacks_to_call):.0f} "
        f"(90th percentile {np.percentile(feedbacks_to_call, 90):.0f}) "
        f"of {better.user.shape[1]}; with {USERS} users: called better {smaller_power:.1%}"
    )
    assert called_better.mean() >= 0.80
    assert called_worse.mean() == 0.0


def _same(comparison: Comparison, reading: stats.SequentialComparison, row: int) -> None:
    p = float(reading.p_value[row, -1])
    difference = float(reading.difference[row, -1])
    improves = (difference > 0) == stats.HIGHER_IS_BETTER[comparison.metric]
    assert comparison.p_value == pytest.approx(p, rel=1e-9, abs=1e-15)
    assert comparison.p_value_holm == pytest.approx(p, rel=1e-9, abs=1e-15)
    assert comparison.difference == pytest.approx(difference, rel=1e-9, abs=1e-15)
    assert (comparison.better, comparison.worse) == (
        p < ALPHA and improves,
        p < ALPHA and not improves,
    )


def test_the_vectorised_reading_is_the_assessment(aa: Feedback, better: Feedback) -> None:
    """``assess`` on one experiment's feedback says what the vectorised reading says, on both
    metrics, for A/A runs closest to a call and for +10-point runs called better and not."""
    checked: list[bool] = []
    for experiments, picked in ((aa, 3), (better, 4)):
        feedback = experiments.first(100)
        readings = {metric: feedback.compare(metric) for metric in stats.METRICS}
        order = np.argsort(readings["accuracy"].p_value[:, -1])
        rows = order[:picked] if experiments is aa else np.r_[order[:picked], order[-picked:]]
        for row in rows:
            observations = feedback.observations(int(row))
            units = {v: len({o.unit for o in observations if o.variant == v}) for v in ARMS}
            srm = stats.assignment_check({1: units}, {1: dict.fromkeys(ARMS, 0.5)})
            assessment = assess(CONTROL, [CANDIDATE], srm, [], observations, [])
            (accuracy,) = assessment.primary
            (mae,) = assessment.secondary
            _same(accuracy, readings["accuracy"], int(row))
            _same(mae, readings["mae"], int(row))
            checked.append(accuracy.better)
    assert any(checked) and not all(checked)  # both kinds of run were compared
