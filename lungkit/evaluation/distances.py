"""Distances between feature sets: Fréchet (FID), kernel (KID), and k-NN precision/recall.

- `FeatureStats`: features of a real set and their mean/covariance, cached by data hash.
- `frechet_distance`, `fid`: Fréchet distance of two Gaussians fitted to the features.
- `kid`: unbiased polynomial-kernel MMD^2 over random subsets (mean and spread).
- `precision_recall`: improved precision/recall (Kynkäänniemi et al., 2019), k-NN balls.
"""

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.linalg

from lungkit.checks import check_images
from lungkit.evaluation.statistics import kid_kernel
from lungkit.files import data_hash

logger = logging.getLogger(__name__)

FRECHET_EPS = 1e-6  # diagonal offset for a singular covariance product (pytorch-fid)
FRECHET_IMAG_TOL = 1e-3  # largest imaginary part of sqrtm accepted as round-off (pytorch-fid)
KID_FULL_KERNEL_MAX = 4096  # largest set whose full kernel matrix (128 MiB) KID keeps

# --------------------------------------------------------------------------- FID / KID
@dataclass
class FeatureStats:
    """Features of a real image set and their Gaussian statistics (mean `(D,)`, cov `(D, D)`)."""

    features: np.ndarray
    mu: np.ndarray
    sigma: np.ndarray
    extractor: str = ""

    @classmethod
    def from_features(cls, features, extractor=""):
        features = np.asarray(features, dtype="float64")
        if features.ndim != 2 or len(features) < 2:
            raise ValueError(f"`features` must be (N >= 2, D). Received shape {features.shape}")
        return cls(features, features.mean(axis=0), np.atleast_2d(np.cov(features, rowvar=False)),
                   extractor)

    @classmethod
    def from_images(cls, images, extractor, cache_dir=None, progress=False):
        """Features of `images` under `extractor`, cached as `<cache_dir>/<name>_<hash>.npz`."""
        path = None
        if cache_dir is not None:
            key = data_hash(check_images(images))
            path = Path(cache_dir) / f"stats_{extractor.name}_{key}.npz"
            if path.is_file():
                logger.info("Loading cached real-image statistics %s", path)
                with np.load(path) as cached:
                    return cls(cached["features"], cached["mu"], cached["sigma"], extractor.name)
        stats = cls.from_features(extractor(images, progress=progress), extractor.name)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(path, features=stats.features, mu=stats.mu, sigma=stats.sigma)
        return stats


def _as_stats(features):
    return features if isinstance(features, FeatureStats) else FeatureStats.from_features(features)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps=FRECHET_EPS):
    """Squared Frechet distance between Gaussians N(mu1, sigma1) and N(mu2, sigma2).

    d^2 = |mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 sqrt(sigma1 sigma2)). As pytorch-fid: when the
    product's square root is not finite or has an imaginary part above round-off (singular,
    e.g. rank-deficient covariances from fewer samples than dimensions), retry with `eps`
    added to both diagonals; then keep the real part.

    Raises:
        ValueError: on mismatched shapes, or an imaginary part that the offset does not remove.
    """
    mu1, mu2 = np.atleast_1d(mu1).astype("float64"), np.atleast_1d(mu2).astype("float64")
    sigma1, sigma2 = np.atleast_2d(sigma1).astype("float64"), np.atleast_2d(sigma2).astype("float64")
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"Means and covariances must match: received mu {mu1.shape}, {mu2.shape}"
                         f" and sigma {sigma1.shape}, {sigma2.shape}")
    diff = mu1 - mu2

    def sqrt_product(offset):
        identity = np.eye(len(mu1)) * offset
        with warnings.catch_warnings():  # "singular matrix": handled by the checks below
            warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
            return scipy.linalg.sqrtm((sigma1 + identity) @ (sigma2 + identity))

    covmean = sqrt_product(0.0)
    scale = max(1.0, np.abs(np.trace(sigma1 @ sigma2)) ** 0.5)
    if not np.isfinite(covmean).all() or np.abs(np.imag(covmean)).max() > FRECHET_IMAG_TOL * scale:
        logger.info("sqrtm of the covariance product is singular; adding %g to the diagonals", eps)
        covmean = sqrt_product(eps)
    if not np.isfinite(covmean).all():
        raise ValueError("Frechet distance: sqrtm is not finite even with a diagonal offset")
    imaginary = np.abs(np.diagonal(np.imag(covmean))).max()
    if imaginary > FRECHET_IMAG_TOL * scale:
        raise ValueError(f"Frechet distance: imaginary part {imaginary:.3g} of sqrtm is too large")
    distance = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(np.real(covmean))
    return float(max(distance, 0.0))  # >= 0 in exact arithmetic; clip round-off


def fid(features_a, features_b):
    """FID between two feature sets `(N, D)` (or `FeatureStats`): 0 for one distribution."""
    a, b = _as_stats(features_a), _as_stats(features_b)
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)


def kid(features_a, features_b, subsets=100, subset_size=1000, seed=0):
    """Kernel Inception Distance: unbiased MMD^2 with k(x, y) = (x.y / D + 1)^3.

    Averaged over `subsets` random subsets of `min(subset_size, N_a, N_b)` rows of each set,
    without replacement (Binkowski et al., 2018; clean-fid's `kernel_distance`).

    Returns:
        `(mean, std)` over subsets; the mean is ~0 (either sign) for one distribution. The
        std is over subsets of one sample of images: when the subset is most of the set (few
        images) it understates how much KID would vary with a new sample.
    """
    a = (features_a.features if isinstance(features_a, FeatureStats) else np.asarray(features_a))
    b = (features_b.features if isinstance(features_b, FeatureStats) else np.asarray(features_b))
    a, b = a.astype("float64"), b.astype("float64")
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"Feature sets must be (N, D) with one D. Received {a.shape} and {b.shape}")
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per set. Received {len(a)} and {len(b)}")
    rng = np.random.default_rng(seed)

    kernel = kid_kernel  # one definition, shared with the claims' bootstrap
    # Kernels of the whole sets, computed once when they fit in memory: each subset then only
    # indexes them (the same numbers as clean-fid, ~100x faster for 100 subsets).
    full = max(len(a), len(b)) <= KID_FULL_KERNEL_MAX
    if full:
        k_aa, k_bb, k_ab = kernel(a, a), kernel(b, b), kernel(a, b)
    values = []
    for _ in range(subsets):
        i = rng.choice(len(a), m, replace=False)
        j = rng.choice(len(b), m, replace=False)
        if full:
            xx, yy, xy = k_aa[np.ix_(i, i)], k_bb[np.ix_(j, j)], k_ab[np.ix_(i, j)]
        else:
            xx, yy, xy = kernel(a[i], a[i]), kernel(b[j], b[j]), kernel(a[i], b[j])
        within = xx.sum() - np.trace(xx) + yy.sum() - np.trace(yy)
        values.append(within / (m * (m - 1)) - 2 * xy.sum() / m**2)
    return float(np.mean(values)), float(np.std(values))


# --------------------------------------------------------------------------- manifolds
def _pairwise_sq_distances(x, y):
    squared = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * x @ y.T
    return np.maximum(squared, 0.0)


def _knn_radii(features, k, batch_size):
    """Squared distance of each row to its k-th nearest other row."""
    radii = []
    for start in range(0, len(features), batch_size):
        distances = _pairwise_sq_distances(features[start : start + batch_size], features)
        radii.append(np.partition(distances, k, axis=1)[:, k])  # index 0 is the row itself
    return np.concatenate(radii)


def _coverage(manifold, radii, queries, batch_size):
    """Share of `queries` inside at least one ball (centre in `manifold`, squared radius)."""
    inside = []
    for start in range(0, len(queries), batch_size):
        distances = _pairwise_sq_distances(queries[start : start + batch_size], manifold)
        inside.append((distances <= radii[None, :] * (1 + 1e-9)).any(axis=1))
    return float(np.concatenate(inside).mean())


def precision_recall(real_features, fake_features, k=3, batch_size=1024):
    """Improved precision and recall (Kynkaanniemi et al., 2019) from features `(N, D)`.

    Each set's manifold is the union of balls around its points reaching the k-th nearest
    neighbour. Precision: share of fake samples inside the real manifold (fidelity); recall:
    share of real samples inside the fake manifold (coverage). Both in [0, 1].
    """
    real = np.asarray(getattr(real_features, "features", real_features), dtype="float64")
    fake = np.asarray(getattr(fake_features, "features", fake_features), dtype="float64")
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"`k` must be smaller than both set sizes. Received k={k}, "
                         f"{len(real)} real and {len(fake)} fake")
    precision = _coverage(real, _knn_radii(real, k, batch_size), fake, batch_size)
    recall = _coverage(fake, _knn_radii(fake, k, batch_size), real, batch_size)
    return precision, recall
