"""One reading of an experiment, per look: the report, the dashboard and the autopilot all read it.

Pure (no I/O): the caller reads the store and passes plain observations. Three steps:

1. **Trust.** The sample-ratio check (``stats.assignment_check``: units per variant against the
   weights of each revision, p < 0.001) gates everything: a split that does not follow its
   weights means some users are missing or misrouted, and every difference may be that bias.
   Then ``trustworthy`` is False, the verdict says the results cannot be trusted and
   ``srm_cause`` names the likely cause the data points to (units seen in several variants, a
   variant whose failures are not recorded, one user sending most requests).
2. **Comparisons** of each candidate with the control on both metrics (accuracy and MAE on
   feedback): the mSPRT with the user-clustered variance (``stats.sequential_comparison``),
   always valid, Holm-adjusted across the candidates so that "some candidate is better" keeps
   its false-positive rate at alpha. The primary metric's comparisons make the verdict and the
   autopilot's decision; the other metric's are shown beside them. Each comparison also carries
   its always-valid interval after every feedback (``history``, at most ``MAX_LOOKS`` looks)
   and, labelled secondary, a fixed-horizon p-value with the same clustered variance.
   One user's feedbacks are correlated (same writing style, same products): in simulated A/A
   experiments a test that took them as independent called a difference in 12-13 % of them
   (``tests/abtesting/test_verdict_simulation.py``), this one in under 2 %.
3. **Guardrails** (``abtesting.guardrails``): error rate, latency p95, shadow disagreement.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

import numpy as np
import numpy.typing as npt
from scipy.stats import norm

from abtesting import stats
from abtesting.guardrails import GuardrailLimits, GuardrailResult, assess_guardrails
from abtesting.observations import FeedbackObs, PairedObs, RequestObs, ShadowObs

__all__ = [
    "Assessment",
    "Comparison",
    "FeedbackObs",
    "GuardrailLimits",
    "GuardrailResult",
    "Look",
    "PairedObs",
    "RequestObs",
    "ShadowObs",
    "assemble",
    "assess",
    "look_positions",
    "primary_values",
]

# A unit sending more than this share of a variant's requests is named as a likely cause.
DOMINANT_UNIT_SHARE = 0.2
# Units seen in more than one variant above this share point to a broken sticky assignment.
SWITCHED_UNIT_SHARE = 0.01
# Smallest difference worth finding, for "need ~N more feedbacks".
MIN_EFFECT: dict[stats.Metric, float] = {"accuracy": 0.05, "mae": 0.1}
# Per-feedback standard deviations assumed for the power calculation before data exists.
PRIOR_SD: dict[stats.Metric, float] = {"accuracy": 0.5, "mae": 0.8}
# At most this many looks per comparison in its history: enough for a smooth line on the
# dashboard, small enough for the report.
MAX_LOOKS = 200


@dataclass(frozen=True)
class Look:
    """The comparison after ``feedbacks`` feedbacks of the experiment (all variants)."""

    feedbacks: int
    at: datetime  # when the last of them was stored
    difference: float  # candidate - control
    low: float  # always-valid (1 - alpha) interval, within the metric's possible range
    high: float


@dataclass(frozen=True)
class Comparison:
    """A candidate against the control on one metric, at the last look."""

    candidate: str
    metric: stats.Metric
    feedbacks: int  # feedbacks of the control and this candidate
    difference: float | None  # candidate - control; None until both have feedback
    low: float | None  # always-valid (1 - alpha) interval of the difference
    high: float | None
    p_value: float | None  # always valid (mSPRT, running minimum), None during the burn-in
    p_value_holm: float | None  # Holm-adjusted across candidates
    p_value_fixed: float | None  # one planned look (normal test, the same clustered variance)
    better: bool
    worse: bool
    feedback_needed: int | None = None  # about how many more the always-valid test needs
    feedback_needed_fixed: int | None = None  # a fixed-horizon test at 80 % power
    history: tuple[Look, ...] = ()
    shadow_version: str | None = None
    """Paired: this version's shadow answers against the control's answers to the same
    requests, graded by the same feedback (``candidate`` names the candidate serving that
    version, else the version). None: the split comparison of two groups of users."""


@dataclass(frozen=True)
class Assessment:
    trustworthy: bool
    srm: stats.SampleRatioCheck
    srm_cause: str | None
    primary: list[Comparison]
    guardrails: list[GuardrailResult]
    verdict: str
    control: str = field(default="")
    secondary: list[Comparison] = field(default_factory=list)
    """The other metric's comparisons: shown, never decided on."""
    paired: list[Comparison] = field(default_factory=list)
    """Paired comparisons from shadow traffic, both metrics (``Comparison.shadow_version``);
    those of the primary metric on a candidate's version count for it."""

    def evidence(self, candidate: str) -> list[Comparison]:
        """What the decision on ``candidate`` reads: its split comparison on the primary metric
        and, where its version was shadowed and paired, its paired one (one Holm family)."""
        metric = self.primary[0].metric if self.primary else None
        return [
            c
            for c in (*self.primary, *self.paired)
            if c.candidate == candidate and c.metric == metric
        ]

    def better(self, candidate: str) -> bool:
        return any(c.better for c in self.evidence(candidate))

    def worse(self, candidate: str) -> bool:
        return any(c.worse for c in self.evidence(candidate))


def primary_values(
    metric: stats.Metric, true_stars: npt.ArrayLike, predicted_stars: npt.ArrayLike
) -> npt.NDArray[np.float64]:
    """Per-feedback values of a metric: 1/0 correct (accuracy) or |error| (MAE)."""
    errors = np.abs(np.asarray(true_stars, np.float64) - np.asarray(predicted_stars, np.float64))
    return (errors == 0).astype(np.float64) if metric == "accuracy" else errors


def look_positions(first: int, last: int, max_points: int = MAX_LOOKS) -> list[int]:
    """At most ``max_points`` evenly spaced positions from ``first`` to ``last``, both kept."""
    if last < first:
        return []
    if max_points < 2:
        raise ValueError(f"max_points must be at least 2, got {max_points}")
    count = min(last - first + 1, max_points)
    return [int(p) for p in np.unique(np.rint(np.linspace(first, last, count)))]


@dataclass(frozen=True)
class _Feedback:
    """The experiment's feedback as arrays, in arrival order (built once per look)."""

    variants: npt.NDArray[np.object_]
    units: npt.NDArray[np.int64]
    values: dict[stats.Metric, npt.NDArray[np.float64]]
    at: list[datetime]

    @classmethod
    def of(cls, feedback: Sequence[FeedbackObs]) -> _Feedback:
        true = np.array([f.true_stars for f in feedback], dtype=np.int64)
        predicted = np.array([f.predicted_stars for f in feedback], dtype=np.int64)
        return cls(
            np.array([f.variant for f in feedback], dtype=object),
            stats.unit_codes([f.unit for f in feedback]),
            {m: primary_values(m, true, predicted) for m in stats.METRICS},
            [f.at for f in feedback],
        )


def _feedback_needed(
    metric: stats.Metric,
    difference: float,
    sds: tuple[float | None, float | None],
    feedbacks: int,
    share_candidate: float,
) -> tuple[int | None, int | None]:
    """About how many more feedbacks the always-valid test, and a fixed-horizon test at 80 %
    power, need to find the larger of the observed difference and ``MIN_EFFECT``. The
    per-feedback standard deviations (control, candidate) come from the clustered variance, so
    they include the users' correlation."""
    effect = max(abs(difference), MIN_EFFECT[metric])
    sd_control, sd_candidate = (sd or PRIOR_SD[metric] for sd in sds)
    total = stats.sequential_sample_size(
        effect, sd_control, sd_candidate, share_candidate, stats.MIXTURE_SD[metric]
    )
    needed = None if total is None else max(total - feedbacks, 1)
    needed_fixed = None
    if 0 < share_candidate < 1:
        ratio = share_candidate / (1 - share_candidate)
        control_n = stats.means_sample_size(
            effect, math.hypot(sd_control, sd_candidate) / 2**0.5, ratio
        )
        needed_fixed = max(math.ceil(control_n * (1 + ratio)) - feedbacks, 0)
    return needed, needed_fixed


def _compare(
    metric: stats.Metric,
    control: str,
    candidate: str,
    seen: _Feedback,
    share_candidate: float,
    alpha: float,
    max_looks: int,
) -> Comparison:
    is_candidate = seen.variants == candidate
    pair = is_candidate | (seen.variants == control)
    feedbacks = int(pair.sum())
    if not (is_candidate.any() and (seen.variants == control).any()):
        return split_comparison(metric, candidate, feedbacks, None, (), share_candidate, alpha)
    test = stats.sequential_comparison(
        is_candidate,
        seen.values[metric],
        seen.units,
        stats.MIXTURE_SD[metric],
        binary=metric == "accuracy",
        include=pair,
    )
    history = interval_history(
        metric, test.difference, test.variance, test.usable, seen.at.__getitem__, alpha, max_looks
    )
    return split_comparison(metric, candidate, feedbacks, test, history, share_candidate, alpha)


def interval_history(
    metric: stats.Metric,
    difference: npt.NDArray[np.float64],
    variance: npt.NDArray[np.float64],
    usable: npt.NDArray[np.bool_],
    at: Callable[[int], datetime],
    alpha: float = stats.ALPHA,
    max_looks: int = MAX_LOOKS,
) -> tuple[Look, ...]:
    """The always-valid interval after each of at most ``max_looks`` feedbacks, evenly spread
    from the first at which the test is usable to the last; the arrays hold the comparison after
    every feedback of the experiment (``at(t)``: when feedback t was stored)."""
    if not usable.any():
        return ()
    first = int(np.argmax(usable))  # the first usable look (both stop at the first True)
    looks = np.array(look_positions(first, usable.size - 1, max_looks), dtype=np.int64)
    looks = looks[usable[looks]]
    floor, ceiling = stats.DIFFERENCE_RANGE[metric]
    half = stats.always_valid_half_width(variance[looks], stats.MIXTURE_SD[metric], alpha)
    low = np.clip(difference[looks] - half, floor, ceiling)
    high = np.clip(difference[looks] + half, floor, ceiling)
    return tuple(
        Look(int(t) + 1, at(int(t)), float(difference[t]), float(lo), float(hi))
        for t, lo, hi in zip(looks, low, high, strict=True)
    )


def _intervals(
    metric: stats.Metric, difference: float, variance: float, ready: bool, alpha: float
) -> tuple[float | None, float | None, float | None]:
    """The always-valid (1 - alpha) interval of a difference (None, None during the burn-in),
    cut to what the metric allows, and the fixed-horizon p-value (None without a variance)."""
    low = high = None
    if ready:
        floor, ceiling = stats.DIFFERENCE_RANGE[metric]
        low, high = stats.always_valid_interval(
            difference, variance, stats.MIXTURE_SD[metric], alpha
        )
        low, high = max(low, floor), min(high, ceiling)
    fixed = None
    if np.isfinite(variance) and variance > 0:
        fixed = float(2 * norm.sf(abs(difference) / variance**0.5))
    return low, high, fixed


def split_comparison(
    metric: stats.Metric,
    candidate: str,
    feedbacks: int,
    test: stats.SequentialComparison | None,
    history: tuple[Look, ...],
    share_candidate: float,
    alpha: float = stats.ALPHA,
) -> Comparison:
    """A candidate's comparison with the control on ``metric``, read off the test after its last
    look (None: an arm has no feedback yet), before Holm; ``feedbacks`` of both arms."""
    if test is None:
        needed = _feedback_needed(metric, 0.0, (None, None), feedbacks, share_candidate)
        return Comparison(candidate, metric, feedbacks, *(None,) * 6, False, False, *needed)
    difference, variance = float(test.difference[-1]), float(test.variance[-1])
    ready = bool(test.usable[-1])
    low, high, fixed = _intervals(metric, difference, variance, ready, alpha)

    def sd(moments: stats.RunningMoments) -> float | None:
        v = float(stats.arm_variance(moments, metric == "accuracy")[-1]) * moments.count[-1]
        return v**0.5 if np.isfinite(v) and v > 0 else None

    needed = _feedback_needed(
        metric, difference, (sd(test.control), sd(test.candidate)), feedbacks, share_candidate
    )
    return Comparison(
        candidate,
        metric,
        feedbacks,
        difference,
        low,
        high,
        float(test.p_value[-1]) if ready else None,
        None,
        fixed,
        False,
        False,
        *needed,
        history=history,
    )


def _paired(
    metric: stats.Metric,
    control: str,
    version: str,
    name: str,
    paired: Sequence[PairedObs],
    alpha: float,
) -> Comparison:
    """``version``'s shadow answers against the control's on the same requests."""
    rows = [p for p in paired if p.shadow_version == version and p.live_variant == control]
    if not rows:
        return paired_result(metric, version, name, 0, None, alpha)
    truth = np.array([p.true_stars for p in rows], dtype=np.int64)
    difference = primary_values(metric, truth, [p.shadow_stars for p in rows]) - primary_values(
        metric, truth, [p.live_stars for p in rows]
    )
    test = stats.paired_comparison(
        difference,
        stats.unit_codes([p.unit for p in rows]),
        stats.MIXTURE_SD[metric],
        binary=metric == "accuracy",
    )
    return paired_result(metric, version, name, len(rows), test, alpha)


def paired_result(
    metric: stats.Metric,
    version: str,
    name: str,
    feedbacks: int,
    test: stats.PairedSequence | None,
    alpha: float = stats.ALPHA,
) -> Comparison:
    """``version``'s paired comparison read off its test after the last look (None: no
    feedback on the control's answers it shadowed yet), before Holm."""
    if test is None:
        return Comparison(name, metric, 0, *(None,) * 6, False, False, shadow_version=version)
    mean, variance = float(test.moments.mean[-1]), float(test.variance[-1])
    ready = bool(test.usable[-1])
    low, high, fixed = _intervals(metric, mean, variance, ready, alpha)
    p_value = float(test.p_value[-1]) if ready else None
    return Comparison(
        name, metric, feedbacks, mean, low, high, p_value, None, fixed, False, False,
        shadow_version=version,
    )  # fmt: skip


def _with_holm(results: list[Comparison], alpha: float) -> list[Comparison]:
    """Holm across the comparisons of one metric (every candidate's split one and the paired
    ones); one still in its burn-in counts as p = 1, so the family (and the correction) does
    not shrink while it waits."""
    adjusted = stats.holm(
        {str(i): 1.0 if r.p_value is None else r.p_value for i, r in enumerate(results)}
    )
    out = []
    for i, r in enumerate(results):
        p = adjusted[str(i)] if r.p_value is not None else None
        significant = p is not None and p < alpha and r.difference is not None
        improves = (
            r.difference is not None and (r.difference > 0) == stats.HIGHER_IS_BETTER[r.metric]
        )
        needed = (None, None) if significant else (r.feedback_needed, r.feedback_needed_fixed)
        out.append(
            replace(r, p_value_holm=p, better=significant and improves,
                    worse=significant and not improves, feedback_needed=needed[0],
                    feedback_needed_fixed=needed[1])
        )  # fmt: skip
    return out


@dataclass(frozen=True)
class RequestCounts:
    """What the requests tell about a broken split (``srm_cause`` reads it): per variant, its
    requests, failed requests, and requests per unit (by unit code, one code space)."""

    total: Mapping[str, int]
    failed: Mapping[str, int]
    per_unit: Mapping[str, npt.NDArray[np.int64]]

    @classmethod
    def of(cls, requests: Sequence[RequestObs]) -> RequestCounts:
        codes = stats.unit_codes([r.unit for r in requests])
        span = int(codes.max()) + 1 if codes.size else 0
        variants = np.array([r.variant for r in requests], dtype=object)
        return cls(
            Counter(r.variant for r in requests),
            Counter(r.variant for r in requests if r.failed),
            {
                v: np.bincount(codes[variants == v], minlength=span).astype(np.int64)
                for v in sorted(set(variants))
            },
        )


def srm_cause(expected: Mapping[str, float], requests: Sequence[RequestObs] | RequestCounts) -> str:
    """The likely cause of a sample-ratio mismatch, from what the requests can tell;
    ``expected`` is the check's expected units per variant (0: never weighted)."""
    counts = requests if isinstance(requests, RequestCounts) else RequestCounts.of(requests)
    causes: list[str] = []
    mine = [counts.per_unit[v] for v in expected if v in counts.per_unit]
    if mine:
        span = max(len(c) for c in mine)
        served = sum(np.pad(c, (0, span - len(c))) > 0 for c in mine)
        users, switched = int(np.count_nonzero(served)), int(np.count_nonzero(served > 1))
        if users and switched / users > SWITCHED_UNIT_SHARE:
            causes.append(
                f"{switched} of {users} users were served by more than one variant: the sticky "
                "assignment changed mid-experiment (weights or experiment name edited, sticky "
                "switched off) or user ids are not passed consistently"
            )
    failed, total = counts.failed, counts.total
    silent = [v for v in expected if expected[v] > 0 and total.get(v) and not failed.get(v)]
    noisy = [v for v in expected if total.get(v) and failed.get(v)]
    if silent and noisy:
        shares = ", ".join(f"{v} {failed[v] / total[v]:.1%}" for v in sorted(noisy))
        causes.append(
            f"no failed request is recorded for {', '.join(sorted(silent))} while others fail "
            f"({shares}): a variant's failures may not be recorded, so its failing users vanish"
        )
    for variant in sorted(v for v in expected if total.get(v)):
        units = counts.per_unit[variant]
        top = int(units.max())
        if top / total[variant] > DOMINANT_UNIT_SHARE and np.count_nonzero(units) > 1:
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


def _numbers(c: Comparison) -> str:
    kind = "" if c.shadow_version is None else f"paired on {c.shadow_version}'s shadow answers, "
    return f"{kind}Holm-adjusted p={c.p_value_holm:.3f}, {c.feedbacks} feedbacks"


def _verdict(
    control: str,
    srm: stats.SampleRatioCheck,
    cause: str | None,
    primary: Sequence[Comparison],
    paired: Sequence[Comparison],
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
    candidates = [r.candidate for r in primary]
    shadows_only = [
        r for r in paired if r.candidate not in candidates and r.metric == primary[0].metric
    ]
    for r in [*primary, *shadows_only]:
        evidence = [r, *(p for p in paired if p.candidate == r.candidate and p.metric == r.metric)]
        evidence = list(dict.fromkeys(evidence))
        name = "accuracy" if r.metric == "accuracy" else "MAE"
        subject = r.candidate if r.shadow_version is None else f"shadow version {r.candidate}"
        worse_guards = [
            g.metric for g in guardrails if g.candidate == r.candidate and g.status == "worse"
        ]
        if any(c.better for c in evidence):
            text = f"{subject} is better than {control} on {name}"
        elif any(c.worse for c in evidence):
            text = f"{subject} is worse than {control} on {name}"
        else:
            text = f"{subject} vs {control}: not enough data on {name} yet"
            if r.feedback_needed is not None:
                text += f": need ~{r.feedback_needed} more feedbacks"
        numbers = [_numbers(c) for c in evidence if c.p_value_holm is not None]
        if numbers:
            text += f" ({'; '.join(numbers)})"
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
    paired: Sequence[PairedObs] = (),
    primary_metric: stats.Metric = "accuracy",
    limits: GuardrailLimits = GuardrailLimits(),  # frozen: safe as a default
    shadow_versions: Mapping[str, str] | None = None,
    weights: Mapping[str, float] | None = None,
    alpha: float = stats.ALPHA,
    max_looks: int = MAX_LOOKS,
) -> Assessment:
    """Everything the report, the dashboard and the autopilot need, from plain observations.

    ``srm`` is the experiment's sample-ratio check (``stats.assignment_check`` on the units
    assigned per revision), the one the report shows. ``requests``, ``feedback`` and ``shadows``
    in arrival order (the always-valid tests read them as a sequence). ``weights`` are the
    variants' weights in force (for "need ~N more feedbacks"; equal when not given).
    ``paired``: feedback on requests a shadow version answered too (empty: paired evaluation
    off); a shadow version that a candidate serves (``shadow_versions``) counts for it.
    """
    cause = srm_cause(srm.expected, requests) if srm.mismatch else None
    seen = _Feedback.of(feedback)
    share = traffic_share(control, candidates, weights)
    serving = serving_names(candidates, shadow_versions)
    split = {
        metric: [_compare(metric, control, c, seen, share[c], alpha, max_looks) for c in candidates]
        for metric in stats.METRICS
    }
    shadowed = sorted({p.shadow_version for p in paired})
    paired_results = {
        metric: [_paired(metric, control, v, serving.get(v, v), paired, alpha) for v in shadowed]
        for metric in stats.METRICS
    }
    guardrails = assess_guardrails(
        control, candidates, requests, shadows, limits, shadow_versions or {}, alpha
    )
    return assemble(control, srm, cause, split, paired_results, guardrails, primary_metric, alpha)


def traffic_share(
    control: str, candidates: Sequence[str], weights: Mapping[str, float] | None
) -> dict[str, float]:
    """Each candidate's share of the traffic it splits with the control (weights not given:
    equal), for "need ~N more feedbacks"."""
    weight = {v: 1.0 for v in (control, *candidates)} | dict(weights or {})
    return {
        c: weight[c] / (weight[control] + weight[c]) if weight[control] + weight[c] > 0 else 0.0
        for c in candidates
    }


def serving_names(
    candidates: Sequence[str], shadow_versions: Mapping[str, str] | None
) -> dict[str, str]:
    """The candidate serving each version (a shadowed version counts for it)."""
    return {v: name for name, v in (shadow_versions or {}).items() if name in candidates}


def assemble(
    control: str,
    srm: stats.SampleRatioCheck,
    cause: str | None,
    split: Mapping[stats.Metric, list[Comparison]],
    paired: Mapping[stats.Metric, list[Comparison]],
    guardrails: list[GuardrailResult],
    primary_metric: stats.Metric = "accuracy",
    alpha: float = stats.ALPHA,
) -> Assessment:
    """The assessment from its parts before Holm: per metric the split comparisons (one per
    candidate) and the paired ones (one per shadowed version); Holm runs across both."""
    compared = {
        metric: _with_holm([*split[metric], *paired[metric]], alpha) for metric in stats.METRICS
    }
    by_kind = {m: [c for c in compared[m] if c.shadow_version is None] for m in stats.METRICS}
    primary = by_kind[primary_metric]
    paired_results = [c for m in stats.METRICS for c in compared[m] if c.shadow_version]
    return Assessment(
        trustworthy=not srm.mismatch,
        srm=srm,
        srm_cause=cause,
        primary=primary,
        guardrails=guardrails,
        verdict=_verdict(control, srm, cause, primary, paired_results, guardrails),
        control=control,
        secondary=[c for m in stats.METRICS if m != primary_metric for c in by_kind[m]],
        paired=paired_results,
    )
