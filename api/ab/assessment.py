"""The autopilot's reading of an experiment: can it be trusted, is a candidate better, is it worse?

Pure (no I/O): the caller reads the store and passes plain observations. Three steps:

1. **Trust.** The sample-ratio check (``stats.assignment_check``: units per variant against the
   weights of each revision, p < 0.001; the report shows the same one) gates everything: a
   split that does not follow its weights means some users are missing or misrouted, and every
   difference may be that bias. Then ``trustworthy`` is False, the verdict says the results
   cannot be trusted and ``srm_cause`` names the likely cause the data points to (units seen in
   several variants, a variant whose failures are not recorded, one user sending most
   requests).
2. **Primary metric** (accuracy or MAE on feedback) per candidate vs control: the mSPRT with the
   user-clustered variance (``api.ab.stats``), always valid, then Holm-adjusted across the
   candidates so that "some candidate is better" keeps its false-positive rate at alpha.
3. **Guardrails** (``api.ab.guardrails``): error rate, latency p95, shadow disagreement.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from api.ab import stats
from api.ab.guardrails import (
    GuardrailLimits,
    GuardrailResult,
    RequestObs,
    ShadowObs,
    assess_guardrails,
)

__all__ = [
    "Assessment",
    "FeedbackObs",
    "GuardrailLimits",
    "GuardrailResult",
    "PrimaryResult",
    "RequestObs",
    "ShadowObs",
    "assess",
    "primary_values",
]

# A unit sending more than this share of a variant's requests is named as a likely cause.
DOMINANT_UNIT_SHARE = 0.2
# Units seen in more than one variant above this share point to a broken sticky assignment.
SWITCHED_UNIT_SHARE = 0.01


@dataclass(frozen=True)
class FeedbackObs:
    """A true rating for an earlier prediction of ``variant``."""

    variant: str
    unit: str
    true_stars: int
    predicted_stars: int
    at: datetime


@dataclass(frozen=True)
class PrimaryResult:
    candidate: str
    metric: stats.Metric
    feedbacks: int  # feedbacks of the control and this candidate
    difference: float | None  # candidate - control
    low: float | None  # always-valid (1 - alpha) interval of the difference
    high: float | None
    p_value: float | None  # always valid (mSPRT), None during the burn-in
    p_value_holm: float | None  # Holm-adjusted across candidates
    better: bool
    worse: bool


@dataclass(frozen=True)
class Assessment:
    trustworthy: bool
    srm: stats.SampleRatioCheck
    srm_cause: str | None
    primary: list[PrimaryResult]
    guardrails: list[GuardrailResult]
    verdict: str
    control: str = field(default="")


def primary_values(
    metric: stats.Metric, true_stars: np.ndarray, predicted_stars: np.ndarray
) -> np.ndarray:
    """Per-feedback values of the primary metric: 1/0 correct (accuracy) or |error| (MAE)."""
    errors = np.abs(np.asarray(true_stars, np.float64) - np.asarray(predicted_stars, np.float64))
    return (errors == 0).astype(np.float64) if metric == "accuracy" else errors


def _primary(
    metric: stats.Metric,
    control: str,
    candidate: str,
    feedback: Sequence[FeedbackObs],
    alpha: float,
) -> tuple[PrimaryResult, float | None]:
    pair = sorted((f for f in feedback if f.variant in (control, candidate)), key=lambda f: f.at)
    has_both = any(f.variant == control for f in pair) and any(f.variant == candidate for f in pair)
    if not has_both:
        none = None
        return PrimaryResult(
            candidate, metric, len(pair), none, none, none, none, none, False, False
        ), None
    test = stats.sequential_comparison(
        [f.variant == candidate for f in pair],
        primary_values(
            metric,
            np.array([f.true_stars for f in pair]),
            np.array([f.predicted_stars for f in pair]),
        ),
        stats.unit_codes([f.unit for f in pair]),
        stats.MIXTURE_SD[metric],
        binary=metric == "accuracy",
    )
    difference = float(test.difference[-1])
    usable = bool(test.usable[-1])
    low = high = p_value = None
    if usable:
        low, high = stats.always_valid_interval(
            difference, float(test.variance[-1]), stats.MIXTURE_SD[metric], alpha
        )
        p_value = float(test.p_value[-1])
    result = PrimaryResult(
        candidate, metric, len(pair), difference, low, high, p_value, None, False, False
    )
    return result, p_value


def _with_holm(
    results: list[PrimaryResult], p_values: dict[str, float], alpha: float
) -> list[PrimaryResult]:
    adjusted = stats.holm(p_values)
    out = []
    for r in results:
        p = adjusted.get(r.candidate)
        significant = p is not None and p < alpha and r.difference is not None
        improves = (
            r.difference is not None and (r.difference > 0) == stats.HIGHER_IS_BETTER[r.metric]
        )
        out.append(
            PrimaryResult(
                r.candidate, r.metric, r.feedbacks, r.difference, r.low, r.high, r.p_value, p,
                significant and improves, significant and not improves,
            )
        )  # fmt: skip
    return out


def srm_cause(expected: Mapping[str, float], requests: Sequence[RequestObs]) -> str:
    """The likely cause of a sample-ratio mismatch, from what the requests can tell;
    ``expected`` is the check's expected units per variant (0: never weighted)."""
    causes: list[str] = []
    variants_of: dict[str, set[str]] = {}
    for r in requests:
        if r.variant in expected:
            variants_of.setdefault(r.unit, set()).add(r.variant)
    switched = sum(len(v) > 1 for v in variants_of.values())
    if variants_of and switched / len(variants_of) > SWITCHED_UNIT_SHARE:
        causes.append(
            f"{switched} of {len(variants_of)} users were served by more than one variant: "
            "the sticky assignment changed mid-experiment (weights or experiment name edited, "
            "sticky switched off) or user ids are not passed consistently"
        )
    failed = Counter(r.variant for r in requests if r.failed)
    total = Counter(r.variant for r in requests)
    silent = [v for v in expected if expected[v] > 0 and total[v] and not failed[v]]
    noisy = [v for v in expected if total[v] and failed[v]]
    if silent and noisy:
        shares = ", ".join(f"{v} {failed[v] / total[v]:.1%}" for v in sorted(noisy))
        causes.append(
            f"no failed request is recorded for {', '.join(sorted(silent))} while others fail "
            f"({shares}): a variant's failures may not be recorded, so its failing users vanish"
        )
    for variant in sorted(v for v in expected if total[v]):
        units = Counter(r.unit for r in requests if r.variant == variant)
        _, top = units.most_common(1)[0]
        if top / total[variant] > DOMINANT_UNIT_SHARE and len(units) > 1:
            causes.append(
                f"one user sends {top / total[variant]:.0%} of {variant}'s requests "
                "(a bot or a load test?)"
            )
    if not causes:
        causes.append(
            "the split does not follow the weights: check the router, that every variant's "
            "requests (failed ones too) are recorded, and for traffic that bypasses the split"
        )
    return "; ".join(causes)


def _verdict(
    control: str,
    srm: stats.SampleRatioCheck,
    cause: str | None,
    primary: Sequence[PrimaryResult],
    guardrails: Sequence[GuardrailResult],
) -> str:
    if srm.mismatch:
        p = "p<0.001" if srm.p_value < 0.001 else f"p={srm.p_value:.3f}"
        return (
            f"results cannot be trusted: sample ratio mismatch ({p}), the split does not follow "
            f"the weights. Likely cause: {cause}"
        )
    if not primary:
        return f"only the control {control} has traffic: nothing to compare yet"
    sentences = []
    for r in primary:
        name = "accuracy" if r.metric == "accuracy" else "MAE"
        worse_guards = [
            g.metric for g in guardrails if g.candidate == r.candidate and g.status == "worse"
        ]
        if r.better:
            text = f"{r.candidate} is better than {control} on {name}"
        elif r.worse:
            text = f"{r.candidate} is worse than {control} on {name}"
        else:
            text = f"{r.candidate} vs {control}: not enough data on {name} yet"
        if r.p_value_holm is not None:
            text += f" (Holm-adjusted p={r.p_value_holm:.3f}, {r.feedbacks} feedbacks)"
        if worse_guards:
            text += "; guardrails worse: " + ", ".join(worse_guards)
        sentences.append(text)
    return "; ".join(sentences)


def assess(
    control: str,
    candidates: Sequence[str],
    srm: stats.SampleRatioCheck,
    requests: Sequence[RequestObs],
    feedback: Sequence[FeedbackObs],
    shadows: Sequence[ShadowObs],
    *,
    primary_metric: stats.Metric = "accuracy",
    limits: GuardrailLimits = GuardrailLimits(),  # frozen: safe as a default
    shadow_versions: Mapping[str, str] | None = None,
    alpha: float = stats.ALPHA,
) -> Assessment:
    """Everything the autopilot and the verdict need, from plain observations.

    ``srm`` is the experiment's sample-ratio check (``stats.assignment_check`` on the units
    assigned per revision), the one the report shows. ``requests`` and ``shadows`` in arrival
    order; feedback is ordered by its time.
    """
    cause = srm_cause(srm.expected, requests) if srm.mismatch else None

    raw: list[PrimaryResult] = []
    p_values: dict[str, float] = {}
    for candidate in candidates:
        result, p = _primary(primary_metric, control, candidate, feedback, alpha)
        raw.append(result)
        if p is not None:
            p_values[candidate] = p
    primary = _with_holm(raw, p_values, alpha)
    guardrails = assess_guardrails(
        control, candidates, requests, shadows, limits, shadow_versions or {}, alpha
    )
    verdict = _verdict(control, srm, cause, primary, guardrails)
    return Assessment(
        trustworthy=not srm.mismatch,
        srm=srm,
        srm_cause=cause,
        primary=primary,
        guardrails=guardrails,
        verdict=verdict,
        control=control,
    )
