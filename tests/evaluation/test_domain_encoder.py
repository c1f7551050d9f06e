"""Tests for lungkit.evaluation.domain_encoder: its layers, degradations and standardization,
the cached encoder, and that its features rank real, noisy, blurred and random images as a
distance should."""

import os

import keras
import numpy as np
import pytest
from toy_data import class_images

from lungkit.evaluation import common
from lungkit.evaluation import distances as dist
from lungkit.evaluation import domain_encoder as D

FAST = {"epochs": 1, "min_steps": 0, "steps": 10}  # a domain encoder in about a second


def test_arcsinh_layer_matches_numpy():
    x = np.linspace(-300, 300, 13, dtype="float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(D.Arcsinh()(x)), np.arcsinh(x), rtol=1e-5)


def test_global_std_pooling_matches_numpy_and_round_trips():
    x = np.random.default_rng(0).normal(size=(2, 5, 6, 3)).astype("float32")
    layer = D.GlobalStdPooling2D()
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x)), x.std(axis=(1, 2)), rtol=1e-4)
    clone = keras.layers.deserialize(keras.layers.serialize(layer))
    assert isinstance(clone, D.GlobalStdPooling2D)


def test_build_domain_autoencoder_outputs_and_errors():
    model = D.build_domain_autoencoder(32, 1)
    out = model(np.zeros((2, 32, 32, 1), "float32"))
    assert out["reconstruction"].shape == (2, 32, 32, 1) and out["degradation"].shape == (2, 2)
    assert model.get_layer("pooled").output.shape == (None, D.DOMAIN_FEATURE_DIMS)
    with pytest.raises(ValueError, match="multiple of 8"):
        D.build_domain_autoencoder(20, 1)
    with pytest.raises(ValueError, match="`channels` must be 1 or 3"):
        D.build_domain_autoencoder(32, 2)


def test_degrade_images_levels_match_what_was_done():
    images = np.full((200, 16, 16, 1), 0.5, "float32")
    images[:, 8:] = 0.7  # an edge, so blur changes pixels
    degraded, levels = D.degrade_images(images, np.random.default_rng(0))
    assert degraded.shape == images.shape and degraded.dtype == np.float32
    assert 0.0 <= degraded.min() and degraded.max() <= 1.0 and levels.shape == (200, 2)
    assert 0.0 <= levels.min() and levels.max() <= 1.0
    untouched = (levels == 0).all(axis=1)
    assert 0.1 < untouched.mean() < 0.4  # P(no noise and no blur) = 0.25
    np.testing.assert_array_equal(degraded[untouched], images[untouched])
    noisy_only = (levels[:, 0] > 0.5) & (levels[:, 1] == 0)
    residual = (degraded[noisy_only] - images[noisy_only]).std(axis=(1, 2, 3))
    np.testing.assert_allclose(residual, levels[noisy_only, 0] * D.MAX_NOISE_STD, rtol=0.2)


def test_feature_standardization_floors_constant_dims():
    rng = np.random.default_rng(0)
    features = np.stack([rng.normal(3, 2, 500), rng.normal(0, 1, 500), np.zeros(500)], axis=1)
    mean, variance = D.feature_standardization(features, floor=1.0)
    np.testing.assert_allclose(mean, features.mean(0), atol=1e-6)
    median = np.median(features.std(0))  # 1: the constant dimension gets variance 1, not 0
    np.testing.assert_allclose(variance, features.var(0) + median**2, rtol=1e-5)


def test_domain_encoder_trains_caches_and_reloads(tmp_path):
    images, labels = class_images(6)
    encoder = D.DomainEncoder.fit(images, labels, cache_dir=tmp_path, **FAST)
    assert not encoder.loaded_from_cache and encoder.path.is_file()
    assert encoder.name.startswith("domain_encoder_") and encoder.path.stem == encoder.name
    first = encoder(images)
    assert first.shape == (len(images), D.DOMAIN_FEATURE_DIMS) and first.dtype == np.float32
    # Standardized once with the training images (then asinh): centred there, std <= 1.
    standardized = np.sinh(first)
    np.testing.assert_allclose(standardized.mean(axis=0), 0.0, atol=1e-4)
    assert standardized.std(axis=0).max() <= 1.0 + 1e-4
    mtime = os.path.getmtime(encoder.path)

    again = D.DomainEncoder.fit(images, labels, cache_dir=tmp_path, **FAST)
    assert again.loaded_from_cache and again.name == encoder.name
    assert os.path.getmtime(again.path) == mtime  # reloaded, not retrained and re-saved
    np.testing.assert_allclose(again(images), first, rtol=1e-5, atol=1e-5)
    # The scale is fixed: another set is not standardized on its own statistics.
    assert np.abs(again(images[:3]).mean(axis=0)).max() > 0.1

    other = D.DomainEncoder.fit(images[:-1], labels[:-1], cache_dir=tmp_path, **FAST)
    assert other.name != encoder.name  # other data, other key


def test_cache_key_carries_the_encoder_version(tmp_path, monkeypatch):
    images, labels = class_images(2)
    encoder = D.DomainEncoder.fit(images, labels, cache_dir=tmp_path, **FAST)
    monkeypatch.setattr(D, "DOMAIN_ENCODER_VERSION", D.DOMAIN_ENCODER_VERSION + 1)
    newer = D.DomainEncoder.fit(images, labels, cache_dir=tmp_path, **FAST)
    assert newer.name != encoder.name and not newer.loaded_from_cache


def test_domain_encoder_accepts_other_sizes_and_channels(tmp_path):
    images, labels = class_images(3, size=28)  # not a multiple of 8: the encoder uses 32
    encoder = D.DomainEncoder.fit(images, labels, cache_dir=tmp_path, **FAST)
    assert encoder.image_size == 32
    rgb = np.repeat(class_images(1, size=48)[0], 3, axis=-1)
    assert encoder(rgb).shape == (3, D.DOMAIN_FEATURE_DIMS)
    assert encoder.predict_labels(rgb).shape == (3,)
    reloaded = D.DomainEncoder.load(encoder.path)
    np.testing.assert_allclose(reloaded(images), encoder(images), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(reloaded.predict_labels(images), encoder.predict_labels(images))


# --------------------------------------------------------------------------- acceptance
@pytest.fixture(scope="module")
def phantom_features(tmp_path_factory):
    """A domain encoder trained on 32 phantom slices (64 px) and 16 held-out ones.

    Returns `(encoder, train_images, held_out_images)`.
    """
    from lungkit.data.images import load_data, normalize, to_channels
    from lungkit.data.phantom import make_phantom_dataset

    root = make_phantom_dataset(tmp_path_factory.mktemp("phantom16"), per_class=16, size=64,
                                seed=0, progress=False)
    images, labels = load_data(root, size=64, progress=False)
    images = to_channels(normalize(images), 1)
    held_out = np.zeros(len(images), bool)
    held_out[np.random.default_rng(0).permutation(len(images))[: len(images) // 3]] = True
    encoder = D.DomainEncoder.fit(images[~held_out], labels[~held_out],
                                  cache_dir=tmp_path_factory.mktemp("encoder"),
                                  epochs=1, min_steps=0, steps=150)
    return encoder, images[~held_out], images[held_out]


def distances(encoder, reference, images):
    """`(fid, kid_mean)` of `images` against the `reference` set's features."""
    features = encoder(images)
    return dist.fid(features, reference), dist.kid(features, reference)[0]


def test_domain_features_rank_noise_blur_and_random(phantom_features):
    encoder, train, held_out = phantom_features
    reference = encoder(train)
    rng = np.random.default_rng(1)
    clean = distances(encoder, reference, held_out)
    noisy = [distances(encoder, reference,
                       np.clip(held_out + rng.normal(0, std, held_out.shape), 0, 1))
             for std in (0.05, 0.1, 0.2)]
    half = held_out.shape[1] // 2  # a VAE-like blur: down to half size and back
    blurred = distances(encoder, reference, common.resize_images(common.resize_images(held_out, half, 1),
                                                            held_out.shape[1], 1))
    random = distances(encoder, reference, rng.uniform(size=held_out.shape).astype("float32"))
    for metric in (0, 1):  # FID, then KID
        ladder = [clean[metric]] + [d[metric] for d in noisy]
        assert (np.diff(ladder) > 0).all(), ladder  # grows with the noise std
        assert blurred[metric] > clean[metric]
        assert random[metric] > noisy[-1][metric]
        assert random[metric] > (3, 10)[metric] * blurred[metric]
    assert abs(clean[1]) < noisy[0][1]


def test_domain_features_are_not_collapsed(phantom_features):
    encoder, train, held_out = phantom_features
    features = encoder(held_out)
    assert (features.std(axis=0) > 1e-3).mean() > 0.6  # most dimensions vary over real images
    rng = np.random.default_rng(0)
    random = encoder(rng.uniform(size=(32, *held_out.shape[1:])).astype("float32"))
    _, kid_std = dist.kid(random, encoder(train), subsets=20, subset_size=16)
    assert kid_std > 0
    assert len(np.unique(features.round(4), axis=0)) == len(held_out)  # no two images alike
