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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from abtesting import stats
from abtesting.observations import RequestObs, ShadowObs

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


def _result(
    candidate: str,
    metric: GuardrailMetric,
    limit: float,
    control_value: float | None,
    candidate_value: float | None,
    p_value: float | None,
    excess: float,
    alpha: float,
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
        return _result(candidate, "error_rate", limit, None, None, None, 0.0, alpha)
    test = stats.sequential_comparison(
        [r.variant == candidate for r in pair],
        [float(r.failed) for r in pair],
        stats.unit_codes([r.unit for r in pair]),
        GUARDRAIL_MIXTURE_SD["error_rate"],
        null=limit,
        binary=True,
    )
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
    pair = [
        r
        for r in requests
        if r.variant in (control, candidate) and not r.failed and r.latency_ms is not None
    ]
    control_ms = np.array([r.latency_ms for r in pair if r.variant == control], np.float64)
    candidate_ms = np.array([r.latency_ms for r in pair if r.variant == candidate], np.float64)
    if not control_ms.size or not candidate_ms.size:
        return _result(candidate, "latency_p95_ms", limit_ms, None, None, None, 0.0, alpha)
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
    return _result(
        candidate,
        "latency_p95_ms",
        limit_ms,
        threshold,
        float(np.quantile(candidate_ms, LATENCY_QUANTILE)),
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
        return _result(candidate, "disagreement_rate", limit, 0.0, None, None, 0.0, alpha)
    moments = stats.running_cluster_moments(
        [float(bool(s.disagree)) for s in mine], stats.unit_codes([s.unit for s in mine])
    )
    variance = stats.arm_variance(moments, binary=True)
    rate = float(moments.mean[-1])
    p_value = stats.always_valid_p_values(
        moments.mean - limit,
        variance,
        GUARDRAIL_MIXTURE_SD["disagreement_rate"],
        moments.clusters >= burn_in,
    )
    usable = bool(moments.clusters[-1] >= burn_in)
    return _result(
        candidate,
        "disagreement_rate",
        limit,
        0.0,
        rate,
        float(p_value[-1]) if usable else None,
        rate - limit,
        alpha,
    )


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
    by_version = {version: name for name, version in shadow_versions.items()}
    for version in sorted({s.version for s in shadows}):
        if by_version.get(version) == control:
            continue  # the control agrees with itself by definition
        results.append(
            disagreement_rate(
                by_version.get(version, version), version, shadows, limits.disagreement_rate, alpha
            )
        )
    return results


def _last_mean(moments: stats.RunningMoments) -> float | None:
    return float(moments.mean[-1]) if moments.count[-1] > 0 else None
