import numpy as np
import pytest

from lungkit.evaluation.extractors import build_extractors
from lungkit.evaluation.random_features import RandomCNNFeatures, TextureFeatures


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return rng.uniform(0, 1, (6, 16, 16, 1)).astype("float32")


def test_build_extractors_without_labels_gives_untrained_spaces(images):
    extractors = build_extractors(None, size=16, channels=1, seed=3)
    assert {"random_cnn", "texture"} <= set(extractors)
    assert "domain_encoder" not in extractors
    assert extractors["random_cnn"].name == "random_cnn_s3"
    for extractor in extractors.values():
        features = extractor(images)
        assert features.shape[0] == 6 and np.isfinite(features).all()


def test_random_cnn_is_deterministic_per_seed_and_differs_across_seeds(images):
    a = RandomCNNFeatures(16, 1, seed=1)(images)
    b = RandomCNNFeatures(16, 1, seed=1)(images)
    c = RandomCNNFeatures(16, 1, seed=2)(images)
    np.testing.assert_allclose(a, b, rtol=1e-5)
    assert not np.allclose(a, c)


def test_texture_separates_smooth_from_noisy_images():
    smooth = np.tile(np.linspace(0, 1, 16, dtype="float32")[None, :, None], (16, 1, 1))[None]
    noisy = np.random.default_rng(0).uniform(0, 1, (1, 16, 16, 1)).astype("float32")
    features = TextureFeatures(16)(np.concatenate([smooth, noisy]))
    contrast_index = 7  # first GLCM statistic at offset (0, 1)
    assert features[1, contrast_index] > 10 * features[0, contrast_index]


def test_untrained_spaces_are_standardized_by_the_encoder_split(images):
    extractors = build_extractors(images, None, size=16, channels=1, seed=3)
    assert "domain_encoder" not in extractors  # no labels, no encoder to train
    cnn = extractors["random_cnn"]
    assert cnn.name.startswith("random_cnn_s3_z") and cnn.name != build_extractors(
        images[:4], None, size=16, channels=1, seed=3)["random_cnn"].name  # scales' hash
    features = cnn(images)
    np.testing.assert_allclose(features.mean(axis=0), 0.0, atol=1e-4)  # centred on the split
    assert features.std(axis=0).max() <= 1.0 + 1e-4  # variance floored, never blown up
