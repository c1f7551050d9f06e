"""Tests for lungkit.evaluation.statistics: intervals cover known values, verdicts have three
outcomes, and the bootstrapped KID difference is the unbiased KID of the full sets."""

import numpy as np
import pytest

from lungkit.evaluation import metrics, statistics


def test_mean_difference_interval_matches_normal_theory_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    for n in (30, 3000):
        a, b = rng.normal(1.0, 1.0, n), rng.normal(0.0, 2.0, n)
        interval = statistics.mean_difference(a, b)
        assert interval.estimate == pytest.approx(a.mean() - b.mean())
        assert interval.level == 0.95 and interval.low < interval.estimate < interval.high
        # the percentile bootstrap of a mean difference ~ estimate -/+ 1.96 standard errors
        error = 1.96 * np.sqrt(a.var() / n + b.var() / n)
        assert interval.low == pytest.approx(interval.estimate - error, abs=0.15 * error)
        assert interval.high == pytest.approx(interval.estimate + error, abs=0.15 * error)


def test_verdict_has_three_outcomes_around_the_margin():
    interval = statistics.Interval
    assert statistics.verdict(interval(0.5, 0.2, 0.8, 0.95), margin=0.1) == "PASS"
    assert statistics.verdict(interval(0.5, 0.2, 0.8, 0.95), margin=0.9) == "FAIL"
    assert statistics.verdict(interval(0.5, 0.2, 0.8, 0.95), margin=0.5) == "INCONCLUSIVE"
    assert statistics.verdict(interval(-0.5, -0.8, -0.2, 0.95)) == "FAIL"


def test_median_ratio_of_timings():
    fast, slow = [1.0, 1.1, 0.9, 1.05], [2.0, 2.2, 1.9, 2.1]
    ratio = statistics.median_ratio(slow, fast)
    assert ratio.estimate == pytest.approx(np.median(slow) / np.median(fast))
    assert statistics.verdict(ratio, 1.0) == "PASS"
    assert statistics.verdict(statistics.median_ratio(fast, slow), 1.0) == "FAIL"
    with pytest.raises(ValueError, match="positive"):
        statistics.median_ratio([1.0, 0.0], [1.0, 2.0])


def test_kid_difference_estimate_is_the_difference_of_unbiased_kids():
    rng = np.random.default_rng(1)
    real, a, b = rng.normal(size=(40, 8)), rng.normal(0.8, 1, (30, 8)), rng.normal(size=(35, 8))
    gap = statistics.kid_difference(a, b, real)
    kid_a = metrics.kid(a, real, subsets=1, subset_size=1000)[0]  # m = 30: all of `a`, 30 real
    # the full-set estimate (all 40 real images) against kid of all images, computed by hand
    def full_kid(x, y):
        kxx, kyy, kxy = (statistics.kid_kernel(p, q) for p, q in ((x, x), (y, y), (x, y)))
        n, m = len(x), len(y)
        return ((kxx.sum() - np.trace(kxx)) / (n * (n - 1))
                + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean())
    assert gap.estimate == pytest.approx(full_kid(a, real) - full_kid(b, real), rel=1e-9)
    assert kid_a > 0 and gap.low > 0  # `a` is shifted: clearly farther from real
    assert statistics.verdict(gap) == "PASS"
    assert statistics.verdict(statistics.kid_difference(b, a, real)) == "FAIL"


def test_kid_difference_of_two_samples_of_one_distribution_is_inconclusive():
    rng = np.random.default_rng(2)
    real, a, b = (rng.normal(size=(40, 8)) for _ in range(3))
    assert statistics.verdict(statistics.kid_difference(a, b, real)) == "INCONCLUSIVE"


def test_bootstrap_refuses_bad_arguments():
    with pytest.raises(ValueError, match="rounds"):
        statistics.bootstrap(lambda i: 0.0, (5,), rounds=1)
    with pytest.raises(ValueError, match="level"):
        statistics.bootstrap(lambda i: 0.0, (5,), level=1.0)
    with pytest.raises(ValueError, match="not finite"):
        statistics.bootstrap(lambda i: np.nan, (5,))


def test_kid_interval_is_the_full_set_kid_with_a_real_error_bar():
    from lungkit.evaluation import distances

    rng = np.random.default_rng(0)
    a, b = rng.normal(0.3, 1, (40, 8)), rng.normal(0, 1, (40, 8))
    interval = statistics.kid_interval(a, b, rounds=200)
    # equal sizes: every subset of KID is the whole set, so its spread is 0; the estimate is
    # that one value and the interval a bootstrap over images
    mean, spread = distances.kid(a, b, subsets=3, subset_size=40)
    assert interval.estimate == pytest.approx(mean, rel=1e-10) and spread < 1e-12
    assert interval.low < interval.estimate < interval.high
    same = statistics.kid_interval(rng.normal(0, 1, (40, 8)), b, rounds=200)
    assert same.low < 0 < same.high  # one distribution: 0 inside
    assert statistics.kid_interval(rng.normal(2, 1, (40, 8)), b, rounds=200).low > 0


def test_rank_agreement_names_the_order_in_each_space():
    agreeing = statistics.rank_agreement({"a": {"vae": 3.0, "ddim": 1.0, "latent": 2.0},
                                          "b": {"vae": 30.0, "ddim": 10.0, "latent": 20.0}})
    assert agreeing["orders"]["a"] == ["ddim", "latent", "vae"] and agreeing["same_order"]
    assert agreeing["kendall_tau"] == {"a vs b": 1.0}
    swapped = statistics.rank_agreement({"a": {"vae": 3.0, "ddim": 1.0, "latent": 2.0},
                                         "b": {"vae": 30.0, "ddim": 20.0, "latent": 10.0}})
    assert swapped["same_order"] is False and swapped["kendall_tau"]["a vs b"] < 1.0
    assert statistics.rank_agreement({"a": {"vae": 1.0}})["same_order"] is None
