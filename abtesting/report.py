"""The A/B report: per-variant numbers with intervals, candidate-vs-control tests, a verdict.

``build_report`` writes out the experiment's one assessment, read from the running assessment
the autopilot reads too (``abtesting.live_assessment``; what arrived since the last look is added
first): the comparisons, their p-values, the verdict, the guardrails, the interval over time and
the per-variant numbers all come from it, so the report cannot disagree with what the autopilot
decides. It blocks (database and numpy), so the route calls it on a worker thread. The first
variant of the experiment is the control.

Three p-values per comparison, labelled: ``p_value`` is the always-valid sequential one (mSPRT
with the user-clustered variance, safe to watch continuously and to stop on), ``p_value_holm``
that one adjusted across the candidates (what ``significant`` and the verdict read, at alpha =
0.05), and ``p_value_fixed`` a secondary: a normal test with the same clustered variance, valid
only for one look at a sample size fixed in advance.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from abtesting import stats
from abtesting.assessment import Comparison
from abtesting.experiment import OVERRIDE_VARIANT, AutopilotConfig, ExperimentConfig
from abtesting.live_assessment import LiveAssessment
from abtesting.running_assessment import VariantNumbers
from abtesting.store import DecisionRecord, ExperimentStatus, ExperimentStore

FIXED_TEST = "z-test, user-clustered variance"


class Interval(BaseModel):
    value: float
    low: float | None = Field(description="95% interval; null when there is too little data")
    high: float | None


class VariantReport(BaseModel):
    name: str
    version: str
    weight: float
    requests: int = Field(description="answered prediction requests assigned to this variant")
    units: int = Field(description="distinct users (or anonymous requests) assigned")
    feedback: int = Field(description="predictions with a true rating")
    accuracy: Interval | None = Field(description="exact-star accuracy, Wilson interval")
    mae: Interval | None = Field(description="mean absolute error in stars, t interval")
    off_by_one: Interval | None = Field(description="share within one star, Wilson interval")
    latency_p50_ms: Interval | None = Field(description="order-statistic interval")
    latency_p95_ms: Interval | None
    stars: dict[str, int] = Field(description="predicted star distribution")


class ComparisonReport(BaseModel):
    candidate: str
    control: str
    metric: Literal["accuracy", "mae"]
    feedbacks: int = Field(
        description="feedbacks it reads: of the control and the candidate; paired: feedbacks "
        "on the control's answers that the shadow version answered too"
    )
    difference: float | None = Field(
        description="candidate minus control; null until both have feedback"
    )
    low: float | None = Field(
        description="always-valid 95% interval of the difference (null during the burn-in)"
    )
    high: float | None
    p_value: float | None = Field(
        description="always-valid sequential p-value (mSPRT, user-clustered variance); null "
        "during the burn-in"
    )
    p_value_holm: float | None = Field(
        description="p_value Holm-adjusted across candidates: what 'significant', the verdict "
        "and the autopilot read"
    )
    p_value_fixed: float | None = Field(
        description="secondary: fixed-horizon test with the same clustered variance, valid only "
        "for one look at a planned sample size"
    )
    fixed_test: str
    shadow_version: str | None = Field(
        default=None,
        description="paired: this version's shadow answers against the control's answers to "
        "the same requests, graded by the same feedback (the candidate field names the "
        "candidate serving it, else the version); null: the split comparison",
    )
    significant: bool = Field(description="p_value_holm < alpha")
    feedback_needed: int | None = Field(
        description="about how many more feedbacks the sequential test needs, if not significant"
    )
    feedback_needed_fixed: int | None = Field(
        description="fixed-horizon power calculation (80% power) for the same effect"
    )


class SampleRatioReport(BaseModel):
    observed: dict[str, int]
    expected: dict[str, float]
    chi2: float | None
    p_value: float
    mismatch: bool = Field(description="p_value < 0.001: the split does not follow the weights")


class ShadowReport(BaseModel):
    version: str
    copies: int
    errors: int
    agreement: Interval | None = Field(description="share of shadow stars equal to live stars")


class GuardrailReport(BaseModel):
    candidate: str
    metric: Literal["error_rate", "latency_p95_ms", "disagreement_rate"]
    control_value: float | None
    candidate_value: float | None
    difference: float | None = Field(description="candidate minus control")
    p_value: float | None = Field(description="always valid, against 'the increase is the limit'")
    limit: float = Field(description="the largest tolerated increase over the control")
    status: Literal["worse", "not_worse", "not_enough_data"]


class DecisionReport(BaseModel):
    """One autopilot decision: applied (mode "on") or what it would do (mode "dry-run")."""

    revision: int = Field(description="the experiment revision it was decided on")
    at: datetime
    mode: Literal["on", "dry-run"]
    action: Literal["ramp", "rollback", "promote"]
    candidate: str
    weight_before: float = Field(description="the candidate's share of traffic before")
    weight_after: float
    feedbacks: int
    reason: str
    numbers: dict[str, float | int | str | None]
    applied: bool

    @classmethod
    def of(cls, record: DecisionRecord) -> DecisionReport:
        return cls.model_validate(
            {k: v for k, v in record.__dict__.items() if k != "applied_revision"}
        )


class IntervalPoint(BaseModel):
    feedbacks: int = Field(description="feedbacks of the experiment so far (all variants)")
    at: datetime = Field(description="when the last of them was stored")
    difference: float = Field(description="candidate minus control in the primary metric")
    low: float = Field(description="always-valid 95% interval, within the metric's range")
    high: float


class ExperimentReport(BaseModel):
    experiment: str
    revision: int | None
    control: str
    alpha: float = stats.ALPHA
    variants: list[VariantReport]
    override_requests: int = Field(description="requests that forced a version (not compared)")
    comparisons: list[ComparisonReport]
    sample_ratio: SampleRatioReport
    shadow: list[ShadowReport]
    verdict: str
    primary_metric: Literal["accuracy", "mae"] = Field(
        description="what the autopilot and the trust verdict decide on"
    )
    trustworthy: bool = Field(description="false while the split does not follow its weights")
    srm_cause: str | None = Field(description="the likely cause of a sample-ratio mismatch")
    guardrails: list[GuardrailReport]
    status: ExperimentStatus
    autopilot: AutopilotConfig
    decisions: list[DecisionReport]
    interval_history: dict[str, list[IntervalPoint]] = Field(
        default_factory=dict,
        description="per candidate: the always-valid 95% interval of the primary metric's "
        "difference to the control after each feedback (at most 200 looks)",
    )


def _interval(estimate: stats.Estimate | None, scale: float = 1.0) -> Interval | None:
    if estimate is None:
        return None
    return Interval(
        value=estimate.value * scale,
        low=None if estimate.low is None else estimate.low * scale,
        high=None if estimate.high is None else estimate.high * scale,
    )


def _variant_report(
    name: str, version: str, weight: float, numbers: VariantNumbers, units: int
) -> VariantReport:
    return VariantReport(
        name=name,
        version=version,
        weight=weight,
        requests=numbers.requests,
        units=units,
        feedback=numbers.feedback,
        accuracy=_interval(numbers.accuracy),
        mae=_interval(numbers.mae),
        off_by_one=_interval(numbers.off_by_one),
        latency_p50_ms=_interval(numbers.latency_p50_s, 1000.0),
        latency_p95_ms=_interval(numbers.latency_p95_s, 1000.0),
        stars=numbers.stars,
    )


def _comparison_report(control: str, c: Comparison) -> ComparisonReport:
    return ComparisonReport(
        candidate=c.candidate,
        control=control,
        metric=c.metric,
        feedbacks=c.feedbacks,
        difference=c.difference,
        low=c.low,
        high=c.high,
        p_value=c.p_value,
        p_value_holm=c.p_value_holm,
        p_value_fixed=c.p_value_fixed,
        fixed_test=FIXED_TEST,
        shadow_version=c.shadow_version,
        significant=c.better or c.worse,
        feedback_needed=c.feedback_needed,
        feedback_needed_fixed=c.feedback_needed_fixed,
    )


def build_report(
    store: ExperimentStore,
    config: ExperimentConfig,
    revision: int | None,
    status: ExperimentStatus = "running",
    assessment: LiveAssessment | None = None,
) -> ExperimentReport:
    """Everything ``GET /v1/experiment/report`` answers (blocking). ``assessment``: the
    experiment's running assessment, the autopilot's (``ABTesting.assessment``); without it, one
    built afresh from the store (the same numbers, at the cost of reading the whole history)."""
    # One reading of the experiment, the autopilot's: its sample-ratio check is the report's.
    reading = (assessment or LiveAssessment(store)).read(config, numbers=True)
    srm = reading.assessment.srm
    variants = [
        _variant_report(
            v.name, v.version, v.weight, reading.variants[v.name], srm.observed.get(v.name, 0)
        )
        for v in config.variants
    ]
    control = config.control
    compared = {
        (c.candidate, c.metric): c
        for c in reading.assessment.primary + reading.assessment.secondary
    }
    comparisons = [
        _comparison_report(control.name, c)
        for c in [
            *(compared[v.name, metric] for v in config.variants[1:] for metric in stats.METRICS),
            *reading.assessment.paired,
        ]
    ]
    primary_metric = config.autopilot.primary_metric
    return ExperimentReport(
        experiment=config.name,
        revision=revision,
        control=control.name,
        variants=variants,
        override_requests=reading.variants[OVERRIDE_VARIANT].requests,
        comparisons=comparisons,
        sample_ratio=SampleRatioReport(
            observed=srm.observed,
            expected=srm.expected,
            chi2=srm.chi2 if math.isfinite(srm.chi2) else None,
            p_value=srm.p_value,
            mismatch=srm.mismatch,
        ),
        shadow=[
            ShadowReport(
                version=s.version,
                copies=s.copies,
                errors=s.errors,
                agreement=_interval(s.agreement),
            )
            for s in reading.shadows
        ],
        verdict=reading.assessment.verdict,
        primary_metric=primary_metric,
        trustworthy=reading.assessment.trustworthy,
        srm_cause=reading.assessment.srm_cause,
        guardrails=[
            GuardrailReport.model_validate(g.__dict__) for g in reading.assessment.guardrails
        ],
        status=status,
        autopilot=config.autopilot,
        decisions=[DecisionReport.of(d) for d in store.decisions(config.name)],
        interval_history={
            c.candidate: [IntervalPoint.model_validate(look.__dict__) for look in c.history]
            for c in reading.assessment.primary
        },
    )
