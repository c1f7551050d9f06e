"""Tests for lungkit.features: extractor choice without network, the cached domain encoder."""

import logging
import os

import keras
import numpy as np
import pytest

from lungkit import features as F


def class_images(per_class, size=32, seed=0):
    """Separable toy classes in [0, 1]: horizontal stripes, vertical stripes, a bright disc."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images, labels = [], []
    for label in range(3):
        for _ in range(per_class):
            phase = rng.uniform(0, 2 * np.pi)
            if label == 0:
                pattern = 0.3 * np.sin(2 * np.pi * yy / 8 + phase)
            elif label == 1:
                pattern = 0.3 * np.sin(2 * np.pi * xx / 8 + phase)
            else:
                cy, cx = rng.uniform(8, size - 8, size=2)
                pattern = 0.4 * (((yy - cy) ** 2 + (xx - cx) ** 2) < 25)
            images.append(0.4 + pattern + rng.normal(0, 0.05, (size, size)))
            labels.append(label)
    images = np.clip(np.asarray(images, dtype="float32")[..., None], 0, 1)
    return images, np.asarray(labels)


@pytest.fixture
def no_inception_weights(tmp_path, monkeypatch):
    """Points the Keras cache at an empty folder and forbids building InceptionV3."""
    empty = tmp_path / "keras_cache"
    empty.mkdir()
    monkeypatch.setattr(F, "keras_cache_dir", lambda: empty)

    def refuse(path):
        raise AssertionError("InceptionV3 must not be built without weights")

    monkeypatch.setattr(F, "build_inception", refuse)
    return empty


def tiny_inception(weights_path):
    """Stands in for InceptionV3: (299, 299, 3) -> (8,) so no real weights are loaded."""
    inputs = keras.Input((F.INCEPTION_SIZE, F.INCEPTION_SIZE, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    return keras.Model(inputs, keras.layers.Dense(8)(pooled))


def test_check_images_names_the_problem():
    with pytest.raises(ValueError, match="NHWC with 1 or 3 channels"):
        F.check_images(np.zeros((2, 8, 8, 2)))
    with pytest.raises(ValueError, match=r"`real` must be float in \[0, 1\]"):
        F.check_images(np.full((2, 8, 8, 1), 255.0), "real")


def test_resize_images_tiles_and_averages_channels():
    gray = np.random.default_rng(0).uniform(size=(2, 16, 16, 1)).astype("float32")
    rgb = F.resize_images(gray, 16, 3)
    assert rgb.shape == (2, 16, 16, 3)
    np.testing.assert_allclose(F.resize_images(rgb, 8, 1), F.resize_images(gray, 8, 1), atol=1e-6)


def test_build_classifier_has_feature_layer():
    model = F.build_classifier(32, 1, num_classes=3)
    assert model.output_shape == (None, 3)
    assert model.get_layer("features").output.shape == (None, F.DOMAIN_FEATURE_DIMS)
    with pytest.raises(ValueError, match="image_size"):
        F.build_classifier(4, 1)


def test_domain_encoder_trains_caches_and_reloads(tmp_path):
    images, labels = class_images(6)
    encoder = F.DomainEncoder.fit(images, labels, cache_dir=tmp_path, epochs=2, min_steps=0)
    assert not encoder.loaded_from_cache and encoder.path.is_file()
    assert encoder.name.startswith("domain_encoder_") and encoder.path.stem == encoder.name
    first = encoder(images)
    assert first.shape == (len(images), F.DOMAIN_FEATURE_DIMS) and first.dtype == np.float32
    assert np.mean(first**2) == pytest.approx(1.0, rel=1e-3)  # normalised for KID's kernel
    mtime = os.path.getmtime(encoder.path)

    again = F.DomainEncoder.fit(images, labels, cache_dir=tmp_path, epochs=2, min_steps=0)
    assert again.loaded_from_cache and again.name == encoder.name
    assert os.path.getmtime(again.path) == mtime  # reloaded, not retrained and re-saved
    np.testing.assert_allclose(again(images), first, rtol=1e-5, atol=1e-6)

    other = F.DomainEncoder.fit(images[:-1], labels[:-1], cache_dir=tmp_path, epochs=2, min_steps=0)
    assert other.name != encoder.name  # other data, other key


def test_normalize_feature_scale_keeps_logits():
    images, _ = class_images(2)
    model = F.build_classifier(32, 1)
    logits = model.predict(images, verbose=0)
    scale = F.normalize_feature_scale(model, images)
    assert scale > 0
    np.testing.assert_allclose(model.predict(images, verbose=0), logits, rtol=1e-4, atol=1e-5)
    features = keras.Model(model.input, model.get_layer("features").output).predict(images, verbose=0)
    assert np.mean(features**2) == pytest.approx(1.0, rel=1e-4)


def test_domain_encoder_accepts_other_sizes_and_channels(tmp_path):
    images, labels = class_images(3)
    encoder = F.DomainEncoder.fit(images, labels, cache_dir=tmp_path, epochs=1, min_steps=0)
    rgb = np.repeat(class_images(1, size=48)[0], 3, axis=-1)
    assert encoder(rgb).shape == (3, F.DOMAIN_FEATURE_DIMS)
    assert encoder.predict_labels(rgb).shape == (3,)
    reloaded = F.DomainEncoder.load(encoder.path)
    np.testing.assert_allclose(reloaded(images), encoder(images), rtol=1e-5, atol=1e-6)


def test_auto_falls_back_to_domain_encoder_without_weights(no_inception_weights, tmp_path, caplog):
    images, labels = class_images(3)
    with caplog.at_level(logging.INFO, logger="lungkit.features"):
        extractor = F.get_feature_extractor("auto", images, labels, cache_dir=tmp_path, epochs=1)
    assert isinstance(extractor, F.DomainEncoder)
    assert "no InceptionV3 weights" in caplog.text
    with pytest.raises(FileNotFoundError, match="kind='inception'"):
        F.get_feature_extractor("inception")


def test_auto_picks_inception_when_cache_file_exists(tmp_path, monkeypatch):
    cache = tmp_path / "models"
    cache.mkdir()
    (cache / F.INCEPTION_WEIGHTS_FILE).write_bytes(b"fake")
    monkeypatch.setattr(F, "keras_cache_dir", lambda: cache)
    monkeypatch.setattr(F, "build_inception", tiny_inception)
    extractor = F.get_feature_extractor("auto")  # no train images needed
    assert isinstance(extractor, F.InceptionFeatures)
    assert extractor.name == "inception_v3"
    assert extractor.weights_path == cache / F.INCEPTION_WEIGHTS_FILE
    gray = class_images(1, size=16)[0]  # 1 channel, 16 px: tiled to RGB, resized to 299
    assert extractor(gray).shape == (3, 8)


def test_explicit_weights_path(tmp_path, monkeypatch, no_inception_weights):
    monkeypatch.setattr(F, "build_inception", tiny_inception)
    weights = tmp_path / "my_inception.h5"
    weights.write_bytes(b"fake")
    extractor = F.get_feature_extractor("inception", weights=weights)
    assert extractor.weights_path == weights
    with pytest.raises(FileNotFoundError, match="weights="):
        F.get_feature_extractor("auto", weights=tmp_path / "missing.h5")


def test_get_feature_extractor_argument_errors(no_inception_weights):
    with pytest.raises(ValueError, match="`kind` must be one of"):
        F.get_feature_extractor("vgg")
    with pytest.raises(ValueError, match="train_images"):
        F.get_feature_extractor("domain")
