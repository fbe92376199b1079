"""The A/B report: per-variant numbers with intervals, candidate-vs-control tests, a verdict.

``build_report`` reads the store and runs ``api.ab.stats``; it blocks (database and numpy), so the
route calls it on a worker thread. The first variant of the experiment is the control.

Two p-values per comparison, labelled: ``p_value`` is the always-valid sequential one (mSPRT,
safe to watch continuously and to stop on), ``p_value_fixed`` the classical test (two-proportion
z-test for accuracy, Welch's t-test for MAE), valid only for one look at a sample size fixed in
advance. The verdict uses ``p_value`` at alpha = 0.05 per metric.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from api.ab import stats
from api.ab.assessment import Assessment
from api.ab.autopilot import assess_experiment, observe
from api.ab.history import IntervalPoint, interval_history
from api.ab.router import OVERRIDE_VARIANT, AutopilotConfig, ExperimentConfig
from api.ab.stats import MIXTURE_SD
from api.ab.store import DecisionRecord, ExperimentStatus, ExperimentStore, FeedbackRecord

# Smallest difference worth finding, for "need ~N more feedbacks".
MIN_EFFECT: dict[stats.Metric, float] = {"accuracy": 0.05, "mae": 0.1}
# Standard deviations assumed for the power calculation before data exists.
PRIOR_SD: dict[stats.Metric, float] = {"accuracy": 0.5, "mae": 0.8}
FIXED_TEST: dict[stats.Metric, str] = {"accuracy": "two-proportion z-test", "mae": "Welch t-test"}


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
    difference: float = Field(description="candidate minus control")
    p_value: float = Field(description="always-valid sequential p-value (mSPRT)")
    p_value_holm: float | None = Field(
        description="Holm-adjusted across candidates (the autopilot's, user-clustered, for the "
        "primary metric); null before the test has enough data"
    )
    p_value_fixed: float | None = Field(description="fixed-horizon test, for one planned look")
    fixed_test: str
    significant: bool = Field(description="p_value < 0.05")
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
        "difference to the control after each feedback (at most 200 looks; api.ab.history)",
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
    name: str,
    version: str,
    weight: float,
    latencies: Sequence[float],
    star_counts: Counter[int],
    units: int,
    feedback: Sequence[FeedbackRecord],
) -> VariantReport:
    errors = np.array([abs(f.predicted - f.stars) for f in feedback], dtype=np.float64)
    n = len(feedback)
    return VariantReport(
        name=name,
        version=version,
        weight=weight,
        requests=len(latencies),
        units=units,
        feedback=n,
        accuracy=_interval(stats.wilson_interval(int((errors == 0).sum()), n) if n else None),
        mae=_interval(stats.mean_interval(errors) if n else None),
        off_by_one=_interval(stats.wilson_interval(int((errors <= 1).sum()), n) if n else None),
        latency_p50_ms=_interval(
            stats.quantile_interval(latencies, 0.5) if latencies else None, 1000.0
        ),
        latency_p95_ms=_interval(
            stats.quantile_interval(latencies, 0.95) if latencies else None, 1000.0
        ),
        stars={str(s): star_counts.get(s, 0) for s in range(1, 6)},
    )


def _values(metric: stats.Metric, records: Sequence[FeedbackRecord]) -> np.ndarray:
    errors = np.array([abs(f.predicted - f.stars) for f in records], dtype=np.float64)
    return (errors == 0).astype(np.float64) if metric == "accuracy" else errors


def _compare(
    metric: stats.Metric,
    control: str,
    candidate: str,
    share_candidate: float,
    pair: Sequence[FeedbackRecord],
) -> ComparisonReport:
    is_candidate = np.array([f.variant == candidate for f in pair], dtype=bool)
    values = _values(metric, pair)
    a, b = values[~is_candidate], values[is_candidate]
    sequential = stats.sequential_test(is_candidate, values, MIXTURE_SD[metric])

    p_fixed: float | None = None
    if metric == "accuracy" and a.size and b.size:
        p_fixed = stats.two_proportion_ztest(int(a.sum()), a.size, int(b.sum()), b.size).p_value
    elif metric == "mae" and a.size >= 2 and b.size >= 2:
        p_fixed = stats.welch_ttest(a, b).p_value

    significant = sequential.p_value < stats.ALPHA
    needed = needed_fixed = None
    if not significant:
        effect = max(abs(sequential.difference), MIN_EFFECT[metric])
        sd_a = float(a.std(ddof=1)) if a.size >= 2 and a.std() > 0 else PRIOR_SD[metric]
        sd_b = float(b.std(ddof=1)) if b.size >= 2 and b.std() > 0 else PRIOR_SD[metric]
        total = stats.sequential_sample_size(
            effect, sd_a, sd_b, share_candidate, MIXTURE_SD[metric]
        )
        if total is not None:
            needed = max(total - len(pair), 1)
        if 0 < share_candidate < 1:
            ratio = share_candidate / (1 - share_candidate)
            if metric == "accuracy":
                p_control = float(a.mean()) if a.size else 0.5
                # Towards 0.5, where the variance (and so the sample size) is largest.
                p_candidate = p_control + effect if p_control < 0.5 else p_control - effect
                control_n = stats.proportions_sample_size(p_control, p_candidate, ratio)
            else:
                control_n = stats.means_sample_size(effect, math.hypot(sd_a, sd_b) / 2**0.5, ratio)
            needed_fixed = max(math.ceil(control_n * (1 + ratio)) - len(pair), 0)
    return ComparisonReport(
        candidate=candidate,
        control=control,
        metric=metric,
        difference=sequential.difference,
        p_value=sequential.p_value,
        p_value_holm=None,  # filled in across candidates by _holm
        p_value_fixed=p_fixed,
        fixed_test=FIXED_TEST[metric],
        significant=significant,
        feedback_needed=needed,
        feedback_needed_fixed=needed_fixed,
    )


def _shadow(store: ExperimentStore, experiment: str) -> list[ShadowReport]:
    by_version: dict[str, list[tuple[tuple[int, ...], tuple[int, ...] | None]]] = {}
    for pair in store.shadow_pairs(experiment):
        by_version.setdefault(pair.shadow_version, []).append((pair.live_stars, pair.shadow_stars))
    reports = []
    for version, pairs in sorted(by_version.items()):
        answered = [(live, shadow) for live, shadow in pairs if shadow is not None]
        items = sum(len(live) for live, _ in answered)
        agree = sum(a == b for live, shadow in answered for a, b in zip(live, shadow, strict=True))
        reports.append(
            ShadowReport(
                version=version,
                copies=len(pairs),
                errors=len(pairs) - len(answered),
                agreement=_interval(stats.wilson_interval(agree, items) if items else None),
            )
        )
    return reports


def _holm(
    comparisons: Sequence[ComparisonReport], assessment: Assessment, primary_metric: str
) -> list[ComparisonReport]:
    """Each comparison with its Holm-adjusted p-value: the assessment's for the primary metric
    (what the autopilot decides on), else Holm over the report's own sequential p-values."""
    adjusted: dict[str, dict[str, float]] = {
        metric: stats.holm({c.candidate: c.p_value for c in comparisons if c.metric == metric})
        for metric in ("accuracy", "mae")
    }
    primary = {
        r.candidate: r.p_value_holm for r in assessment.primary if r.metric == primary_metric
    }
    return [
        c.model_copy(
            update={
                "p_value_holm": primary.get(c.candidate)
                if c.metric == primary_metric
                else adjusted[c.metric].get(c.candidate)
            }
        )
        for c in comparisons
    ]


def build_report(
    store: ExperimentStore,
    config: ExperimentConfig,
    revision: int | None,
    status: ExperimentStatus = "running",
) -> ExperimentReport:
    """Everything ``GET /v1/experiment/report`` answers (blocking)."""
    predictions = store.predictions(config.name)
    latencies: dict[str, list[float]] = {}
    star_counts: dict[str, Counter[int]] = {}
    for variant, _, stars, latency in predictions:
        latencies.setdefault(variant, []).append(latency)
        star_counts.setdefault(variant, Counter()).update(stars)
    feedback = store.feedback(config.name)
    # One reading of the experiment, the autopilot's: its sample-ratio check is the report's.
    seen = observe(store, config)
    assessment = assess_experiment(config, seen)
    srm = assessment.srm

    variants = [
        _variant_report(
            v.name,
            v.version,
            v.weight,
            latencies.get(v.name, []),
            star_counts.get(v.name, Counter()),
            srm.observed.get(v.name, 0),
            [f for f in feedback if f.variant == v.name],
        )
        for v in config.variants
    ]
    control = config.control
    comparisons: list[ComparisonReport] = []
    for candidate in config.variants[1:]:
        pair = [f for f in feedback if f.variant in (control.name, candidate.name)]
        weights = control.weight + candidate.weight
        share = candidate.weight / weights if weights > 0 else 0.0
        for metric in ("accuracy", "mae"):
            comparisons.append(_compare(metric, control.name, candidate.name, share, pair))
    primary_metric = config.autopilot.primary_metric
    comparisons = _holm(comparisons, assessment, primary_metric)
    verdict = stats.verdict(
        control.name,
        [
            stats.Comparison(c.candidate, c.metric, c.difference, c.p_value, c.feedback_needed)
            for c in comparisons
        ],
        srm,
    )
    return ExperimentReport(
        experiment=config.name,
        revision=revision,
        control=control.name,
        variants=variants,
        override_requests=len(latencies.get(OVERRIDE_VARIANT, [])),
        comparisons=comparisons,
        sample_ratio=SampleRatioReport(
            observed=srm.observed,
            expected=srm.expected,
            chi2=srm.chi2 if math.isfinite(srm.chi2) else None,
            p_value=srm.p_value,
            mismatch=srm.mismatch,
        ),
        shadow=_shadow(store, config.name),
        verdict=verdict,
        primary_metric=primary_metric,
        trustworthy=assessment.trustworthy,
        srm_cause=assessment.srm_cause,
        guardrails=[GuardrailReport.model_validate(g.__dict__) for g in assessment.guardrails],
        status=status,
        autopilot=config.autopilot,
        decisions=[DecisionReport.of(d) for d in store.decisions(config.name)],
        interval_history=interval_history(
            control.name,
            [v.name for v in config.variants[1:]],
            seen.feedback,
            primary_metric,
        ),
    )
