"""Tests for lungkit.evaluation.features: the extractor choice, without the network."""

import logging

import keras
import pytest
from toy_data import class_images

from lungkit.evaluation import domain_encoder as D
from lungkit.evaluation import features as F


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


def test_auto_falls_back_to_domain_encoder_without_weights(no_inception_weights, tmp_path, caplog):
    images, labels = class_images(3)
    with caplog.at_level(logging.INFO, logger="lungkit.evaluation.features"):
        extractor = F.get_feature_extractor("auto", images, labels, cache_dir=tmp_path, epochs=1,
                                            steps=10)
    assert isinstance(extractor, D.DomainEncoder)
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
