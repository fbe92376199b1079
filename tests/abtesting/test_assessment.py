"""assess(): the sample-ratio gate with its cause, Holm across candidates, the verdict."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np

from abtesting.assessment import (
    Assessment,
    FeedbackObs,
    PairedObs,
    RequestObs,
    ShadowObs,
    assess,
)
from abtesting.stats import Metric, assignment_check

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _assess(
    weights: dict[str, float],
    requests: list[RequestObs],
    feedback: list[FeedbackObs],
    shadows: list[ShadowObs],
    primary_metric: Metric = "accuracy",
) -> Assessment:
    """``assess`` of one revision with these weights, the first the control: its sample-ratio
    check on the units of the requests (answered and failed), as the store counts them."""
    units: dict[str, set[str]] = {v: set() for v in weights}
    for r in requests:
        units[r.variant].add(r.unit)
    srm = assignment_check({1: {v: len(u) for v, u in units.items()}}, {1: weights})
    control, *candidates = weights
    return assess(
        control, candidates, srm, requests, feedback, shadows, primary_metric=primary_metric
    )


def _traffic(
    accuracy: dict[str, float], units: int = 600, per_unit: int = 3, seed: int = 0
) -> tuple[list[RequestObs], list[FeedbackObs]]:
    rng = np.random.default_rng(seed)
    names = list(accuracy)
    requests, feedback = [], []
    for i in range(units * per_unit):
        unit = f"u{i % units}"
        variant = names[(i % units) % len(names)]
        requests.append(RequestObs(variant, unit, False, 20.0))
        right = rng.random() < accuracy[variant]
        feedback.append(FeedbackObs(variant, unit, 4, 4 if right else 3, T0 + timedelta(seconds=i)))
    return requests, feedback


def test_a_clearly_better_candidate_is_better_after_holm() -> None:
    requests, feedback = _traffic({"A": 0.55, "B": 0.75, "C": 0.55})
    a = _assess({"A": 1, "B": 1, "C": 1}, requests, feedback, [])
    by = {r.candidate: r for r in a.primary}
    assert a.trustworthy and a.srm_cause is None
    assert by["B"].better and not by["C"].better
    assert by["B"].p_value is not None and by["B"].p_value_holm is not None
    assert by["B"].p_value_holm >= by["B"].p_value
    assert by["B"].low is not None and by["B"].low > 0
    assert "B is better than A on accuracy" in a.verdict


def test_mae_is_better_when_lower() -> None:
    requests, feedback = _traffic({"A": 0.5, "B": 0.8})
    a = _assess({"A": 1, "B": 1}, requests, feedback, [], primary_metric="mae")
    assert a.primary[0].metric == "mae"
    assert a.primary[0].difference is not None and a.primary[0].difference < 0
    assert a.primary[0].better


def test_sample_ratio_mismatch_gates_the_verdict_and_names_users_switching_variants() -> None:
    requests, feedback = _traffic({"A": 0.5, "B": 0.8})
    # Every user of A was also served by B: B has twice the units it should.
    requests += [RequestObs("B", r.unit, False, 20.0) for r in requests if r.variant == "A"]
    a = _assess({"A": 1, "B": 1}, requests, feedback, [])
    assert not a.trustworthy
    assert a.srm_cause is not None and "more than one variant" in a.srm_cause
    assert a.verdict.startswith("results cannot be trusted")


def test_sample_ratio_mismatch_points_at_unrecorded_failures() -> None:
    requests, feedback = _traffic({"A": 0.5, "B": 0.5})
    failing = [RequestObs("A", f"x{i}", True, None) for i in range(300)]
    # B's failing users were never recorded: B is short of units and shows no failure at all.
    a = _assess({"A": 1, "B": 1}, requests + failing, feedback, [])
    assert not a.trustworthy
    assert a.srm_cause is not None and "not be recorded" in a.srm_cause


def test_no_feedback_for_a_candidate_is_not_enough_data() -> None:
    requests, feedback = _traffic({"A": 0.5, "B": 0.5})
    a = _assess({"A": 1, "B": 1}, requests, [f for f in feedback if f.variant == "A"], [])
    assert a.primary[0].p_value is None and not a.primary[0].better
    assert "not enough data" in a.verdict


def _paired(
    version: str, won: float, lost: float = 0.0, n: int = 800, seed: int = 3
) -> list[PairedObs]:
    """Feedback on the control's answers (right 60 % of the time) that ``version`` shadowed:
    where the control is wrong the shadow is right with probability ``won``, where it is right
    the shadow is wrong with probability ``lost``."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        live_right = rng.random() < 0.6
        shadow_ok = rng.random() >= lost if live_right else rng.random() < won
        out.append(PairedObs(version, "A", f"u{i % 200}", 4, 4 if live_right else 3,
                             4 if shadow_ok else 2))  # fmt: skip
    return out


def test_paired_shadow_feedback_decides_for_the_candidate_serving_that_version() -> None:
    """B has too little split feedback to tell, but its version's shadow answers, graded by
    the feedback on A's answers to the same requests, are clearly better: B is better, and the
    verdict says on what."""
    requests, feedback = _traffic({"A": 0.6, "B": 0.6}, units=60, per_unit=1)
    srm = assignment_check({1: {"A": 30, "B": 30}}, {1: {"A": 1, "B": 1}})
    a = assess(
        "A", ["B"], srm, requests, feedback, [], paired=_paired("2.0", 0.5),
        shadow_versions={"A": "1.0", "B": "2.0"},
    )  # fmt: skip
    (split,) = a.primary
    (paired,) = [c for c in a.paired if c.metric == "accuracy"]
    assert not split.better and paired.better
    assert (paired.candidate, paired.shadow_version, paired.feedbacks) == ("B", "2.0", 800)
    assert paired.difference is not None and 0.15 < paired.difference < 0.25
    assert a.better("B") and not a.worse("B")
    assert "B is better than A on accuracy" in a.verdict
    assert "paired on 2.0's shadow answers" in a.verdict
    # One Holm family: the split and the paired test of the primary metric together.
    assert split.p_value is not None and paired.p_value is not None
    assert paired.p_value_holm == min(1.0, 2 * paired.p_value) or paired.p_value_holm == max(
        paired.p_value, split.p_value
    )


def test_a_shadow_version_no_candidate_serves_is_reported_but_decides_nothing() -> None:
    requests, feedback = _traffic({"A": 0.6, "B": 0.6})
    a = _assess({"A": 1, "B": 1}, requests, feedback, [])
    plain = a.verdict
    srm = a.srm
    shadowed = assess("A", ["B"], srm, requests, feedback, [], paired=_paired("3.0", 0.0, 0.3))
    worse = [c for c in shadowed.paired if c.metric == "accuracy"]
    assert [(c.candidate, c.shadow_version) for c in worse] == [("3.0", "3.0")]
    assert worse[0].worse  # wrong where the control is wrong, and on 30 % of the rest
    assert not shadowed.worse("B") and not shadowed.better("B")
    assert "shadow version 3.0 is worse than A on accuracy" in shadowed.verdict
    assert shadowed.verdict.startswith(plain.split(";")[0])
