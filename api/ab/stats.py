"""Statistics for the A/B report: intervals, tests, sample-ratio mismatch, power, a verdict.

Pure functions on numbers (numpy/scipy), no I/O, so each is tested against scipy/statsmodels and
by simulation. Two kinds of p-value sit side by side:

* ``fixed``: the classical two-proportion z-test (accuracy) and Welch's t-test (MAE). Valid only
  if the sample size was fixed in advance and the data is looked at once.
* ``sequential``: an always-valid p-value from the normal-mixture sequential probability ratio
  test (mSPRT; Johari, Pekelis & Walsh, "Always valid inference", 2017). It may be watched after
  every observation and the experiment stopped whenever it drops below alpha without inflating
  the false-positive rate. The verdict uses this one.

The autopilot (``api.ab.assessment``, ``api.ab.policy``) adds three pieces:

* ``always_valid_interval``: the mSPRT inverted into a confidence sequence, the set of
  differences its test would not reject; it covers the truth at every look at once, so the
  interval may be watched after every feedback like the p-value.
* ``running_cluster_moments`` / ``cluster_mean_variance``: metrics are per request but the
  randomisation unit is the user, and one user's requests are correlated (same writing style,
  same product). Treating them as independent understates the variance of a mean by the design
  effect 1 + (m - 1) * rho and makes every test too eager. The cluster-robust (delta method,
  ratio-of-sums) variance sums residuals per user first; it equals statsmodels' cluster-robust
  OLS variance of an intercept.
* ``holm``: the verdict draws on one test per candidate (and metric); Holm's step-down keeps
  the chance of any false "better" at alpha across them and is never weaker than Bonferroni.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy import stats

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
class TestResult:
    """A two-sample comparison: the difference (candidate - control) and its p-value."""

    difference: float
    p_value: float


@dataclass(frozen=True)
class SampleRatioCheck:
    """Chi-square goodness of fit of observed assignment counts against the configured weights."""

    observed: dict[str, int]
    expected: dict[str, float]
    chi2: float
    p_value: float
    mismatch: bool


def _z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return float(stats.norm.ppf(0.5 + confidence / 2.0))


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> Estimate:
    """Proportion with the Wilson score interval (good coverage for small n and p near 0/1)."""
    if n <= 0:
        raise ValueError(f"need at least one observation, got n={n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in 0..{n}, got {successes}")
    z = _z(confidence)
    p = successes / n
    denominator = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return Estimate(value=p, low=max(0.0, centre - half), high=min(1.0, centre + half))


def mean_interval(values: Sequence[float] | FloatArray, confidence: float = 0.95) -> Estimate:
    """Mean with Student's t interval (the interval is None below two observations)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("need at least one observation")
    mean = float(x.mean())
    if x.size < 2:
        return Estimate(value=mean, low=None, high=None)
    sem = float(x.std(ddof=1)) / math.sqrt(x.size)
    half = float(stats.t.ppf(0.5 + confidence / 2.0, x.size - 1)) * sem
    return Estimate(value=mean, low=mean - half, high=mean + half)


def quantile_interval(
    values: Sequence[float] | FloatArray, q: float, confidence: float = 0.95
) -> Estimate:
    """A quantile with a distribution-free interval from order statistics.

    The number of observations below the true q-quantile is Binomial(n, q), so the order
    statistics at that binomial's alpha/2 and 1 - alpha/2 quantiles bracket it with at least the
    requested coverage; the bounds are None where n is too small to reach them.
    """
    if not 0.0 < q < 1.0:
        raise ValueError(f"q must be in (0, 1), got {q}")
    x = np.sort(np.asarray(values, dtype=np.float64))
    n = x.size
    if n == 0:
        raise ValueError("need at least one observation")
    tail = (1.0 - confidence) / 2.0
    # 1-based ranks l and u with P(l <= #below <= u - 1) >= confidence.
    lower_rank = int(stats.binom.ppf(tail, n, q))
    upper_rank = int(stats.binom.ppf(1.0 - tail, n, q)) + 1
    low = float(x[lower_rank - 1]) if lower_rank >= 1 else None
    high = float(x[upper_rank - 1]) if upper_rank <= n else None
    return Estimate(value=float(np.quantile(x, q)), low=low, high=high)


def two_proportion_ztest(
    successes_control: int, n_control: int, successes_candidate: int, n_candidate: int
) -> TestResult:
    """Fixed-horizon two-sided z-test for a difference of proportions (pooled variance)."""
    if n_control <= 0 or n_candidate <= 0:
        raise ValueError("both groups need at least one observation")
    p_control = successes_control / n_control
    p_candidate = successes_candidate / n_candidate
    pooled = (successes_control + successes_candidate) / (n_control + n_candidate)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_control + 1 / n_candidate))
    difference = p_candidate - p_control
    if se == 0.0:
        return TestResult(difference=difference, p_value=1.0)
    z = difference / se
    return TestResult(difference=difference, p_value=float(2 * stats.norm.sf(abs(z))))


def welch_ttest(
    control: Sequence[float] | FloatArray, candidate: Sequence[float] | FloatArray
) -> TestResult:
    """Fixed-horizon two-sided Welch t-test for a difference of means (unequal variances)."""
    a = np.asarray(control, dtype=np.float64)
    b = np.asarray(candidate, dtype=np.float64)
    if a.size < 2 or b.size < 2:
        raise ValueError("Welch's t-test needs at least two observations per group")
    difference = float(b.mean() - a.mean())
    var_a = float(a.var(ddof=1)) / a.size
    var_b = float(b.var(ddof=1)) / b.size
    if var_a + var_b == 0.0:
        return TestResult(difference=difference, p_value=1.0 if difference == 0.0 else 0.0)
    t = difference / math.sqrt(var_a + var_b)
    dof = (var_a + var_b) ** 2 / (var_a**2 / (a.size - 1) + var_b**2 / (b.size - 1))
    return TestResult(difference=difference, p_value=float(2 * stats.t.sf(abs(t), dof)))


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


def sequential_p_values(
    is_candidate: npt.ArrayLike,
    values: npt.ArrayLike,
    mixture_sd: float,
    burn_in: int = SEQUENTIAL_BURN_IN,
) -> FloatArray:
    """Always-valid p-values after each observation, for a difference of means.

    ``is_candidate`` and ``values`` are observations in arrival order along the last axis (extra
    leading axes are independent experiments, which keeps simulations vectorised). The p-value
    after observation t is min(1, min over s <= t of 1/Lambda_s): a running minimum, so it only
    ever goes down and may be read at any time.
    """
    arm = np.asarray(is_candidate, dtype=bool)
    x = np.asarray(values, dtype=np.float64)
    if arm.shape != x.shape:
        raise ValueError(f"arms {arm.shape} and values {x.shape} differ in shape")
    if mixture_sd <= 0:
        raise ValueError(f"mixture_sd must be positive, got {mixture_sd}")
    one = np.ones_like(x)
    n_b = np.cumsum(arm * one, axis=-1)
    n_a = np.cumsum(~arm * one, axis=-1)
    sum_b = np.cumsum(np.where(arm, x, 0.0), axis=-1)
    sum_a = np.cumsum(np.where(arm, 0.0, x), axis=-1)
    sq_b = np.cumsum(np.where(arm, x * x, 0.0), axis=-1)
    sq_a = np.cumsum(np.where(arm, 0.0, x * x), axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_a, mean_b = sum_a / n_a, sum_b / n_b
        var_a = np.maximum(sq_a / n_a - mean_a * mean_a, 0.0) * n_a / (n_a - 1)
        var_b = np.maximum(sq_b / n_b - mean_b * mean_b, 0.0) * n_b / (n_b - 1)
        # An arm that is constant so far (all right, all wrong) has no variance of its own: the
        # variance of all observations (its value under H0) stands in for it.
        n = n_a + n_b
        mean = (sum_a + sum_b) / n
        var_all = np.maximum((sq_a + sq_b) / n - mean * mean, 0.0) * n / (n - 1)
        var_a = np.where(var_a > 0, var_a, var_all)
        var_b = np.where(var_b > 0, var_b, var_all)
        variance = var_a / n_a + var_b / n_b
        usable = (n_a >= burn_in) & (n_b >= burn_in) & (variance > 0)
        log_lr = mixture_log_likelihood_ratio(
            np.where(usable, mean_b - mean_a, 0.0), np.where(usable, variance, 1.0), mixture_sd
        )
    p = np.where(usable, np.exp(-np.maximum(log_lr, 0.0)), 1.0)
    return np.asarray(np.minimum.accumulate(p, axis=-1), dtype=np.float64)


def sequential_test(
    is_candidate: Sequence[bool] | npt.NDArray[np.bool_],
    values: Sequence[float] | FloatArray,
    mixture_sd: float,
    burn_in: int = SEQUENTIAL_BURN_IN,
) -> TestResult:
    """The always-valid p-value over all observations so far (in arrival order)."""
    arm = np.asarray(is_candidate, dtype=bool)
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return TestResult(difference=0.0, p_value=1.0)
    p = sequential_p_values(arm, x, mixture_sd, burn_in)
    difference = float(x[arm].mean() - x[~arm].mean()) if arm.any() and (~arm).any() else 0.0
    return TestResult(difference=difference, p_value=float(p[-1]))


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


def proportions_sample_size(
    p_control: float,
    p_candidate: float,
    ratio: float = 1.0,
    alpha: float = ALPHA,
    power: float = 0.8,
) -> float:
    """Control-group size for a two-sided test of two proportions (Cohen's h, normal approx.).

    ``ratio`` is candidate size / control size; the candidate group needs ``ratio`` times the
    returned number.
    """
    effect = abs(2 * math.asin(math.sqrt(p_candidate)) - 2 * math.asin(math.sqrt(p_control)))
    return _normal_sample_size(effect, ratio, alpha, power)


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
# Which way is better for each metric.
HIGHER_IS_BETTER: dict[Metric, bool] = {"accuracy": True, "mae": False}
# Mixture standard deviations of the mSPRT: the size of effect each test is tuned to find.
MIXTURE_SD: dict[Metric, float] = {"accuracy": 0.05, "mae": 0.1}


@dataclass(frozen=True)
class Comparison:
    """One metric compared between a candidate and the control, as the verdict needs it."""

    candidate: str
    metric: Metric
    difference: float
    p_value: float
    feedback_needed: int | None


def verdict(control: str, comparisons: Sequence[Comparison], srm: SampleRatioCheck | None) -> str:
    """A plain-words summary a product owner can act on."""
    if srm is not None and srm.mismatch:
        return (
            f"sample ratio mismatch ({_format_p(srm.p_value)}): the traffic split does not "
            "match the weights, so the comparison cannot be trusted; check the assignment first"
        )
    if not comparisons:
        return f"only the control {control} has traffic: nothing to compare yet"
    sentences: list[str] = []
    for candidate in dict.fromkeys(c.candidate for c in comparisons):
        mine = [c for c in comparisons if c.candidate == candidate]
        better = [c for c in mine if c.p_value < ALPHA and _improves(c)]
        worse = [c for c in mine if c.p_value < ALPHA and not _improves(c)]
        if better and not worse:
            sentences.append(f"{candidate} is better than {control} on " + _list(better))
        elif worse and not better:
            sentences.append(f"{candidate} is worse than {control} on " + _list(worse))
        elif better and worse:
            sentences.append(
                f"{candidate} vs {control} is mixed: better on {_list(better)}, "
                f"worse on {_list(worse)}"
            )
        else:
            needed = [c.feedback_needed for c in mine if c.feedback_needed is not None]
            more = f": need ~{min(needed)} more feedbacks" if needed else ""
            sentences.append(f"{candidate} vs {control}: not enough data{more}")
    return "; ".join(sentences)


def _improves(comparison: Comparison) -> bool:
    return (comparison.difference > 0) == HIGHER_IS_BETTER[comparison.metric]


def _list(comparisons: Sequence[Comparison]) -> str:
    names = {"accuracy": "accuracy", "mae": "MAE"}
    return ", ".join(f"{names[c.metric]} ({_format_p(c.p_value)})" for c in comparisons)


def _format_p(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


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
) -> FloatArray:
    """Always-valid p-values after each look (last axis): min over looks so far of 1/Lambda.

    Looks that are not ``usable`` (burn-in, no variance) count as p = 1.
    """
    d = np.asarray(difference, dtype=np.float64)
    v = np.asarray(variance, dtype=np.float64)
    ok = np.asarray(usable, dtype=bool) & np.isfinite(v) & (v > 0) & np.isfinite(d)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        log_lr = mixture_log_likelihood_ratio(
            np.where(ok, d, 0.0), np.where(ok, v, 1.0), mixture_sd
        )
    p = np.where(ok, np.exp(-np.maximum(log_lr, 0.0)), 1.0)
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


def _exclusive_group_cumsum(x: FloatArray, keys: npt.NDArray[np.int64]) -> FloatArray:
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
    running sums of Y_k^2, Y_k n_k and n_k^2.
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
    prior_sum = _exclusive_group_cumsum(y.ravel(), keys).reshape(x.shape)
    prior_count = _exclusive_group_cumsum(c.ravel(), keys).reshape(x.shape)
    # Adding y to cluster k (sum S, count m) changes S^2 by 2Sy + y^2, S*m by S + y(m + 1), m^2
    # by 2m + 1.
    count = np.cumsum(c, axis=-1)
    total = np.cumsum(y, axis=-1)
    sum_sq = np.cumsum(c * (2 * prior_sum * y + y * y), axis=-1)
    sum_cross = np.cumsum(c * (prior_sum + y * (prior_count + 1)), axis=-1)
    count_sq = np.cumsum(c * (2 * prior_count + 1), axis=-1)
    clusters = np.cumsum(c * (prior_count == 0), axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = total / count
        residual = np.maximum(sum_sq - 2 * mean * sum_cross + mean * mean * count_sq, 0.0)
        variance = clusters / (clusters - 1) * residual / (count * count)
    variance = np.where(clusters >= 2, variance, np.inf)
    return RunningMoments(count, mean, np.asarray(variance, np.float64), clusters)


def unit_codes(units: Sequence[str]) -> npt.NDArray[np.int64]:
    """Integer codes for unit ids (the form ``running_cluster_moments`` takes)."""
    if not units:
        return np.zeros(0, dtype=np.int64)
    _, codes = np.unique(np.asarray(list(units), dtype=str), return_inverse=True)
    return np.asarray(codes, dtype=np.int64).reshape(-1)


def cluster_mean_variance(
    values: Sequence[float] | FloatArray, units: Sequence[str]
) -> tuple[float, float, int]:
    """Mean of per-request values and its variance with the user as the randomisation unit.

    Returns (mean, variance_of_mean, clusters); the variance is inf below two clusters.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.size != len(units):
        raise ValueError(f"{x.size} values but {len(units)} units")
    if x.size == 0:
        raise ValueError("need at least one observation")
    moments = running_cluster_moments(x, unit_codes(units))
    return (
        float(moments.mean[-1]),
        float(moments.variance_of_mean[-1]),
        int(moments.clusters[-1]),
    )


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
    variance = arm_variance(control, binary) + arm_variance(candidate, binary)
    difference = np.asarray(candidate.mean - control.mean, dtype=np.float64)
    usable = (control.clusters >= burn_in) & (candidate.clusters >= burn_in) & np.isfinite(variance)
    p_value = always_valid_p_values(difference - null, variance, mixture_sd, usable)
    return SequentialComparison(control, candidate, difference, variance, p_value, usable)


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
