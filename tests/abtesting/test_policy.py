"""decide(): rollback before promote before ramp, gated by trust and feedback."""

from __future__ import annotations

from dataclasses import replace

from abtesting.assessment import Assessment, Comparison
from abtesting.guardrails import GuardrailResult
from abtesting.policy import AutopilotSettings, decide
from abtesting.stats import SampleRatioCheck

ON = AutopilotSettings(mode="on")
SRM_OK = SampleRatioCheck({"A": 500, "B": 500}, {"A": 500.0, "B": 500.0}, 0.0, 1.0, False)
SRM_BAD = SampleRatioCheck({"A": 700, "B": 300}, {"A": 500.0, "B": 500.0}, 160.0, 1e-30, True)


def _assessment(
    *, better: bool = False, worse: bool = False, guard: str = "not_worse", srm: bool = True
) -> Assessment:
    primary = Comparison("B", "accuracy", 900, 0.1, 0.02, 0.18, 0.01, 0.01, 0.005, better, worse)
    guardrail = GuardrailResult("B", "error_rate", 0.01, 0.06, 0.05, 1e-6, 0.01, guard)  # type: ignore[arg-type]
    return Assessment(
        trustworthy=srm,
        srm=SRM_OK if srm else SRM_BAD,
        srm_cause=None if srm else "cause",
        primary=[primary],
        guardrails=[guardrail],
        verdict="",
        control="A",
    )


def test_off_decides_nothing() -> None:
    assert decide(_assessment(better=True), AutopilotSettings(), {"A": 0.9, "B": 0.1}, 900) == []


def test_ramp_one_step_at_a_time_waiting_for_feedback_per_step() -> None:
    [d] = decide(_assessment(), ON, {"A": 0.95, "B": 0.05}, 200)
    assert (d.action, d.weight_before, d.weight_after) == ("ramp", 0.05, 0.1)
    # Step 2 of the ramp (0.25) waits for 2 x min_feedback feedbacks in all.
    assert decide(_assessment(), ON, {"A": 0.9, "B": 0.1}, 399) == []
    [d] = decide(_assessment(), ON, {"A": 0.9, "B": 0.1}, 400)
    assert d.weight_after == 0.25
    assert decide(_assessment(), ON, {"A": 0.95, "B": 0.05}, 199) == []
    assert decide(_assessment(), ON, {"A": 0.5, "B": 0.5}, 5000) == []  # top of the ramp


def test_guardrail_worse_rolls_back_at_once_even_without_trust_or_feedback() -> None:
    [d] = decide(_assessment(guard="worse", better=True), ON, {"A": 0.9, "B": 0.1}, 10)
    assert (d.action, d.weight_after) == ("rollback", 0.0)
    assert "error_rate" in d.reason and d.numbers["error_rate_status"] == "worse"
    [d] = decide(_assessment(guard="worse", srm=False), ON, {"A": 0.9, "B": 0.1}, 900)
    assert d.action == "rollback"


def test_primary_better_promotes_only_when_trusted_with_enough_feedback() -> None:
    [d] = decide(_assessment(better=True), ON, {"A": 0.9, "B": 0.1}, 900)
    assert (d.action, d.weight_after) == ("promote", 1.0)
    assert d.numbers["p_value_holm"] == 0.01
    assert decide(_assessment(better=True, srm=False), ON, {"A": 0.9, "B": 0.1}, 900) == []
    few = _assessment(better=True)
    few = replace(few, primary=[replace(few.primary[0], feedbacks=50)])
    assert [d.action for d in decide(few, ON, {"A": 0.9, "B": 0.1}, 50)] == []


def test_paired_shadow_evidence_promotes_a_candidate_with_little_split_feedback() -> None:
    few = _assessment()
    few = replace(few, primary=[replace(few.primary[0], feedbacks=50)])
    paired = Comparison(
        "B", "accuracy", 900, 0.08, 0.03, 0.13, 0.001, 0.002, 0.0001, True, False,
        shadow_version="2.0",
    )  # fmt: skip
    [d] = decide(replace(few, paired=[paired]), ON, {"A": 0.95, "B": 0.05}, 950)
    assert (d.action, d.weight_after) == ("promote", 1.0)
    assert (d.numbers["paired_feedbacks"], d.numbers["paired_p_value_holm"]) == (900, 0.002)
    # The same evidence on the other metric, or from a version no candidate serves, does not
    # promote (the candidate only ramps on).
    other = replace(paired, metric="mae")
    stranger = replace(paired, candidate="3.0", shadow_version="3.0")
    for extra in (other, stranger):
        [d] = decide(replace(few, paired=[extra]), ON, {"A": 0.95, "B": 0.05}, 950)
        assert d.action == "ramp"


def test_no_ramp_or_promotion_while_the_split_is_untrustworthy() -> None:
    assert decide(_assessment(srm=False), ON, {"A": 0.9, "B": 0.1}, 5000) == []


def test_primary_significantly_worse_rolls_back() -> None:
    [d] = decide(_assessment(worse=True), ON, {"A": 0.9, "B": 0.1}, 900)
    assert d.action == "rollback"
    assert "accuracy significantly worse" in d.reason
