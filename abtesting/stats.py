"""Statistics of the A/B engine: intervals, the always-valid test, sample-ratio mismatch, power.

Pure functions on numbers (numpy/scipy), no I/O, so each is tested against scipy/statsmodels and
by simulation. Where scipy has the interval (Wilson, Student's t, a quantile's order-statistic
interval) it is scipy's. What scipy does not have is written here:

* The always-valid test: the normal-mixture sequential probability ratio test (mSPRT; Johari,
  Pekelis & Walsh, "Always valid inference", 2017). Its p-value may be watched after every
  observation and the experiment stopped whenever it drops below alpha without inflating the
  false-positive rate; ``always_valid_interval`` inverts it into a confidence sequence that
  covers the truth at every look at once.
* ``running_cluster_moments``: metrics are per request but the randomisation unit is the user,
  and one user's requests are correlated (same writing style, same product). Treating them as
  independent understates the variance of a mean by the design effect 1 + (m - 1) * rho and
  makes every test too eager (in simulated A/A experiments with users who send several
  feedbacks, a per-request always-valid test called a difference in 12-13 % of them). The
  cluster-robust (delta method, ratio-of-sums) variance sums residuals per user first; it
  equals statsmodels' cluster-robust OLS variance of an intercept.
* ``holm``: the verdict draws on one test per candidate; Holm's step-down keeps the chance of
  any false "better" at alpha across them and is never weaker than Bonferroni.

``abtesting.assessment`` puts them together into the one reading the report and the autopilot
share.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import numpy.typing as npt
from scipy import stats

from starrating.labels import STARS

FloatArray = npt.NDArray[np.float64]

ALPHA = 0.05
# Sample-ratio mismatch is flagged at a strict threshold: the check runs on every report view.
SRM_ALPHA = 0.001
# Per-arm observations before the sequential test starts: plug-in variances of a handful of
# observations are too noisy for the normal approximation the mixture likelihood ratio rests on.
SEQUENTIAL_BURN_IN = 20


@dataclass(frozen=True)
class Estimate:
    """A point estimate with a two-sided confidence interval (None where undefined)."""

    value: float
    low: float | None
    high: float | None


@dataclass(frozen=True)
class SampleRatioCheck:
    """Chi-square goodness of fit of observed assignment counts against the configured weights."""

    observed: dict[str, int]
    expected: dict[str, float]
    chi2: float
    p_value: float
    mismatch: bool


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> Estimate:
    """Proportion with the Wilson score interval (good coverage for small n and p near 0/1):
    scipy's ``binomtest(...).proportion_ci(method="wilson")``."""
    if n <= 0:
        raise ValueError(f"need at least one observation, got n={n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in 0..{n}, got {successes}")
    ci = stats.binomtest(successes, n).proportion_ci(confidence_level=confidence, method="wilson")
    return Estimate(value=successes / n, low=float(ci.low), high=float(ci.high))


def mean_interval(values: Sequence[float] | FloatArray, confidence: float = 0.95) -> Estimate:
    """Mean with Student's t interval, scipy's ``ttest_1samp(...).confidence_interval()`` (no
    bounds below two observations; a constant sample's interval is its value)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("need at least one observation")
    mean = float(x.mean())
    if x.size < 2:
        return Estimate(value=mean, low=None, high=None)
    if np.ptp(x) == 0:
        return Estimate(value=mean, low=mean, high=mean)
    ci = stats.ttest_1samp(x, 0.0).confidence_interval(confidence_level=confidence)
    return Estimate(value=mean, low=float(ci.low), high=float(ci.high))


def quantile_interval(
    values: Sequence[float] | FloatArray, q: float, confidence: float = 0.95
) -> Estimate:
    """A quantile with scipy's distribution-free interval from order statistics
    (``quantile_test(...).confidence_interval()``); a bound is None where the sample is too
    small to reach it."""
    return sorted_quantile_interval(np.sort(np.asarray(values, dtype=np.float64)), q, confidence)


def sorted_quantile(ordered: FloatArray, q: float) -> float:
    """``np.quantile(x, q)`` (its default, linear method, to the last bit) of the sample whose
    values ``ordered`` holds in ascending order, read off two order statistics: O(1)."""
    n = ordered.size
    if n == 0:
        raise ValueError("need at least one observation")
    virtual = (n - 1) * q
    below = min(max(math.floor(virtual), 0), n - 1)
    above = min(below + 1, n - 1)
    gamma = virtual - below
    a, b = float(ordered[below]), float(ordered[above])
    # numpy's _lerp: from the nearer end, so that gamma 0 and 1 give the order statistics exactly.
    diff = b - a
    return b - diff * (1 - gamma) if gamma >= 0.5 else a + diff * gamma


def sorted_quantile_interval(ordered: FloatArray, q: float, confidence: float = 0.95) -> Estimate:
    """``quantile_interval`` of the sample whose values ``ordered`` holds in ascending order:
    the same numbers, without sorting (what a running sample kept in order reads)."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"q must be in (0, 1), got {q}")
    n = ordered.size
    estimate = sorted_quantile(ordered, q)
    # scipy's quantile_test(...).confidence_interval(), two-sided, on a sorted sample.
    tail = (1 - confidence) / 2
    counts = stats.binom(n, q)
    low_index, high_index = int(counts.ppf(tail)) - 1, int(counts.isf(tail))
    low = float(ordered[low_index]) if low_index >= 0 else math.nan
    high = float(ordered[high_index]) if high_index < n else math.nan
    return Estimate(value=estimate, low=_finite(low), high=_finite(high))


def counts_mean_interval(
    values: npt.ArrayLike, counts: npt.ArrayLike, confidence: float = 0.95
) -> Estimate:
    """``mean_interval`` of a sample given as distinct ``values`` and how often each occurs
    (a running histogram), in O(distinct values); equal to it up to rounding."""
    v = np.asarray(values, dtype=np.float64)
    c = np.asarray(counts, dtype=np.float64)
    n = float(c.sum())
    if n <= 0:
        raise ValueError("need at least one observation")
    mean = float((v * c).sum() / n)
    if n < 2:
        return Estimate(value=mean, low=None, high=None)
    seen = v[c > 0]
    if seen.max() == seen.min():
        return Estimate(value=mean, low=mean, high=mean)
    sd = math.sqrt(float((c * (v - mean) ** 2).sum()) / (n - 1))
    low, high = stats.t.interval(confidence, n - 1, loc=mean, scale=sd / math.sqrt(n))
    return Estimate(value=mean, low=float(low), high=float(high))


def mixture_log_likelihood_ratio(
    difference: FloatArray | float, variance: FloatArray | float, mixture_sd: float
) -> FloatArray:
    """log of the mSPRT statistic for H0: true difference = 0.

    With the estimate ``difference`` ~ N(theta, variance) and a N(0, mixture_sd^2) mixture over
    theta under the alternative, the likelihood ratio against theta = 0 is
    sqrt(V / (V + tau^2)) * exp(tau^2 d^2 / (2 V (V + tau^2))).
    """
    tau2 = mixture_sd * mixture_sd
    d = np.asarray(difference, dtype=np.float64)
    v = np.asarray(variance, dtype=np.float64)
    return np.asarray(
        0.5 * np.log(v / (v + tau2)) + tau2 * d * d / (2.0 * v * (v + tau2)), dtype=np.float64
    )


def sample_ratio_check(
    observed: dict[str, int], weights: dict[str, float], alpha: float = SRM_ALPHA
) -> SampleRatioCheck:
    """Chi-square test of assignment counts against the weights they were drawn with.

    A mismatch means the split itself is broken (a bug, a bot, a crashing variant), so no other
    number in the report can be trusted. Variants with weight 0 that still got traffic are a
    mismatch by definition.
    """
    names = list(weights)
    if set(observed) - set(names):
        raise ValueError(f"observed variants {sorted(set(observed) - set(names))} have no weight")
    total_weight = sum(weights.values())
    if total_weight <= 0:
        raise ValueError("weights must sum to more than 0")
    total = sum(observed.get(name, 0) for name in names)
    expected = {name: total * weights[name] / total_weight for name in names}
    counts = {name: observed.get(name, 0) for name in names}
    live = [name for name in names if expected[name] > 0]
    if total == 0 or len(live) < 2:
        stray = any(counts[name] > 0 for name in names if expected[name] == 0)
        return SampleRatioCheck(
            counts, expected, math.inf if stray else 0.0, 0.0 if stray else 1.0, stray
        )
    if any(counts[name] > 0 for name in names if expected[name] == 0):
        return SampleRatioCheck(counts, expected, math.inf, 0.0, True)
    result = stats.chisquare([counts[n] for n in live], [expected[n] for n in live])
    p_value = float(result.pvalue)
    return SampleRatioCheck(counts, expected, float(result.statistic), p_value, p_value < alpha)


def expected_units(
    assigned: Mapping[int, Mapping[str, int]], weights: Mapping[int, Mapping[str, float]]
) -> dict[str, float]:
    """Units each variant should have been assigned: each revision's units shared out by that
    revision's weights, summed over the revisions.

    ``assigned`` is units per variant per revision, ``weights`` the variant weights of each
    revision. A unit is drawn afresh under every revision (a ramp moves the boundary between
    variants), so each revision is its own draw. Every variant weighted in some revision is
    listed, the latest revision's first; a variant with units but no weight expects 0.
    """
    expected: dict[str, float] = {}
    for revision in sorted(weights, reverse=True):
        expected.update((name, 0.0) for name in weights[revision] if name not in expected)
    for revision, counts in assigned.items():
        total = sum(counts.values())
        shares = weights.get(revision, {})
        total_weight = sum(shares.values())
        for name in counts:
            expected.setdefault(name, 0.0)
        for name, weight in shares.items():
            expected[name] += total * weight / total_weight
    return expected


def assignment_check(
    assigned: Mapping[int, Mapping[str, int]],
    weights: Mapping[int, Mapping[str, float]],
    alpha: float = SRM_ALPHA,
) -> SampleRatioCheck:
    """The sample-ratio check of an experiment: units per variant, summed over its revisions,
    against ``expected_units`` (so a ramp, which changes the weights, is no mismatch).

    The unit is the user (an anonymous request stands for itself): the split draws users, and
    one busy user's many requests would make requests look skewed when the split is fine.
    """
    observed: dict[str, int] = {}
    for counts in assigned.values():
        for name, n in counts.items():
            observed[name] = observed.get(name, 0) + n
    expected = expected_units(assigned, weights)
    if sum(observed.values()) == 0:
        return SampleRatioCheck({}, expected, 0.0, 1.0, False)
    # The expected units already sum to the units observed, so they serve as the weights.
    return sample_ratio_check(observed, expected, alpha)


def means_sample_size(
    difference: float,
    sd: float,
    ratio: float = 1.0,
    alpha: float = ALPHA,
    power: float = 0.8,
) -> float:
    """Control-group size for a two-sided test of two means with a common standard deviation."""
    if sd <= 0:
        raise ValueError(f"sd must be positive, got {sd}")
    return _normal_sample_size(abs(difference) / sd, ratio, alpha, power)


def _normal_sample_size(effect: float, ratio: float, alpha: float, power: float) -> float:
    if effect == 0:
        return math.inf
    if ratio <= 0:
        raise ValueError(f"ratio must be positive, got {ratio}")
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    return float((z / effect) ** 2 * (1 + 1 / ratio))


Metric = Literal["accuracy", "mae"]
METRICS: tuple[Metric, ...] = get_args(Metric)
# The possible range of a difference of each metric: accuracies lie in [0, 1], absolute errors
# in [0, 4] stars.
DIFFERENCE_RANGE: dict[Metric, tuple[float, float]] = {
    "accuracy": (-1.0, 1.0),
    "mae": (-float(STARS[-1] - STARS[0]), float(STARS[-1] - STARS[0])),
}
# Which way is better for each metric.
HIGHER_IS_BETTER: dict[Metric, bool] = {"accuracy": True, "mae": False}
# Mixture standard deviations of the mSPRT: the size of effect each test is tuned to find.
MIXTURE_SD: dict[Metric, float] = {"accuracy": 0.05, "mae": 0.1}


def sequential_sample_size(
    difference: float,
    sd_control: float,
    sd_candidate: float,
    share_candidate: float,
    mixture_sd: float,
    alpha: float = ALPHA,
) -> int | None:
    """Total feedbacks at which the sequential test reaches ``alpha`` if ``difference`` holds.

    Solved on the mixture likelihood ratio with the estimate equal to the assumed difference,
    i.e. roughly the median stopping time; None when the difference is 0 or the share is 0/1.
    """
    if difference == 0 or not 0.0 < share_candidate < 1.0:
        return None
    target = math.log(1 / alpha)

    def log_lr(total: int) -> float:
        variance = sd_control**2 / (total * (1 - share_candidate)) + sd_candidate**2 / (
            total * share_candidate
        )
        if variance <= 0:
            return math.inf
        return float(mixture_log_likelihood_ratio(difference, variance, mixture_sd))

    low, high = 1, 2
    while log_lr(high) < target:
        low, high = high, high * 2
        if high > 10**9:
            return None
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if log_lr(mid) < target else (low, mid)
    return high


def always_valid_half_width(
    variance: FloatArray | float, mixture_sd: float, alpha: float = ALPHA
) -> FloatArray:
    """Half-width of the (1 - alpha) confidence sequence of the normal-mixture SPRT.

    The mSPRT rejects theta0 when its log likelihood ratio at ``difference - theta0`` reaches
    log(1/alpha); solving that for theta0 gives difference +- sqrt(V (V + tau^2) / tau^2 *
    (2 log(1/alpha) + log((V + tau^2) / V))). Infinite where the variance is not positive-finite.
    """
    if mixture_sd <= 0:
        raise ValueError(f"mixture_sd must be positive, got {mixture_sd}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    tau2 = mixture_sd * mixture_sd
    v = np.asarray(variance, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        squared = v * (v + tau2) / tau2 * (2.0 * math.log(1.0 / alpha) + np.log((v + tau2) / v))
    ok = np.isfinite(squared) & (v > 0)
    return np.asarray(np.where(ok, np.sqrt(np.where(ok, squared, 0.0)), np.inf), np.float64)


def always_valid_interval(
    difference: float, variance_of_difference: float, mixture_sd: float, alpha: float = ALPHA
) -> tuple[float, float]:
    """The (1 - alpha) always-valid interval of a difference: the mSPRT's confidence sequence.

    It holds at every look simultaneously, so it can be redrawn after each feedback; its p-value
    twin is ``exp(-mixture_log_likelihood_ratio)`` (the interval excludes 0 exactly when that is
    below alpha).
    """
    half = float(always_valid_half_width(variance_of_difference, mixture_sd, alpha))
    return difference - half, difference + half


def always_valid_p_values(
    difference: FloatArray | float,
    variance: FloatArray | float,
    mixture_sd: float,
    usable: npt.NDArray[np.bool_] | bool = True,
    start: float = 1.0,
) -> FloatArray:
    """Always-valid p-values after each look (last axis): min over looks so far of 1/Lambda.

    Looks that are not ``usable`` (burn-in, no variance) count as p = 1. ``start``: the
    minimum over the looks before these (a sequence read in parts goes on from the last).
    """
    d = np.asarray(difference, dtype=np.float64)
    v = np.asarray(variance, dtype=np.float64)
    ok = np.asarray(usable, dtype=bool) & np.isfinite(v) & (v > 0) & np.isfinite(d)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        log_lr = mixture_log_likelihood_ratio(
            np.where(ok, d, 0.0), np.where(ok, v, 1.0), mixture_sd
        )
    p = np.minimum(np.where(ok, np.exp(-np.maximum(log_lr, 0.0)), 1.0), start)
    if p.ndim == 0:
        return np.asarray(p, dtype=np.float64)
    return np.asarray(np.minimum.accumulate(p, axis=-1), dtype=np.float64)


@dataclass(frozen=True)
class RunningMoments:
    """Per-look statistics of a per-request metric, clustered by unit (arrays over the last axis).

    ``count``: observations so far; ``mean``: their mean (nan before the first);
    ``variance_of_mean``: cluster-robust variance of that mean (inf below two clusters);
    ``clusters``: distinct units so far.
    """

    count: FloatArray
    mean: FloatArray
    variance_of_mean: FloatArray
    clusters: FloatArray


def exclusive_group_cumsum(x: FloatArray, keys: npt.NDArray[np.int64]) -> FloatArray:
    """For each position, the sum of ``x`` at earlier positions with the same key (flat arrays)."""
    order = np.argsort(keys, kind="stable")
    xs = x[order]
    ks = keys[order]
    inclusive = np.cumsum(xs)
    starts = np.ones(ks.size, dtype=bool)
    starts[1:] = ks[1:] != ks[:-1]
    start_index = np.maximum.accumulate(np.where(starts, np.arange(ks.size), 0))
    before_group = inclusive[start_index] - xs[start_index]
    out = np.empty_like(x)
    out[order] = inclusive - xs - before_group
    return out


@dataclass(frozen=True)
class ClusterSums:
    """The running sums behind ``RunningMoments`` (arrays over the last axis): observations,
    their total, and over the clusters k so far sum S_k^2, sum S_k n_k, sum n_k^2 and their
    number, S_k and n_k being cluster k's sum and count. Integer-valued metrics keep every sum
    an integer, exact in float64 whatever order it is added up in."""

    count: FloatArray
    total: FloatArray
    sum_sq: FloatArray
    sum_cross: FloatArray
    count_sq: FloatArray
    clusters: FloatArray

    @classmethod
    def accumulate(
        cls,
        y: FloatArray,
        c: FloatArray,
        prior_sum: FloatArray,
        prior_count: FloatArray,
        start: ClusterSums | None = None,
    ) -> ClusterSums:
        """The sums after each observation: ``y`` its value (0 where left out), ``c`` 1 where
        it counts, ``prior_sum``/``prior_count`` its cluster's sum and count before it;
        ``start`` the sums before the first (none: zero)."""
        # Adding y to cluster k (sum S, count m) changes S^2 by 2Sy + y^2, S*m by S + y(m + 1),
        # m^2 by 2m + 1.
        steps = (
            c,
            y,
            c * (2 * prior_sum * y + y * y),
            c * (prior_sum + y * (prior_count + 1)),
            c * (2 * prior_count + 1),
            c * (prior_count == 0),
        )
        sums = [np.cumsum(step, axis=-1) for step in steps]
        if start is not None:
            sums = [s + before for s, before in zip(sums, start.fields(), strict=True)]
        return cls(*sums)

    def fields(self) -> tuple[FloatArray, ...]:
        return (self.count, self.total, self.sum_sq, self.sum_cross, self.count_sq, self.clusters)

    def last(self) -> ClusterSums:
        """The sums after the last observation (arrays of one)."""
        return ClusterSums(*(f[..., -1:] for f in self.fields()))

    def moments(self) -> RunningMoments:
        """The mean and its cluster-robust variance: by the delta method with the small-sample
        factor K / (K - 1), K / (K - 1) * sum_k (S_k - mean * n_k)^2 / N^2."""
        count, total, clusters = self.count, self.total, self.clusters
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = total / count
            residual = np.maximum(
                self.sum_sq - 2 * mean * self.sum_cross + mean * mean * self.count_sq, 0.0
            )
            variance = clusters / (clusters - 1) * residual / (count * count)
        variance = np.where(clusters >= 2, variance, np.inf)
        return RunningMoments(count, mean, np.asarray(variance, np.float64), clusters)


def running_cluster_moments(
    values: npt.ArrayLike,
    units: npt.ArrayLike,
    include: npt.ArrayLike | None = None,
) -> RunningMoments:
    """Mean of a per-request metric and its cluster-robust variance after every observation.

    ``values`` and ``units`` (integer unit codes) are in arrival order along the last axis; extra
    leading axes are independent experiments (for simulations). ``include`` masks which
    observations belong to the group (e.g. one arm), the others are skipped. The variance of the
    ratio estimator sum(Y_k) / sum(n_k) over clusters k, by the delta method with the small-sample
    factor K / (K - 1), is K / (K - 1) * sum_k (Y_k - mean * n_k)^2 / N^2, kept up to date with
    running sums of Y_k^2, Y_k n_k and n_k^2 (``ClusterSums``).
    """
    x = np.asarray(values, dtype=np.float64)
    u = np.asarray(units, dtype=np.int64)
    if x.shape != u.shape:
        raise ValueError(f"values {x.shape} and units {u.shape} differ in shape")
    mask = np.ones(x.shape, dtype=bool) if include is None else np.asarray(include, dtype=bool)
    if mask.shape != x.shape:
        raise ValueError(f"include {mask.shape} and values {x.shape} differ in shape")
    if x.ndim == 0:
        raise ValueError("values need at least one axis (arrival order)")
    flat_units = u.reshape(-1, x.shape[-1])
    span = int(flat_units.max()) + 1 if flat_units.size else 1
    rows = np.arange(flat_units.shape[0], dtype=np.int64)[:, None]
    keys = (rows * span + flat_units).ravel()
    y = np.where(mask, x, 0.0)
    c = mask.astype(np.float64)
    prior_sum = exclusive_group_cumsum(y.ravel(), keys).reshape(x.shape)
    prior_count = exclusive_group_cumsum(c.ravel(), keys).reshape(x.shape)
    return ClusterSums.accumulate(y, c, prior_sum, prior_count).moments()


def unit_codes(units: Sequence[str]) -> npt.NDArray[np.int64]:
    """Integer codes for unit ids (the form ``running_cluster_moments`` takes)."""
    if not units:
        return np.zeros(0, dtype=np.int64)
    _, codes = np.unique(np.asarray(list(units), dtype=str), return_inverse=True)
    return np.asarray(codes, dtype=np.int64).reshape(-1)


def arm_variance(moments: RunningMoments, binary: bool) -> FloatArray:
    """The cluster-robust variance of a group's mean; for 0/1 metrics at least that of a
    proportion of (successes + 0.5) / (n + 1), so that an arm with no failures yet is not taken
    to have a rate of exactly 0 with no uncertainty."""
    v = moments.variance_of_mean
    if not binary:
        return v
    with np.errstate(divide="ignore", invalid="ignore"):
        smoothed = (moments.mean * moments.count + 0.5) / (moments.count + 1)
        floor = smoothed * (1 - smoothed) / moments.count
    return np.asarray(np.where(moments.count > 0, np.maximum(v, floor), np.inf), np.float64)


@dataclass(frozen=True)
class SequentialComparison:
    """Candidate minus control after every look (arrays over the last axis), clustered by unit.

    ``p_value`` is always valid (running minimum) against "the difference equals ``null``";
    ``usable`` is False during the burn-in (fewer than ``burn_in`` units in an arm).
    """

    control: RunningMoments
    candidate: RunningMoments
    difference: FloatArray
    variance: FloatArray
    p_value: FloatArray
    usable: npt.NDArray[np.bool_]


def sequential_comparison(
    is_candidate: npt.ArrayLike,
    values: npt.ArrayLike,
    units: npt.ArrayLike,
    mixture_sd: float,
    *,
    null: float = 0.0,
    binary: bool = False,
    include: npt.ArrayLike | None = None,
    burn_in: int = SEQUENTIAL_BURN_IN,
) -> SequentialComparison:
    """The mSPRT on a per-request metric with the cluster-robust variance of each arm's mean.

    ``binary`` marks 0/1 metrics (see ``arm_variance``).
    """
    arm = np.asarray(is_candidate, dtype=bool)
    mask = np.ones(arm.shape, dtype=bool) if include is None else np.asarray(include, dtype=bool)
    code = np.asarray(units, dtype=np.int64)
    x = np.asarray(values, dtype=np.float64)
    control = running_cluster_moments(x, code, mask & ~arm)
    candidate = running_cluster_moments(x, code, mask & arm)
    return compare_arms(control, candidate, mixture_sd, null=null, binary=binary, burn_in=burn_in)


def compare_arms(
    control: RunningMoments,
    candidate: RunningMoments,
    mixture_sd: float,
    *,
    null: float = 0.0,
    binary: bool = False,
    burn_in: int = SEQUENTIAL_BURN_IN,
    start: float = 1.0,
) -> SequentialComparison:
    """``sequential_comparison`` from each arm's running moments; ``start`` is the running
    minimum of the p-value before these looks (1: none)."""
    variance = arm_variance(control, binary) + arm_variance(candidate, binary)
    difference = np.asarray(candidate.mean - control.mean, dtype=np.float64)
    usable = (control.clusters >= burn_in) & (candidate.clusters >= burn_in) & np.isfinite(variance)
    p_value = always_valid_p_values(difference - null, variance, mixture_sd, usable, start)
    return SequentialComparison(control, candidate, difference, variance, p_value, usable)


@dataclass(frozen=True)
class PairedSequence:
    """The mean paired difference after every look (arrays over the last axis), clustered by
    unit; ``p_value`` is always valid against "the mean difference is 0"."""

    moments: RunningMoments
    variance: FloatArray
    p_value: FloatArray
    usable: npt.NDArray[np.bool_]


def paired_comparison(
    differences: npt.ArrayLike,
    units: npt.ArrayLike,
    mixture_sd: float,
    *,
    binary: bool = False,
    include: npt.ArrayLike | None = None,
    burn_in: int = SEQUENTIAL_BURN_IN,
) -> PairedSequence:
    """The mSPRT on paired differences: two versions graded by the same truth on the same
    review, so what the review itself makes hard cancels and only where they disagree counts.

    One sample (the mean difference) with the cluster-robust variance of its mean, the user
    being the unit. ``binary`` marks differences of 0/1 metrics: a run of equal differences
    (every disagreement won by one side) has no spread yet, so their variance is kept at least
    that of the same differences with one more, neutral pair (difference 0, squared 1/2).
    """
    d = np.asarray(differences, dtype=np.float64)
    mask = np.ones(d.shape, dtype=bool) if include is None else np.asarray(include, dtype=bool)
    moments = running_cluster_moments(d, units, mask)
    squares = np.cumsum(np.where(mask, d * d, 0.0), axis=-1)
    return paired_test(moments, squares, mixture_sd, binary=binary, burn_in=burn_in)


def paired_test(
    moments: RunningMoments,
    squares: FloatArray,
    mixture_sd: float,
    *,
    binary: bool = False,
    burn_in: int = SEQUENTIAL_BURN_IN,
    start: float = 1.0,
) -> PairedSequence:
    """``paired_comparison`` from the differences' running moments and running sum of squares;
    ``start`` is the running minimum of the p-value before these looks (1: none)."""
    variance = moments.variance_of_mean
    if binary:
        n = moments.count
        with np.errstate(divide="ignore", invalid="ignore"):
            smoothed_mean = moments.mean * n / (n + 1)
            floor = ((squares + 0.5) / (n + 1) - smoothed_mean**2) / n
        variance = np.where(n > 0, np.maximum(variance, floor), np.inf)
    usable = (moments.clusters >= burn_in) & np.isfinite(variance)
    p_value = always_valid_p_values(moments.mean, variance, mixture_sd, usable, start)
    return PairedSequence(moments, np.asarray(variance, np.float64), p_value, usable)


def holm(p_values: Mapping[str, float]) -> dict[str, float]:
    """Holm-adjusted p-values (step-down, family-wise error at alpha), by name.

    The same numbers as statsmodels' ``multipletests(method="holm")`` (the tests compare them),
    written out here because statsmodels would bring pandas and patsy into the gateway image,
    which otherwise needs neither: the i-th smallest of m p-values is multiplied by m - i, the
    running maximum keeps the adjusted values in order, and 1 caps them."""
    if not p_values:
        return {}
    names = list(p_values)
    raw = np.array([p_values[n] for n in names], dtype=np.float64)
    order = np.argsort(raw, kind="stable")
    scaled = raw[order] * np.arange(len(raw), 0, -1)
    adjusted = np.empty_like(raw)
    adjusted[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return {name: float(p) for name, p in zip(names, adjusted, strict=True)}
