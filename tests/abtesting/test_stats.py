"""The A/B statistics against scipy/statsmodels on fixed inputs, and by simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, stats
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import proportion_confint

from abtesting.stats import (
    always_valid_half_width,
    always_valid_interval,
    assignment_check,
    expected_units,
    holm,
    mean_interval,
    means_sample_size,
    mixture_log_likelihood_ratio,
    quantile_interval,
    running_cluster_moments,
    sample_ratio_check,
    sequential_comparison,
    sequential_sample_size,
    unit_codes,
    wilson_interval,
)


@pytest.mark.parametrize(("successes", "n"), [(0, 10), (3, 10), (10, 10), (412, 600), (1, 2)])
def test_wilson_interval_matches_statsmodels(successes: int, n: int) -> None:
    low, high = proportion_confint(successes, n, alpha=0.05, method="wilson")
    got = wilson_interval(successes, n)
    assert got.value == pytest.approx(successes / n)
    assert got.low == pytest.approx(low, abs=1e-12)
    assert got.high == pytest.approx(high, abs=1e-12)


def test_wilson_interval_rejects_impossible_counts() -> None:
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(11, 10)
    with pytest.raises(ValueError, match="at least one"):
        wilson_interval(0, 0)


def test_mean_interval_matches_scipy_t_interval() -> None:
    values = [0.0, 1.0, 0.0, 2.0, 1.0, 0.0, 0.0, 3.0, 1.0, 0.0]
    low, high = stats.t.interval(
        0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values)
    )
    got = mean_interval(values)
    assert got.value == pytest.approx(0.8)
    assert got.low == pytest.approx(low)
    assert got.high == pytest.approx(high)


def test_mean_interval_of_one_value_has_no_bounds() -> None:
    assert mean_interval([2.0]).low is None


def test_quantile_interval_covers_true_quantile() -> None:
    # Exponential(1): the true p95 is -log(0.05); the interval must cover it >= ~95% of the time.
    rng = np.random.default_rng(1)
    truth = -math.log(0.05)
    covered = 0
    trials = 1000
    for sample in rng.exponential(size=(trials, 200)):
        est = quantile_interval(sample, 0.95)
        assert est.low is not None and est.high is not None
        assert est.low <= est.value <= est.high
        covered += est.low <= truth <= est.high
    assert covered / trials >= 0.93


def test_quantile_interval_is_open_when_sample_is_too_small() -> None:
    est = quantile_interval([10.0, 20.0, 30.0], 0.95)
    assert est.value == pytest.approx(np.quantile([10.0, 20.0, 30.0], 0.95))
    assert est.high is None


def test_mixture_likelihood_ratio_matches_numerical_integration() -> None:
    # Lambda = integral N(d; theta, V) N(theta; 0, tau^2) dtheta / N(d; 0, V).
    d, v, tau = 0.07, 0.0009, 0.05
    numerator, _ = integrate.quad(
        lambda theta: stats.norm.pdf(d, theta, math.sqrt(v)) * stats.norm.pdf(theta, 0, tau),
        -1,
        1,
        points=[0.0, d],
    )
    expected = numerator / stats.norm.pdf(d, 0, math.sqrt(v))
    assert float(mixture_log_likelihood_ratio(d, v, tau)) == pytest.approx(math.log(expected))


def _per_request(arms: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Always-valid p-values after each observation, every observation its own unit."""
    units = np.broadcast_to(np.arange(arms.shape[-1]), arms.shape)
    return sequential_comparison(arms, values, units, 0.05, binary=True).p_value


def test_sequential_p_values_only_go_down_and_detect_a_real_difference() -> None:
    rng = np.random.default_rng(2)
    arms = rng.random((200, 2000)) < 0.5
    correct = rng.random((200, 2000)) < np.where(arms, 0.78, 0.65)
    p = _per_request(arms, correct)
    assert (np.diff(p, axis=-1) <= 0).all()
    assert (p[:, -1] < 0.05).mean() > 0.9


def test_sequential_and_fixed_horizon_under_continuous_monitoring() -> None:
    """A/A experiments peeked at after every 50 feedbacks: only the sequential test holds 5%."""
    rng = np.random.default_rng(3)
    experiments, horizon = 1000, 2000
    arms = rng.random((experiments, horizon)) < 0.5
    correct = (rng.random((experiments, horizon)) < 0.7).astype(np.float64)
    looks = np.arange(49, horizon, 50)

    sequential = _per_request(arms, correct)
    sequential_rate = float((sequential[:, looks] < 0.05).any(axis=1).mean())

    n_b = np.cumsum(arms, axis=1)[:, looks]
    n_a = np.cumsum(~arms, axis=1)[:, looks]
    s_b = np.cumsum(correct * arms, axis=1)[:, looks]
    s_a = np.cumsum(correct * ~arms, axis=1)[:, looks]
    pooled = (s_a + s_b) / (n_a + n_b)
    z = (s_b / n_b - s_a / n_a) / np.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    naive_rate = float((2 * stats.norm.sf(np.abs(z)) < 0.05).any(axis=1).mean())

    print(
        f"A/A false-positive rate over {experiments} experiments, {len(looks)} looks: "
        f"sequential {sequential_rate:.3f}, naive fixed-horizon {naive_rate:.3f}"
    )
    assert sequential_rate <= 0.05
    assert naive_rate >= 0.15


def test_sample_ratio_check_matches_scipy_chisquare() -> None:
    observed = {"a": 5210, "b": 4790}
    check = sample_ratio_check(observed, {"a": 1, "b": 1})
    expected = stats.chisquare([5210, 4790], [5000, 5000])
    assert check.p_value == pytest.approx(expected.pvalue)
    assert check.mismatch  # p ~ 2.7e-5
    fine = sample_ratio_check({"a": 7010, "b": 2990}, {"a": 0.7, "b": 0.3})
    assert not fine.mismatch
    assert fine.expected == {"a": pytest.approx(7000), "b": pytest.approx(3000)}


def test_sample_ratio_check_flags_traffic_to_a_zero_weight_variant() -> None:
    assert sample_ratio_check({"a": 100, "b": 3}, {"a": 1, "b": 0}).mismatch
    assert not sample_ratio_check({"a": 100, "b": 0}, {"a": 1, "b": 0}).mismatch
    with pytest.raises(ValueError, match="no weight"):
        sample_ratio_check({"c": 1}, {"a": 1})


def test_assignment_check_takes_each_revision_with_its_own_weights() -> None:
    # 1000 sticky users under 90/10, the same users again after a ramp to 50/50: the 400 whose
    # point lies in [0.5, 0.9) moved to B. Per revision the split is exact.
    assigned = {1: {"A": 900, "B": 100}, 2: {"A": 500, "B": 500}}
    weights = {1: {"A": 0.9, "B": 0.1}, 2: {"A": 0.5, "B": 0.5}}
    assert expected_units(assigned, weights) == {"A": pytest.approx(1400), "B": pytest.approx(600)}
    check = assignment_check(assigned, weights)
    assert check.observed == {"A": 1400, "B": 600}
    assert check.chi2 == pytest.approx(0.0, abs=1e-9) and check.p_value == pytest.approx(1.0)
    assert not check.mismatch
    # Against the weights in force alone the ramp itself would read as a broken split.
    assert sample_ratio_check(check.observed, weights[2]).mismatch
    # B short of units in the second revision: 450 of 950 (expected 900 + 475 and 100 + 475),
    # chi-square on the summed counts, p ~ 0.2; 350 of 850 is a mismatch (p ~ 1e-4).
    short = assignment_check({1: {"A": 900, "B": 100}, 2: {"A": 500, "B": 450}}, weights)
    assert short.expected == {"A": pytest.approx(1375), "B": pytest.approx(575)}
    assert short.p_value == pytest.approx(stats.chisquare([1400, 550], [1375, 575]).pvalue)
    assert not short.mismatch
    assert assignment_check({1: {"A": 900, "B": 100}, 2: {"A": 500, "B": 350}}, weights).mismatch


def test_assignment_check_lists_every_variant_and_flags_units_without_a_weight() -> None:
    weights = {1: {"A": 1.0, "B": 0.0}, 2: {"A": 0.5, "B": 0.5, "C": 0.0}}
    empty = assignment_check({}, weights)
    assert (empty.observed, empty.expected, empty.mismatch) == ({}, {"A": 0, "B": 0, "C": 0}, False)
    assert list(empty.expected) == ["A", "B", "C"]  # the latest revision's order
    assert not assignment_check({1: {"A": 40}, 2: {"A": 50, "B": 50}}, weights).mismatch
    # Units under a zero weight, or in a variant the revision does not have, break the split.
    assert assignment_check({1: {"A": 40, "B": 1}}, weights).mismatch
    stray = assignment_check({2: {"A": 50, "B": 50, "D": 1}}, weights)
    assert stray.mismatch and stray.expected["D"] == 0.0


def test_sample_sizes_match_statsmodels_power() -> None:
    # statsmodels also counts the (negligible) power of the wrong-sided tail: equal to ~1e-5.
    power = NormalIndPower()
    expected_means = power.solve_power(effect_size=0.1 / 0.8, alpha=0.05, power=0.8, ratio=1.0)
    assert means_sample_size(0.1, 0.8) == pytest.approx(expected_means, rel=1e-4)


def test_sequential_sample_size_is_about_the_median_stopping_time() -> None:
    total = sequential_sample_size(0.1, 0.46, 0.40, 0.5, mixture_sd=0.05)
    assert total is not None
    rng = np.random.default_rng(4)
    arms = rng.random((400, total)) < 0.5
    correct = rng.random((400, total)) < np.where(arms, 0.8, 0.7)
    stopped = (_per_request(arms, correct)[:, -1] < 0.05).mean()
    assert 0.3 <= stopped <= 0.85
    assert sequential_sample_size(0.0, 0.4, 0.4, 0.5, mixture_sd=0.05) is None


def cluster_mean_variance(values: np.ndarray, units: list[str]) -> tuple[float, float, int]:
    """Mean, cluster-robust variance of the mean and clusters after the last observation."""
    moments = running_cluster_moments(values, unit_codes(units))
    return (
        float(moments.mean[-1]),
        float(moments.variance_of_mean[-1]),
        int(moments.clusters[-1]),
    )


def test_cluster_mean_variance_matches_statsmodels_cluster_robust_ols() -> None:
    import statsmodels.api as sm

    rng = np.random.default_rng(5)
    units = rng.integers(0, 40, 300)
    values = rng.normal(size=300) + 0.3 * units
    mean, variance, clusters = cluster_mean_variance(values, [f"u{u}" for u in units])
    fit = sm.OLS(values, np.ones_like(values)).fit(cov_type="cluster", cov_kwds={"groups": units})
    assert mean == pytest.approx(fit.params[0])
    assert variance == pytest.approx(fit.bse[0] ** 2)
    assert clusters == len(set(units))


def test_running_cluster_moments_equal_the_moments_of_each_prefix() -> None:
    rng = np.random.default_rng(6)
    units = rng.integers(0, 15, 80)
    values = rng.random(80)
    running = running_cluster_moments(values, units)
    for n in (5, 33, 80):
        mean, variance, clusters = cluster_mean_variance(values[:n], [str(u) for u in units[:n]])
        assert running.mean[n - 1] == pytest.approx(mean)
        assert running.variance_of_mean[n - 1] == pytest.approx(variance)
        assert running.clusters[n - 1] == clusters


def test_naive_variance_understates_the_variance_of_a_mean_when_users_repeat() -> None:
    # 2,000 simulated samples of 100 users x 10 correlated requests (each user has their own
    # accuracy): the true variance of the mean is its spread across samples.
    rng = np.random.default_rng(7)
    samples, users, per_user = 2000, 100, 10
    user_rate = np.clip(0.6 + 0.2 * rng.standard_normal((samples, users, 1)), 0, 1)
    values = (rng.random((samples, users, per_user)) < user_rate).reshape(samples, -1)
    units = np.repeat(np.arange(users), per_user)
    true_variance = float(values.mean(axis=1).var(ddof=1))
    naive = float(np.mean(values.var(axis=1, ddof=1) / values.shape[1]))
    cluster = float(
        np.mean(
            running_cluster_moments(values, np.broadcast_to(units, values.shape)).variance_of_mean[
                :, -1
            ]
        )
    )
    print(
        f"\nvariance of a mean accuracy, {users} users x {per_user} requests: true "
        f"{true_variance:.2e}, naive per-request {naive:.2e} ({naive / true_variance:.2f}x), "
        f"user-clustered {cluster:.2e} ({cluster / true_variance:.2f}x)"
    )
    assert naive < 0.6 * true_variance
    assert cluster == pytest.approx(true_variance, rel=0.1)


def test_always_valid_interval_excludes_zero_exactly_when_the_msprt_rejects() -> None:
    for difference, variance in [(0.1, 0.001), (0.05, 0.001), (-0.2, 0.004), (0.0, 0.01)]:
        low, high = always_valid_interval(difference, variance, 0.05)
        p = float(np.exp(-mixture_log_likelihood_ratio(difference, variance, 0.05)))
        assert (low > 0 or high < 0) == (p < 0.05)
        assert low < difference < high


def test_always_valid_interval_is_wider_than_the_fixed_horizon_one_and_open_without_data() -> None:
    _, high = always_valid_interval(0.0, 0.0004, 0.05)
    assert high > stats.norm.ppf(0.975) * 0.02
    assert always_valid_interval(0.1, 0.0, 0.05) == (-math.inf, math.inf)


def test_always_valid_interval_covers_the_truth_at_every_look_in_95_percent_of_runs() -> None:
    # 1,000 runs of 2,000 looks: the interval must hold at all looks at once, not just each one.
    rng = np.random.default_rng(8)
    x = rng.normal(0.3, 1.0, size=(1000, 2000))
    n = np.arange(1, 2001)
    mean = np.cumsum(x, axis=1) / n
    half = always_valid_half_width(1.0 / n, 0.2)
    ever_missed = (np.abs(mean - 0.3) > half)[:, 20:].any(axis=1)
    assert ever_missed.mean() <= 0.05


def test_holm_matches_statsmodels() -> None:
    from statsmodels.stats.multitest import multipletests

    p = {"B/accuracy": 0.01, "C/accuracy": 0.04, "B/mae": 0.03, "C/mae": 0.5}
    expected = multipletests(list(p.values()), method="holm")[1]
    assert list(holm(p).values()) == pytest.approx(list(expected))
    assert holm({"B": 0.01, "C": 0.04}) == {"B": 0.02, "C": 0.04}
    assert holm({}) == {}
    # Random families, ties and values that the cap at 1 clips included.
    rng = np.random.default_rng(5)
    for size in (1, 2, 3, 7, 20):
        for _ in range(50):
            raw = rng.choice([rng.random(), 0.02, 0.5], size=size) * rng.random(size)
            family = {f"c{i}": float(v) for i, v in enumerate(raw)}
            expected = multipletests(raw, method="holm")[1]
            assert list(holm(family).values()) == pytest.approx(list(expected), abs=1e-12)


def test_sequential_comparison_with_clusters_is_less_eager_than_per_request() -> None:
    # A/A, 60 users with their own accuracy sharing 1,500 requests: treating requests as
    # independent makes the mSPRT cry wolf; the user-clustered variance keeps it under alpha.
    rng = np.random.default_rng(9)
    runs, users, t = 300, 60, 1500
    user = rng.integers(0, users, size=(runs, t))
    rate = np.clip(0.6 + 0.25 * rng.standard_normal((runs, users)), 0, 1)
    values = (rng.random((runs, t)) < np.take_along_axis(rate, user, 1)).astype(float)
    arm = np.take_along_axis(rng.random((runs, users)) < 0.5, user, 1)
    clustered = sequential_comparison(arm, values, user, 0.05, binary=True)
    naive = _per_request(arm, values)
    clustered_fp = float((clustered.p_value[:, -1] < 0.05).mean())
    naive_fp = float((naive[:, -1] < 0.05).mean())
    print(f"\nA/A false positives, clustered mSPRT {clustered_fp:.1%}, per-request {naive_fp:.1%}")
    assert clustered_fp <= 0.05
    assert naive_fp > clustered_fp
