"""Guardrail metrics of an A/B test: is a candidate worse than the control by more than we tolerate?

Three guardrails per candidate, from what the gateway sees anyway:

* ``error_rate``: share of the variant's prediction requests that failed (5xx, timeouts).
* ``latency_p95_ms``: the 95th percentile of answered requests' latency. A quantile has no
  per-request value to average, so the test runs on an indicator: the candidate's p95 exceeds
  the control's p95 + limit exactly when more than 5% of the candidate's requests are slower
  than that threshold. We compare 1{candidate latency > q + limit} with 1{control latency > q},
  q the control's sample p95 (whose own exceedance rate is 5%, up to sampling noise that the
  control arm's variance carries): the difference of the two rates is 0 when the candidate's p95
  is exactly q + limit. This keeps the whole machinery (mean, cluster variance, mSPRT) of the
  other metrics and needs no order-statistic confidence sequence; the threshold is re-estimated
  at each assessment (a plug-in, as the mSPRT's variance is).
* ``disagreement_rate``: share of shadow copies of a candidate whose stars differ from the live
  answer. The control agrees with itself, so the increase over the control is the rate itself.

Each is one always-valid test (the mSPRT of ``abtesting.stats``, user-clustered variance) of "the
increase equals the limit", where the limit is the largest tolerated increase:

* ``worse``: the increase is significantly *above the limit* (the always-valid interval of the
  increase lies wholly above it). A real but tolerated increase (a few ms) never rolls back.
* ``not_worse``: the increase is significantly below the limit (the interval's upper bound is
  below it): a non-inferiority reading.
* ``not_enough_data``: the interval still contains the limit, or the burn-in is not over.

Watching these after every request cannot inflate false alarms: the mSPRT p-value is valid at
any stopping time. They are not Holm-corrected with the primary metric: a false "worse" costs a
rollback to the known-good control, while a slower alarm costs users.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from abtesting import stats
from abtesting.observations import RequestObs, ShadowObs
from abtesting.stats import FloatArray

GuardrailMetric = Literal["error_rate", "latency_p95_ms", "disagreement_rate"]
GuardrailStatus = Literal["worse", "not_worse", "not_enough_data"]
# Mixture SDs of the mSPRT: the excess over the limit each test is tuned to find quickly.
GUARDRAIL_MIXTURE_SD: dict[GuardrailMetric, float] = {
    "error_rate": 0.02,
    "latency_p95_ms": 0.05,
    "disagreement_rate": 0.1,
}
LATENCY_QUANTILE = 0.95


@dataclass(frozen=True)
class GuardrailLimits:
    """The largest tolerated increase of each guardrail over the control."""

    error_rate: float = 0.01
    latency_p95_ms: float = 50.0
    disagreement_rate: float = 0.2


@dataclass(frozen=True)
class GuardrailResult:
    candidate: str
    metric: GuardrailMetric
    control_value: float | None
    candidate_value: float | None
    difference: float | None  # candidate - control
    p_value: float | None  # always valid, against "the increase equals the limit"
    limit: float
    status: GuardrailStatus


# Status codes, so that simulations can read the status of many experiments at once.
NOT_ENOUGH_DATA, NOT_WORSE, WORSE = 0, 1, 2
STATUS_NAMES: dict[int, GuardrailStatus] = {
    NOT_ENOUGH_DATA: "not_enough_data",
    NOT_WORSE: "not_worse",
    WORSE: "worse",
}


def status_codes(
    p_value: npt.ArrayLike, excess: npt.ArrayLike, alpha: float = stats.ALPHA
) -> npt.NDArray[np.int8]:
    """WORSE / NOT_WORSE / NOT_ENOUGH_DATA from the always-valid p-value against "increase =
    limit" and the sign of the estimated excess over the limit (elementwise)."""
    p = np.asarray(p_value, dtype=np.float64)
    e = np.asarray(excess, dtype=np.float64)
    significant = p < alpha
    return np.asarray(
        np.where(significant & (e > 0), WORSE, np.where(significant & (e < 0), NOT_WORSE, 0)),
        dtype=np.int8,
    )


def no_data(candidate: str, metric: GuardrailMetric, limit: float) -> GuardrailResult:
    """A guardrail with nothing to read yet (an arm without requests)."""
    return _result(candidate, metric, limit, None, None, None, 0.0)


def _result(
    candidate: str,
    metric: GuardrailMetric,
    limit: float,
    control_value: float | None,
    candidate_value: float | None,
    p_value: float | None,
    excess: float,
    alpha: float = stats.ALPHA,
) -> GuardrailResult:
    difference = None
    if control_value is not None and candidate_value is not None:
        difference = candidate_value - control_value
    code = NOT_ENOUGH_DATA if p_value is None else int(status_codes(p_value, excess, alpha))
    return GuardrailResult(
        candidate, metric, control_value, candidate_value, difference, p_value, limit,
        STATUS_NAMES[code],
    )  # fmt: skip


def error_rate(
    control: str,
    candidate: str,
    requests: Sequence[RequestObs],
    limit: float,
    alpha: float = stats.ALPHA,
) -> GuardrailResult:
    """Failed requests per variant; ``requests`` in arrival order (other variants are skipped)."""
    pair = [r for r in requests if r.variant in (control, candidate)]
    if not pair:
        return no_data(candidate, "error_rate", limit)
    test = stats.sequential_comparison(
        [r.variant == candidate for r in pair],
        [float(r.failed) for r in pair],
        stats.unit_codes([r.unit for r in pair]),
        GUARDRAIL_MIXTURE_SD["error_rate"],
        null=limit,
        binary=True,
    )
    return error_rate_result(candidate, limit, test, alpha)


def error_rate_result(
    candidate: str, limit: float, test: stats.SequentialComparison, alpha: float = stats.ALPHA
) -> GuardrailResult:
    """The error-rate guardrail read off its test (failed 1, answered 0, against "the increase
    is ``limit``") after the test's last look."""
    return _result(
        candidate,
        "error_rate",
        limit,
        _last_mean(test.control),
        _last_mean(test.candidate),
        float(test.p_value[-1]) if test.usable.any() else None,
        float(test.difference[-1]) - limit,
        alpha,
    )


def latency_p95(
    control: str,
    candidate: str,
    requests: Sequence[RequestObs],
    limit_ms: float,
    alpha: float = stats.ALPHA,
) -> GuardrailResult:
    """The p95 latency, tested through exceedance of the control's p95 (see module docstring)."""
    tested = latency_test(control, candidate, requests, limit_ms)
    if tested is None:
        return no_data(candidate, "latency_p95_ms", limit_ms)
    return latency_result(candidate, limit_ms, *tested, alpha)


def latency_test(
    control: str, candidate: str, requests: Sequence[RequestObs], limit_ms: float
) -> tuple[float, float, stats.SequentialComparison] | None:
    """The control's p95, the candidate's, and the exceedance test over the answered requests
    of both, in arrival order, at that threshold (None: an arm has none)."""
    pair = [
        r
        for r in requests
        if r.variant in (control, candidate) and not r.failed and r.latency_ms is not None
    ]
    control_ms = np.array([r.latency_ms for r in pair if r.variant == control], np.float64)
    candidate_ms = np.array([r.latency_ms for r in pair if r.variant == candidate], np.float64)
    if not control_ms.size or not candidate_ms.size:
        return None
    threshold = float(np.quantile(control_ms, LATENCY_QUANTILE))
    is_candidate = np.array([r.variant == candidate for r in pair], dtype=bool)
    latency = np.array([r.latency_ms for r in pair], dtype=np.float64)
    slow = latency > np.where(is_candidate, threshold + limit_ms, threshold)
    test = stats.sequential_comparison(
        is_candidate,
        slow.astype(np.float64),
        stats.unit_codes([r.unit for r in pair]),
        GUARDRAIL_MIXTURE_SD["latency_p95_ms"],
        binary=True,
    )
    return threshold, float(np.quantile(candidate_ms, LATENCY_QUANTILE)), test


def latency_result(
    candidate: str,
    limit_ms: float,
    threshold: float,
    candidate_p95: float,
    test: stats.SequentialComparison,
    alpha: float = stats.ALPHA,
) -> GuardrailResult:
    """The latency guardrail read off its exceedance test after the test's last look;
    ``threshold`` is the control's p95."""
    return _result(
        candidate,
        "latency_p95_ms",
        limit_ms,
        threshold,
        candidate_p95,
        float(test.p_value[-1]) if test.usable.any() else None,
        float(test.difference[-1]),
        alpha,
    )


def disagreement_rate(
    candidate: str,
    version: str,
    shadows: Sequence[ShadowObs],
    limit: float,
    alpha: float = stats.ALPHA,
    burn_in: int = stats.SEQUENTIAL_BURN_IN,
) -> GuardrailResult:
    """Share of ``version``'s answered shadow copies that disagree with the live answer."""
    mine = [s for s in shadows if s.version == version and s.disagree is not None]
    if not mine:
        return disagreement_result(candidate, limit, None, 1.0, alpha, burn_in)
    moments = stats.running_cluster_moments(
        [float(bool(s.disagree)) for s in mine], stats.unit_codes([s.unit for s in mine])
    )
    p_value = disagreement_p_values(moments, limit, burn_in)
    return disagreement_result(candidate, limit, moments, float(p_value[-1]), alpha, burn_in)


def disagreement_p_values(
    moments: stats.RunningMoments,
    limit: float,
    burn_in: int = stats.SEQUENTIAL_BURN_IN,
    start: float = 1.0,
) -> FloatArray:
    """The always-valid p-values of "the disagreement rate is ``limit``" after each answered
    shadow copy (``start``: their running minimum before these)."""
    return stats.always_valid_p_values(
        moments.mean - limit,
        stats.arm_variance(moments, binary=True),
        GUARDRAIL_MIXTURE_SD["disagreement_rate"],
        moments.clusters >= burn_in,
        start,
    )


def disagreement_result(
    candidate: str,
    limit: float,
    moments: stats.RunningMoments | None,
    p_value: float,
    alpha: float = stats.ALPHA,
    burn_in: int = stats.SEQUENTIAL_BURN_IN,
) -> GuardrailResult:
    """The disagreement guardrail after the last answered copy (``moments`` None: none yet);
    ``p_value`` is the running minimum of ``disagreement_p_values``."""
    if moments is None or not moments.count[-1]:
        return _result(candidate, "disagreement_rate", limit, 0.0, None, None, 0.0, alpha)
    rate = float(moments.mean[-1])
    usable = bool(moments.clusters[-1] >= burn_in)
    return _result(
        candidate,
        "disagreement_rate",
        limit,
        0.0,
        rate,
        p_value if usable else None,
        rate - limit,
        alpha,
    )


def shadowed(
    control: str, versions: Iterable[str], shadow_versions: Mapping[str, str]
) -> list[tuple[str, str]]:
    """(name, version) of each shadowed version that has a disagreement guardrail, by version:
    named after the variant serving it (a version of no variant under its own name); the
    control's version has none, it agrees with itself by definition."""
    by_version = {version: name for name, version in shadow_versions.items()}
    return [
        (by_version.get(version, version), version)
        for version in sorted(set(versions))
        if by_version.get(version) != control
    ]


def assess_guardrails(
    control: str,
    candidates: Sequence[str],
    requests: Sequence[RequestObs],
    shadows: Sequence[ShadowObs],
    limits: GuardrailLimits,
    shadow_versions: Mapping[str, str],
    alpha: float = stats.ALPHA,
) -> list[GuardrailResult]:
    """Every guardrail of every candidate; disagreement only for versions that were shadowed.

    ``shadow_versions`` maps variant names to their model versions, so that a shadowed version
    is reported under its candidate's name (a version of no variant under its own).
    """
    results: list[GuardrailResult] = []
    for candidate in candidates:
        results.append(error_rate(control, candidate, requests, limits.error_rate, alpha))
        results.append(latency_p95(control, candidate, requests, limits.latency_p95_ms, alpha))
    for name, version in shadowed(control, (s.version for s in shadows), shadow_versions):
        results.append(disagreement_rate(name, version, shadows, limits.disagreement_rate, alpha))
    return results


def _last_mean(moments: stats.RunningMoments) -> float | None:
    return float(moments.mean[-1]) if moments.count[-1] > 0 else None
