"""Proof by simulation: the autopilot, checking after every request, is honest and useful.

Each simulated experiment has users who send several correlated requests (each user has an
accuracy of their own), sticky assignment through a per-user point in [0, 1) as the router does
(the candidate covers the top ``weight`` of it, so a ramp moves users from control to candidate),
failures, and feedback on every answered request. The policy looks after every request (so after
every feedback), with the ramp: its candidate weight is piecewise constant between decisions.

Vectorised over experiments: a pass computes every look's statistics for all experiments with
the weights decided so far, through the same functions ``assess`` uses
(``stats.sequential_comparison``, ``guardrails.status_codes``) and the policy's own rule
(``policy.action_codes``); each experiment's first decision after its last ramp is taken, the
weights after a ramp are rewritten, and the next pass runs. At most one pass per ramp step.

Left out here: the sample-ratio check (assignment is drawn from the weights, so it holds; it
only ever blocks decisions) and the latency guardrail (its threshold is re-estimated at every
look, which the per-look vectorisation does not cover; ``test_guardrails`` tests it). With one
candidate Holm's adjustment is the identity.

Run with ``pytest -s`` to see the numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from abtesting import guardrails, policy, stats

EXPERIMENTS = 500
USERS = 300
CONTROL_ACCURACY = 0.6
USER_ACCURACY_SD = 0.15  # between-user spread: one user's requests are correlated
CONTROL_ERROR_RATE = 0.01
SETTINGS = policy.AutopilotSettings(mode="on")


@dataclass(frozen=True)
class Outcome:
    action: npt.NDArray[np.int8]  # final action per experiment (NO_ACTION if none in the horizon)
    at_request: npt.NDArray[np.int64]  # request index (1-based) of that action, -1 if none
    feedbacks: npt.NDArray[np.int64]  # feedbacks received by then
    ramps: npt.NDArray[np.int64]  # ramp steps taken
    candidate_failures: npt.NDArray[np.int64]  # failed answers the candidate gave by then


def simulate(accuracy_gain: float, error_rate: float, requests: int, seed: int) -> Outcome:
    rng = np.random.default_rng(seed)
    e, t = EXPERIMENTS, requests
    # Active users send more: a Zipf-like activity per user.
    activity = rng.gamma(0.7, size=(e, USERS))
    cumulative = np.cumsum(activity / activity.sum(axis=1, keepdims=True), axis=1)
    # Offsetting each experiment's cumulative shares by its row keeps one flat searchsorted.
    offset = np.arange(e)[:, None]
    flat = (cumulative + offset).ravel()
    drawn = np.searchsorted(flat, (rng.random((e, t)) + offset).ravel(), side="right")
    user = np.minimum(drawn.reshape(e, t) - offset * USERS, USERS - 1).astype(np.int64)
    point = rng.random((e, USERS))
    user_accuracy = np.clip(
        CONTROL_ACCURACY + USER_ACCURACY_SD * rng.standard_normal((e, USERS)), 0.05, 0.95
    )
    p_correct = np.take_along_axis(user_accuracy, user, axis=1)
    draw_correct = rng.random((e, t))
    draw_fail = rng.random((e, t))
    user_point = np.take_along_axis(point, user, axis=1)
    limit = SETTINGS.limits.error_rate
    ramp = SETTINGS.ramp
    rows = np.arange(e)

    step = np.zeros(e, dtype=np.int64)  # index into the ramp of the current weight
    switch_at = np.full((e, len(ramp)), t, dtype=np.int64)  # request index where step k starts
    switch_at[:, 0] = 0
    start = np.zeros(e, dtype=np.int64)
    action = np.zeros(e, dtype=np.int8)
    at = np.full(e, -1, dtype=np.int64)
    feedbacks_at = np.full(e, -1, dtype=np.int64)
    failures_at = np.full(e, -1, dtype=np.int64)
    open_ = np.ones(e, dtype=bool)
    looks = np.arange(t)[None, :]
    while open_.any():
        weight = np.zeros((e, t))
        for k, share in enumerate(ramp):
            weight = np.where(looks >= switch_at[:, k : k + 1], share, weight)
        is_candidate = user_point >= 1.0 - weight
        failed = draw_fail < np.where(is_candidate, error_rate, CONTROL_ERROR_RATE)
        correct = draw_correct < p_correct + np.where(is_candidate, accuracy_gain, 0.0)
        errors = stats.sequential_comparison(
            is_candidate,
            failed.astype(np.float64),
            user,
            guardrails.GUARDRAIL_MIXTURE_SD["error_rate"],
            null=limit,
            binary=True,
        )
        error_status = guardrails.status_codes(errors.p_value, errors.difference - limit)
        primary = stats.sequential_comparison(
            is_candidate,
            correct.astype(np.float64),
            user,
            stats.MIXTURE_SD["accuracy"],
            binary=True,
            include=~failed,
        )
        significant = primary.p_value < stats.ALPHA
        feedbacks = np.cumsum(~failed, axis=1)
        next_step = np.minimum(step + 1, len(ramp) - 1)
        can_ramp = (step + 1 < len(ramp))[:, None]
        needed = np.array(
            [policy.feedback_for_step(j, SETTINGS.min_feedback) for j in range(len(ramp))]
        )
        codes = policy.action_codes(
            trustworthy=True,
            guardrail_worse=error_status == guardrails.WORSE,
            primary_better=significant & (primary.difference > 0),
            primary_worse=significant & (primary.difference < 0),
            enough_feedback=feedbacks >= SETTINGS.min_feedback,
            enough_feedback_for_step=feedbacks >= needed[next_step][:, None],
            can_ramp=can_ramp,
        )
        codes = np.where((looks >= start[:, None]) & open_[:, None], codes, policy.NO_ACTION)
        acted = (codes != policy.NO_ACTION).any(axis=1)
        first = np.argmax(codes != policy.NO_ACTION, axis=1)
        code = codes[rows, first]
        ramped = acted & (code == policy.RAMP)
        final = acted & (code != policy.RAMP)
        action[final] = code[final]
        at[final] = first[final] + 1
        feedbacks_at[final] = feedbacks[rows, first][final]
        failures_at[final] = np.cumsum(failed & is_candidate, axis=1)[rows, first][final]
        # A ramp applies from the next request on.
        step[ramped] += 1
        switch_at[rows[ramped], step[ramped]] = first[ramped] + 1
        start[ramped] = first[ramped] + 1
        open_ &= ramped
    return Outcome(action, at, feedbacks_at, step, failures_at)


def _share(outcome: Outcome, action: int) -> float:
    return float(np.mean(outcome.action == action))


def test_aa_experiments_rarely_promote_or_roll_back() -> None:
    outcome = simulate(accuracy_gain=0.0, error_rate=CONTROL_ERROR_RATE, requests=4000, seed=1)
    promoted = _share(outcome, policy.PROMOTE)
    rolled_back = _share(outcome, policy.ROLLBACK)
    print(
        f"\nA/A, {EXPERIMENTS} experiments x 4000 requests, policy after every request: "
        f"promoted {promoted:.1%}, rolled back {rolled_back:.1%}, "
        f"reached the top of the ramp {np.mean(outcome.ramps == len(SETTINGS.ramp) - 1):.1%}"
    )
    assert promoted <= 0.05
    assert rolled_back <= 0.05
    # The ramp works: most A/A candidates climb to the last step.
    assert np.mean(outcome.ramps == len(SETTINGS.ramp) - 1) > 0.8


def test_a_candidate_ten_points_better_is_promoted_in_most_runs() -> None:
    outcome = simulate(accuracy_gain=0.10, error_rate=CONTROL_ERROR_RATE, requests=6000, seed=2)
    promoted = outcome.action == policy.PROMOTE
    median = float(np.median(outcome.feedbacks[promoted]))
    print(
        f"\n+10 accuracy points, {EXPERIMENTS} experiments x 6000 requests: "
        f"promoted {promoted.mean():.1%}, "
        f"median feedbacks to promotion {median:.0f} "
        f"(90th percentile {np.percentile(outcome.feedbacks[promoted], 90):.0f}), "
        f"rolled back {_share(outcome, policy.ROLLBACK):.1%}"
    )
    assert promoted.mean() > 0.75  # "most runs"; 81% with this seed
    assert _share(outcome, policy.ROLLBACK) <= 0.05


def test_a_candidate_failing_five_times_as_often_is_rolled_back_quickly() -> None:
    bound = 6000
    outcome = simulate(accuracy_gain=0.0, error_rate=5 * CONTROL_ERROR_RATE, requests=bound, seed=3)
    rolled_back = outcome.action == policy.ROLLBACK
    when = outcome.at_request[rolled_back]
    print(
        f"\n5x the control's error rate ({5 * CONTROL_ERROR_RATE:.0%} vs "
        f"{CONTROL_ERROR_RATE:.0%}), {EXPERIMENTS} experiments: rolled back "
        f"{rolled_back.mean():.1%} within {bound} requests; requests to rollback median "
        f"{np.median(when):.0f}, 95th percentile {np.percentile(when, 95):.0f}, max {when.max()}; "
        f"failed answers users got from the candidate by then: median "
        f"{np.median(outcome.candidate_failures[rolled_back]):.0f}, "
        f"max {outcome.candidate_failures[rolled_back].max()}"
    )
    assert rolled_back.mean() >= 0.99
    assert np.percentile(when, 95) < 4000
