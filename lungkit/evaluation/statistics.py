"""Uncertainty of the comparison's numbers: image-level bootstrap intervals and verdicts.

A claim such as "the VAE's samples are blurrier" is an effect measured on finite sets of
images. `bootstrap` resamples the images of each set with replacement and returns the
effect's percentile interval; `verdict` turns the interval into PASS (the whole interval is
beyond the claim's margin), FAIL (the whole interval is short of it) or INCONCLUSIVE (the
interval contains the margin: these images cannot decide).

`kid_difference` is KID(a, real) - KID(b, real) as a bootstrap statistic: the polynomial
kernels are computed once, and each resample drops the pairs of an image with a copy of
itself, so that every resampled KID stays the unbiased estimator (Binkowski et al., 2018);
`kid_interval` is one KID with that interval. `rank_agreement` says whether several feature
spaces order the models alike (Kendall's tau).
"""

from typing import NamedTuple

import numpy as np

from lungkit.checks import check_int, check_number

LEVEL = 0.95  # two-sided confidence level of every interval
ROUNDS = 1000  # bootstrap resamples
VERDICTS = ("PASS", "FAIL", "INCONCLUSIVE")


class Interval(NamedTuple):
    """An effect with its bootstrap percentile interval at `level`."""

    estimate: float
    low: float
    high: float
    level: float

    def text(self, digits=3):
        return (f"{self.estimate:.{digits}g} [{self.low:.{digits}g}, {self.high:.{digits}g}] "
                f"({self.level:.0%} interval)")


def bootstrap(statistic, sizes, *, rounds=ROUNDS, level=LEVEL, seed=0):
    """The statistic on the full sets and its percentile interval over resampled sets.

    Args:
        statistic: `f(*indices) -> float`, called with one index array per set (the full
            `arange(size)` for the estimate, resampled indices for each round).
        sizes: the number of images in each set (each resampled on its own).
        rounds, level, seed: resamples, two-sided confidence level, seed of the resampling.

    Returns:
        `Interval(estimate, low, high, level)`.
    """
    rounds = check_int("rounds", rounds, 10)
    level = check_number("level", level, 0.0, 1.0, low_open=True, high_open=True)
    sizes = [check_int("size", size, 1) for size in sizes]
    rng = np.random.default_rng(seed)
    estimate = float(statistic(*(np.arange(size) for size in sizes)))
    values = np.array([statistic(*(rng.integers(0, size, size) for size in sizes))
                       for _ in range(rounds)], dtype="float64")
    values = values[np.isfinite(values)]
    if len(values) < rounds // 2:
        raise ValueError(f"The statistic was not finite in {rounds - len(values)} of {rounds} "
                         "resamples; the sets are too small or degenerate.")
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return Interval(estimate, float(low), float(high), level)


def mean_difference(a, b, **options):
    """`mean(a) - mean(b)` of two independent samples, with its bootstrap interval."""
    a, b = np.asarray(a, "float64"), np.asarray(b, "float64")
    return bootstrap(lambda i, j: a[i].mean() - b[j].mean(), (len(a), len(b)), **options)


def median_ratio(a, b, **options):
    """`median(a) / median(b)` of two independent samples of positive values (timings)."""
    a, b = np.asarray(a, "float64"), np.asarray(b, "float64")
    if (a <= 0).any() or (b <= 0).any():
        raise ValueError("median_ratio takes positive values (times, speeds).")
    return bootstrap(lambda i, j: np.median(a[i]) / np.median(b[j]), (len(a), len(b)), **options)


def feature_key(metric, space):
    """The `evaluate` key of a feature-space metric: `"kid[random_cnn]"` (kept here, free of
    TensorFlow, so that the claims read the keys `metrics.evaluate` writes)."""
    return f"{metric}[{space}]"


def kid_kernel(x, y):
    """KID's polynomial kernel k(x, y) = (x.y / D + 1)^3 (Binkowski et al., 2018)."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def _within(kernel, index):
    """Mean of kernel[index_p, index_q] over pairs p != q of distinct images."""
    block = kernel[np.ix_(index, index)]
    distinct = index[:, None] != index[None, :]
    return float(block[distinct].sum() / max(distinct.sum(), 1))


def kid_difference(features_a, features_b, real_features, **options):
    """`KID(a, real) - KID(b, real)` with its image-level bootstrap interval.

    Positive when `a` is farther from the real images than `b`. All three sets are resampled;
    the real-real term is shared by both KIDs and cancels, and is skipped.
    """
    a, b, r = (np.asarray(f, "float64") for f in (features_a, features_b, real_features))
    if not (a.ndim == b.ndim == r.ndim == 2 and a.shape[1] == b.shape[1] == r.shape[1]):
        raise ValueError(f"Feature sets must be (N, D) with one D. Received {a.shape}, "
                         f"{b.shape} and {r.shape}")
    if min(len(a), len(b)) < 2:
        raise ValueError(f"KID needs at least 2 samples per set. Received {len(a)} and {len(b)}")
    k_aa, k_bb = kid_kernel(a, a), kid_kernel(b, b)
    k_ar, k_br = kid_kernel(a, r), kid_kernel(b, r)

    def statistic(i, j, m):
        kid_a = _within(k_aa, i) - 2.0 * k_ar[np.ix_(i, m)].mean()
        kid_b = _within(k_bb, j) - 2.0 * k_br[np.ix_(j, m)].mean()
        return kid_a - kid_b

    return bootstrap(statistic, (len(a), len(b), len(r)), **options)


def kid_interval(features_a, features_b, **options):
    """KID(a, b) on the whole sets (unbiased MMD^2) with its image-level bootstrap interval.

    Both sets are resampled; pairs of an image with a copy of itself are dropped, so every
    resampled value is the unbiased estimator. Unlike the spread over subsets (which is 0
    when the subsets are the whole sets), the interval says how KID would vary with new images.
    """
    a, b = (np.asarray(f, "float64") for f in (features_a, features_b))
    if not (a.ndim == b.ndim == 2 and a.shape[1] == b.shape[1]):
        raise ValueError(f"Feature sets must be (N, D) with one D. Received {a.shape} and {b.shape}")
    if min(len(a), len(b)) < 2:
        raise ValueError(f"KID needs at least 2 samples per set. Received {len(a)} and {len(b)}")
    k_aa, k_bb, k_ab = kid_kernel(a, a), kid_kernel(b, b), kid_kernel(a, b)

    def statistic(i, j):
        return _within(k_aa, i) + _within(k_bb, j) - 2.0 * k_ab[np.ix_(i, j)].mean()

    return bootstrap(statistic, (len(a), len(b)), **options)


def rank_agreement(scores):
    """Whether feature spaces order the same models alike.

    Args:
        scores: `{space: {model: score}}`, lower is better (e.g. KID per extractor).

    Returns:
        dict: `orders` {space: models best first}, `kendall_tau` {"a vs b": tau in [-1, 1] or
        None when fewer than 2 models are shared}, `same_order` (True when every space
        ranks the shared models identically; None with fewer than 2 models).
    """
    from scipy.stats import kendalltau

    spaces = [s for s in scores if len([v for v in scores[s].values() if v is not None]) >= 2]
    orders = {s: sorted((m for m, v in scores[s].items() if v is not None),
                        key=lambda m, s=s: scores[s][m]) for s in spaces}
    taus = {}
    for index, first in enumerate(spaces):
        for second in spaces[index + 1:]:
            shared = [m for m in orders[first] if m in orders[second]]
            tau = (float(kendalltau([scores[first][m] for m in shared],
                                    [scores[second][m] for m in shared])[0])
                   if len(shared) >= 2 else np.nan)
            taus[f"{first} vs {second}"] = tau if np.isfinite(tau) else None
    same = None
    if taus and all(t is not None for t in taus.values()):
        same = all(t == 1.0 for t in taus.values())
    return {"orders": orders, "kendall_tau": taus, "same_order": same}


def verdict(interval, margin=0.0):
    """PASS when the whole interval exceeds `margin`, FAIL when it lies below, else INCONCLUSIVE.

    A claim is written so that a larger effect supports it ("the effect exceeds the margin");
    the margin is the smallest effect the claim calls real.
    """
    if interval.low > margin:
        return "PASS"
    if interval.high < margin:
        return "FAIL"
    return "INCONCLUSIVE"
