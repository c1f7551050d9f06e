"""Tests for lungkit.evaluation.metrics: known values and the behaviour each metric exists to measure."""

import numpy as np
import pytest
import scipy.linalg
from scipy.ndimage import gaussian_filter
from toy_data import class_images

from lungkit.evaluation import distances as D
from lungkit.evaluation import metrics as M
from lungkit.evaluation.common import FeatureExtractor, resize_images


class ThumbnailFeatures(FeatureExtractor):
    """A cheap deterministic extractor for tests: 8x8 grayscale thumbnails (64-d)."""

    name = "thumbnails"

    def __init__(self):
        super().__init__(batch_size=64)
        self.calls = 0

    def embed_batch(self, images):
        self.calls += 1
        return resize_images(images, 8, 1).reshape(len(images), -1)


@pytest.fixture
def gaussian_features():
    rng = np.random.default_rng(0)
    return rng.normal(size=(600, 16)), rng.normal(size=(600, 16))


def test_psnr_and_ssim_known_values(tiny_ct_batch):
    assert np.isinf(M.psnr(tiny_ct_batch, tiny_ct_batch)).all()
    np.testing.assert_allclose(M.ssim(tiny_ct_batch, tiny_ct_batch), 1.0, atol=1e-6)
    shifted = np.clip(tiny_ct_batch + 0.1, 0, 1)
    mse = ((shifted - tiny_ct_batch) ** 2).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(M.psnr(tiny_ct_batch, shifted), -10 * np.log10(mse), rtol=1e-4)
    noisy = np.clip(tiny_ct_batch + np.random.default_rng(0).normal(0, 0.2, tiny_ct_batch.shape), 0, 1)
    assert (M.ssim(tiny_ct_batch, noisy) < 0.9).all()
    with pytest.raises(ValueError, match="one shape"):
        M.psnr(tiny_ct_batch, tiny_ct_batch[:2])


def test_sharpness_falls_with_blur_and_matches_known_value(tiny_ct_batch):
    blurred = gaussian_filter(tiny_ct_batch, sigma=(0, 1.5, 1.5, 0))
    sharp, soft = M.sharpness(tiny_ct_batch), M.sharpness(blurred)
    assert sharp.shape == (4,) and (soft < 0.5 * sharp).all()
    checker = (np.indices((8, 8)).sum(axis=0) % 2).astype("float32")[None, ..., None]
    # every interior Laplacian of a 0/1 checkerboard is +-4 (x255), half each: variance 1020^2
    np.testing.assert_allclose(M.sharpness(checker), [1020.0**2])
    assert M.sharpness(np.full((1, 8, 8, 3), 0.5))[0] == 0.0


def test_ms_ssim_diversity_lower_for_diverse_images():
    diverse = np.random.default_rng(0).uniform(size=(6, 32, 32, 1)).astype("float32")
    identical = np.repeat(diverse[:1], 6, axis=0)
    assert M.ms_ssim_diversity(identical) == pytest.approx(1.0, abs=1e-5)
    assert M.ms_ssim_diversity(diverse) < 0.2
    assert 0 < M.ms_ssim_diversity(class_images(4, size=64)[0], pairs=10) < 1


def test_msssim_settings_adapt_to_small_images():
    for size, scales in [(32, 3), (64, 4), (128, 5), (256, 5)]:
        weights, filter_size = M.msssim_settings(size)
        assert len(weights) == scales and sum(weights) == pytest.approx(1.0)
        assert size // 2 ** (scales - 1) >= filter_size
    assert M.msssim_settings(256)[1] == 11


def test_fid_zero_for_same_set_and_grows_with_noise(gaussian_features):
    real, _ = gaussian_features
    assert D.fid(real, real) == pytest.approx(0.0, abs=1e-6)
    noise = np.random.default_rng(1).normal(size=real.shape)
    values = [D.fid(real, real + scale * noise) for scale in (0.1, 0.3, 1.0, 3.0)]
    assert (np.diff(values) > 0).all()
    # two Gaussians with a known closed form: N(0, I) vs N(1, 4I) in 16-d -> 16 + 16 * (1 - 2)^2
    rng = np.random.default_rng(2)
    far = 1.0 + 2.0 * rng.normal(size=(20000, 16))
    assert D.fid(rng.normal(size=(20000, 16)), far) == pytest.approx(32.0, rel=0.05)


def test_frechet_distance_rank_deficient_is_finite_and_real():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(10, 128)), rng.normal(size=(10, 128))  # rank 9 covariances
    value = D.fid(a, b)
    assert isinstance(value, float) and np.isfinite(value) and value > 0
    assert D.fid(a, a) == pytest.approx(0.0, abs=1e-4)


def test_frechet_distance_retries_with_offset(monkeypatch):
    calls = []
    real_sqrtm = scipy.linalg.sqrtm

    def flaky_sqrtm(matrix, *args, **kwargs):
        calls.append(matrix)
        result = real_sqrtm(matrix, *args, **kwargs)
        return result + 1j if len(calls) == 1 else result  # first call: a large imaginary part

    monkeypatch.setattr(D.scipy.linalg, "sqrtm", flaky_sqrtm)
    eye = np.eye(3)
    assert D.frechet_distance(np.zeros(3), eye, np.ones(3), eye) == pytest.approx(3.0, abs=1e-4)
    assert len(calls) == 2
    with pytest.raises(ValueError, match="must match"):
        D.frechet_distance(np.zeros(3), eye, np.zeros(2), np.eye(2))


def test_kid_near_zero_for_one_distribution_and_large_otherwise(gaussian_features):
    a, b = gaussian_features
    same_mean, same_std = D.kid(a, b, subsets=50, subset_size=200)
    assert same_std > 0 and abs(same_mean) < 3 * same_std
    diff_mean, _ = D.kid(a, b + 1.0, subsets=50, subset_size=200)
    assert diff_mean > 20 * max(abs(same_mean), same_std)
    assert D.kid(a, b, subsets=5, subset_size=200) == D.kid(a, b, subsets=5, subset_size=200)


def test_kid_precomputed_kernel_matches_per_subset_kernels(gaussian_features, monkeypatch):
    a, b = gaussian_features[0][:100], gaussian_features[1][:80] + 0.3
    fast = D.kid(a, b, subsets=7, subset_size=50, seed=3)
    monkeypatch.setattr(D, "KID_FULL_KERNEL_MAX", 0)  # force clean-fid's per-subset kernels
    np.testing.assert_allclose(D.kid(a, b, subsets=7, subset_size=50, seed=3), fast, rtol=1e-10)
    # one subset spanning both sets equals the closed-form unbiased MMD^2
    x, y = a[:30], b[:30]
    kxx, kyy, kxy = ((x @ x.T / 16 + 1) ** 3, (y @ y.T / 16 + 1) ** 3, (x @ y.T / 16 + 1) ** 3)
    expected = ((kxx.sum() - np.trace(kxx)) / 870 + (kyy.sum() - np.trace(kyy)) / 870
                - 2 * kxy.mean())
    assert D.kid(x, y, subsets=1)[0] == pytest.approx(expected, rel=1e-10)


def test_precision_recall_identical_and_shifted(gaussian_features):
    a, b = gaussian_features
    assert D.precision_recall(a, a, k=3) == (1.0, 1.0)
    same_p, same_r = D.precision_recall(a, b, k=3, batch_size=128)
    shift_p, shift_r = D.precision_recall(a, b + 1.5, k=3, batch_size=128)
    assert shift_p < same_p - 0.3 and shift_r < same_r - 0.3
    # mode collapse: fake samples all near one real point keep precision, lose recall
    collapsed = a[:1] + 0.01 * np.random.default_rng(0).normal(size=(50, 16))
    p, r = D.precision_recall(a, collapsed, k=3)
    assert p == 1.0 and r < 0.05
    with pytest.raises(ValueError, match="`k` must be smaller"):
        D.precision_recall(a[:3], b, k=3)


def test_memorization_flags_copies_not_noise():
    train, _ = class_images(4)
    copies = train[[5, 0, 11]]
    found = M.memorization(copies, train)
    assert found["share"] == 1.0 and list(found["nearest_index"]) == [5, 0, 11]
    np.testing.assert_allclose(found["similarity"], 1.0, atol=1e-5)
    assert found["method"] == "pixel_correlation_32px"
    noise = np.random.default_rng(0).uniform(size=(5, 32, 32, 1)).astype("float32")
    assert M.memorization(noise, train)["share"] == 0.0
    by_features = M.memorization(copies, train, features=ThumbnailFeatures())
    assert by_features["share"] == 1.0 and by_features["method"] == "cosine_thumbnails"


def test_feature_stats_cache(tmp_path):
    images, _ = class_images(4)
    extractor = ThumbnailFeatures()
    first = D.FeatureStats.from_images(images, extractor, cache_dir=tmp_path)
    calls = extractor.calls
    second = D.FeatureStats.from_images(images, extractor, cache_dir=tmp_path)
    assert extractor.calls == calls and len(list(tmp_path.glob("stats_thumbnails_*.npz"))) == 1
    np.testing.assert_array_equal(first.sigma, second.sigma)
    assert D.fid(first, second) == pytest.approx(0.0, abs=1e-6)


def test_class_fidelity_with_fake_classifiers():
    images = np.zeros((6, 8, 8, 1), dtype="float32")
    requested = np.array([0, 0, 1, 1, 1, 0])
    predicted = np.array([0, 1, 1, 1, 0, 0])
    result = M.class_fidelity(images, requested, lambda batch: predicted)
    assert result["accuracy"] == pytest.approx(4 / 6)
    assert result["per_class"] == {"Normal": pytest.approx(2 / 3), "Benign": pytest.approx(2 / 3),
                                   "Malignant": None}
    assert result["counts"] == {"Normal": 3, "Benign": 3, "Malignant": 0}
    scores = np.eye(3)[requested]  # a perfect classifier returning scores

    class Perfect:
        def predict_labels(self, batch):
            return requested

    assert M.class_fidelity(images, requested, lambda batch: scores)["accuracy"] == 1.0
    assert M.class_fidelity(images, requested, Perfect())["accuracy"] == 1.0
    with pytest.raises(ValueError, match="requested_labels"):
        M.class_fidelity(images, requested[:2], Perfect())


def test_train_synthetic_test_real_beats_chance():
    synthetic, synthetic_labels = class_images(10, seed=0)
    real, real_labels = class_images(6, seed=1)
    accuracy = M.train_synthetic_test_real(synthetic, synthetic_labels, real, real_labels, epochs=8)
    assert accuracy > 0.6  # chance is 1/3


def test_evaluate_returns_documented_keys(tmp_path):
    real, real_labels = class_images(5, seed=1)
    train, _ = class_images(5, seed=2)
    generated, generated_labels = class_images(4, seed=3)
    result = M.evaluate(generated, real, train=train, features=ThumbnailFeatures(),
                        cache_dir=tmp_path, kid_subsets=10)
    named = tuple(M.feature_key(metric, "thumbnails") for metric in M.FEATURE_METRICS)
    assert tuple(result) == M.EVALUATE_KEYS + named
    assert result["n_generated"] == 12 and result["n_real"] == 15 and result["n_train"] == 15
    assert result["feature_extractors"] == {"thumbnails": "thumbnails"}
    for key in ("fid[thumbnails]", "kid[thumbnails]", "precision[thumbnails]",
                "recall[thumbnails]", "sharpness_mean", "ms_ssim_diversity",
                "memorization_share", "nearest_similarity_mean"):
        assert isinstance(result[key], float), key
    # 12 and 15 images in 64 dimensions: FID's covariances are singular
    assert result["fid_reliable[thumbnails]"] is False and result["feature_dims[thumbnails]"] == 64
    assert result["kid_subset_size[thumbnails]"] == 12
    assert result["psnr"] is None and result["class_fidelity"] is None

    copies = M.evaluate(train[:8], real[:8], train=train, paired=True,
                        generated_labels=real_labels[:8], classifier=lambda b: real_labels[:8])
    assert copies["memorization_share"] == 1.0 and not any("[" in key for key in copies)
    assert copies["class_fidelity"] == 1.0 and np.isfinite(copies["psnr"])
    assert -1 < copies["ssim"] < 0.9 and copies["feature_extractors"] == {}  # unrelated pairs


def test_precision_and_recall_known_values_and_their_meaning():
    # 1-d points 0..9 (real) and 0..4 (fake), k = 1: every ball has radius 1. All fake points
    # lie in real balls (precision 1); real points 0..5 lie in fake balls (recall 6/10)
    real, fake = np.arange(10.0)[:, None], np.arange(5.0)[:, None]
    assert D.precision_recall(real, fake, k=1) == (1.0, 0.6)
    assert D.precision_recall(fake, real, k=1) == (0.6, 1.0)  # roles swapped: values swap


def test_memorization_similarity_is_the_centred_correlation():
    yy, xx = np.mgrid[:32, :32]
    stripes = np.sin(2 * np.pi * yy / 8)  # zero mean, orthogonal to the other pattern
    other = np.sin(2 * np.pi * xx / 8)
    train = (0.5 + 0.2 * np.stack([stripes, other]))[..., None].astype("float32")
    for angle, share in ((0.2, 1.0), (0.5, 0.0)):  # cos 0.2 = 0.980, cos 0.5 = 0.878
        mixed = np.cos(angle) * stripes + np.sin(angle) * other
        generated = (0.45 + 0.2 * mixed)[None, ..., None].astype("float32")  # darker copy
        found = M.memorization(generated, train, threshold=0.95)
        assert found["similarity"][0] == pytest.approx(np.cos(angle), abs=1e-4)
        assert found["nearest_index"][0] == 0 and found["share"] == share
    # centring: brightness and contrast changes of a training slice are still exact copies
    assert M.memorization(0.1 + 0.5 * train[1:], train)["similarity"][0] == pytest.approx(1.0)


def test_ms_ssim_of_two_flat_images_is_the_luminance_term():
    # flat images: contrast-structure is 1 at every scale, so MS-SSIM = l ** w_last with
    # l = (2 a b + C1) / (a^2 + b^2 + C1), C1 = (0.01 * max_val)^2 (Wang et al., 2003)
    a, b = 0.3, 0.5
    pair = np.stack([np.full((32, 32, 1), a), np.full((32, 32, 1), b)]).astype("float32")
    weights, _ = M.msssim_settings(32)
    luminance = (2 * a * b + 1e-4) / (a**2 + b**2 + 1e-4)
    assert M.ms_ssim_diversity(pair) == pytest.approx(luminance ** weights[-1], rel=1e-4)


def test_evaluate_keys_mean_what_they_say(tmp_path):
    real, _ = class_images(8, seed=1)  # 24 diverse slices
    one = real[:1] + np.random.default_rng(0).normal(0, 0.01, (24, *real.shape[1:]))
    collapsed = np.clip(one, 0, 1).astype("float32")  # one slice, faint noise: looks real
    result = M.evaluate(collapsed, real, train=real[:12], features=ThumbnailFeatures(),
                        kid_subsets=5, diversity_pairs=20)
    # precision: the samples look real; recall: they cover almost none of the real variety
    assert result["precision[thumbnails]"] == 1.0 and result["recall[thumbnails]"] < 0.2
    # memorization: the samples copy training slice 0; held-out-like real slices do not all
    assert result["memorization_share"] == 1.0
    assert result["memorization_share_real"] == 0.5  # real[:12] are the training slices
    # KID: subsets of all 24 images; its interval is a bootstrap over images, not the spread
    # of identical subsets (that spread is exactly 0 for equal set sizes)
    assert result["kid_subset_size[thumbnails]"] == 24
    assert D.kid(collapsed.reshape(24, -1), real.reshape(24, -1), subsets=5)[1] < 1e-12
    low, high = result["kid_interval[thumbnails]"]
    assert 0 < low < result["kid[thumbnails]"] < high
    # FID is flagged: 24 images in 64 dimensions; enough images make it reliable
    assert result["fid_reliable[thumbnails]"] is False
    many, _ = class_images(22, seed=2)
    enough = M.evaluate(many, many[::-1].copy(), features=ThumbnailFeatures(), kid_subsets=2,
                        diversity_pairs=2, kid_rounds=20)
    assert enough["fid_reliable[thumbnails]"] is True and enough["n_real"] == 66
