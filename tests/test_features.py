"""Tests for lungkit.features and lungkit.domain_encoder: extractor choice without network, the
cached domain encoder, and that its features rank real, noisy, blurred and random images as a
distance should."""

import logging
import os

import keras
import numpy as np
import pytest
from scipy import ndimage
from toy_data import class_images

from lungkit import domain_encoder as D
from lungkit import features as F
from lungkit import metrics as M

FAST = {"epochs": 1, "min_steps": 0, "steps": 10}  # a domain encoder in about a second


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
    assert model.get_layer("features").output.shape == (None, F.CLASSIFIER_FEATURE_DIMS)
    with pytest.raises(ValueError, match="image_size"):
        F.build_classifier(4, 1)


def test_arcsinh_layer_matches_numpy():
    x = np.linspace(-300, 300, 13, dtype="float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(F.Arcsinh()(x)), np.arcsinh(x), rtol=1e-5)


def test_global_std_pooling_matches_numpy_and_round_trips():
    x = np.random.default_rng(0).normal(size=(2, 5, 6, 3)).astype("float32")
    layer = F.GlobalStdPooling2D()
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x)), x.std(axis=(1, 2)), rtol=1e-4)
    clone = keras.layers.deserialize(keras.layers.serialize(layer))
    assert isinstance(clone, F.GlobalStdPooling2D)


def test_build_domain_autoencoder_outputs_and_errors():
    model = F.build_domain_autoencoder(32, 1)
    out = model(np.zeros((2, 32, 32, 1), "float32"))
    assert out["reconstruction"].shape == (2, 32, 32, 1) and out["degradation"].shape == (2, 2)
    assert model.get_layer("pooled").output.shape == (None, F.DOMAIN_FEATURE_DIMS)
    with pytest.raises(ValueError, match="multiple of 8"):
        F.build_domain_autoencoder(20, 1)
    with pytest.raises(ValueError, match="`channels` must be 1 or 3"):
        F.build_domain_autoencoder(32, 2)


def test_degrade_images_levels_match_what_was_done():
    images = np.full((200, 16, 16, 1), 0.5, "float32")
    images[:, 8:] = 0.7  # an edge, so blur changes pixels
    degraded, levels = F.degrade_images(images, np.random.default_rng(0))
    assert degraded.shape == images.shape and degraded.dtype == np.float32
    assert 0.0 <= degraded.min() and degraded.max() <= 1.0 and levels.shape == (200, 2)
    assert 0.0 <= levels.min() and levels.max() <= 1.0
    untouched = (levels == 0).all(axis=1)
    assert 0.1 < untouched.mean() < 0.4  # P(no noise and no blur) = 0.25
    np.testing.assert_array_equal(degraded[untouched], images[untouched])
    noisy_only = (levels[:, 0] > 0.5) & (levels[:, 1] == 0)
    residual = (degraded[noisy_only] - images[noisy_only]).std(axis=(1, 2, 3))
    np.testing.assert_allclose(residual, levels[noisy_only, 0] * F.MAX_NOISE_STD, rtol=0.2)


def test_feature_standardization_floors_constant_dims():
    rng = np.random.default_rng(0)
    features = np.stack([rng.normal(3, 2, 500), rng.normal(0, 1, 500), np.zeros(500)], axis=1)
    mean, variance = F.feature_standardization(features, floor=1.0)
    np.testing.assert_allclose(mean, features.mean(0), atol=1e-6)
    median = np.median(features.std(0))  # 1: the constant dimension gets variance 1, not 0
    np.testing.assert_allclose(variance, features.var(0) + median**2, rtol=1e-5)


def test_domain_encoder_trains_caches_and_reloads(tmp_path):
    images, labels = class_images(6)
    encoder = F.DomainEncoder.fit(images, labels, cache_dir=tmp_path, **FAST)
    assert not encoder.loaded_from_cache and encoder.path.is_file()
    assert encoder.name.startswith("domain_encoder_") and encoder.path.stem == encoder.name
    first = encoder(images)
    assert first.shape == (len(images), F.DOMAIN_FEATURE_DIMS) and first.dtype == np.float32
    # Standardized once with the training images (then asinh): centred there, std <= 1.
    standardized = np.sinh(first)
    np.testing.assert_allclose(standardized.mean(axis=0), 0.0, atol=1e-4)
    assert standardized.std(axis=0).max() <= 1.0 + 1e-4
    mtime = os.path.getmtime(encoder.path)

    again = F.DomainEncoder.fit(images, labels, cache_dir=tmp_path, **FAST)
    assert again.loaded_from_cache and again.name == encoder.name
    assert os.path.getmtime(again.path) == mtime  # reloaded, not retrained and re-saved
    np.testing.assert_allclose(again(images), first, rtol=1e-5, atol=1e-5)
    # The scale is fixed: another set is not standardized on its own statistics.
    assert np.abs(again(images[:3]).mean(axis=0)).max() > 0.1

    other = F.DomainEncoder.fit(images[:-1], labels[:-1], cache_dir=tmp_path, **FAST)
    assert other.name != encoder.name  # other data, other key


def test_cache_key_carries_the_encoder_version(tmp_path, monkeypatch):
    images, labels = class_images(2)
    encoder = F.DomainEncoder.fit(images, labels, cache_dir=tmp_path, **FAST)
    monkeypatch.setattr(D, "DOMAIN_ENCODER_VERSION", D.DOMAIN_ENCODER_VERSION + 1)
    newer = F.DomainEncoder.fit(images, labels, cache_dir=tmp_path, **FAST)
    assert newer.name != encoder.name and not newer.loaded_from_cache


def test_domain_encoder_accepts_other_sizes_and_channels(tmp_path):
    images, labels = class_images(3, size=28)  # not a multiple of 8: the encoder uses 32
    encoder = F.DomainEncoder.fit(images, labels, cache_dir=tmp_path, **FAST)
    assert encoder.image_size == 32
    rgb = np.repeat(class_images(1, size=48)[0], 3, axis=-1)
    assert encoder(rgb).shape == (3, F.DOMAIN_FEATURE_DIMS)
    assert encoder.predict_labels(rgb).shape == (3,)
    reloaded = F.DomainEncoder.load(encoder.path)
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
    encoder = F.DomainEncoder.fit(images[~held_out], labels[~held_out],
                                  cache_dir=tmp_path_factory.mktemp("encoder"),
                                  epochs=1, min_steps=0, steps=150)
    return encoder, images[~held_out], images[held_out]


def distances(encoder, reference, images):
    """`(fid, kid_mean)` of `images` against the `reference` set's features."""
    features = encoder(images)
    return M.fid(features, reference), M.kid(features, reference)[0]


def test_domain_features_rank_noise_blur_and_random(phantom_features):
    encoder, train, held_out = phantom_features
    reference = encoder(train)
    rng = np.random.default_rng(1)
    clean = distances(encoder, reference, held_out)
    noisy = [distances(encoder, reference,
                       np.clip(held_out + rng.normal(0, std, held_out.shape), 0, 1))
             for std in (0.05, 0.1, 0.2)]
    half = held_out.shape[1] // 2  # a VAE-like blur: down to half size and back
    blurred = distances(encoder, reference, F.resize_images(F.resize_images(held_out, half, 1),
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
    _, kid_std = M.kid(random, encoder(train), subsets=20, subset_size=16)
    assert kid_std > 0
    assert len(np.unique(features.round(4), axis=0)) == len(held_out)  # no two images alike


def test_auto_falls_back_to_domain_encoder_without_weights(no_inception_weights, tmp_path, caplog):
    images, labels = class_images(3)
    with caplog.at_level(logging.INFO, logger="lungkit.features"):
        extractor = F.get_feature_extractor("auto", images, labels, cache_dir=tmp_path, epochs=1,
                                            steps=10)
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


def test_classifier_learns_translated_classes_and_generalises():
    """Toy classes whose cue sits anywhere in the image (a disc at a random place): after a few
    hundred augmented steps the CNN labels held-out images, not just the training ones, and
    blurred ones (generated slices are blurrier than real ones) as well as sharp ones."""
    images, labels = class_images(40, size=32, seed=0)
    held_out, held_labels = class_images(10, size=32, seed=1)
    model = F.train_classifier(images, labels, steps=300, seed=0)
    assert model.optimizer.iterations.numpy() == 300
    accuracy = (F.predict_labels(model, held_out) == held_labels).mean()
    assert accuracy >= 0.9, accuracy
    blurred = ndimage.gaussian_filter(held_out, (0, 1.2, 1.2, 0))
    accuracy = (F.predict_labels(model, blurred) == held_labels).mean()
    assert accuracy >= 0.9, accuracy


def test_classifier_augments_only_in_training():
    images, _ = class_images(2, size=32)
    model = F.build_classifier(32, 1, seed=3)
    inference = [keras.ops.convert_to_numpy(model(images, training=False)) for _ in range(2)]
    np.testing.assert_array_equal(inference[0], inference[1])
    plain = F.build_classifier(32, 1, augment=False)
    plain.set_weights(model.get_weights())  # augmentation layers hold no weights
    np.testing.assert_allclose(keras.ops.convert_to_numpy(plain(images, training=False)),
                               inference[0], rtol=1e-5, atol=1e-6)
    training = keras.ops.convert_to_numpy(model(images, training=True))
    assert not np.allclose(training, inference[0])
    blur = [layer for layer in model.layers if isinstance(layer, keras.layers.RandomGaussianBlur)]
    assert len(blur) == 1 and blur[0].sigma == (0.1, F.AUGMENT_BLUR_SIGMA)


def test_train_classifier_checks_steps():
    images, labels = class_images(2, size=16)
    with pytest.raises(ValueError, match=r"`steps` must be a positive int or None. Received: steps=0"):
        F.train_classifier(images, labels, steps=0)


def test_load_or_train_classifier_caches_by_data_and_options(tmp_path):
    images, labels = class_images(4, size=16)
    model = F.load_or_train_classifier(images, labels, tmp_path, steps=5)
    files = list(tmp_path.glob("ct_classifier_*.keras"))
    assert [f.stem for f in files] == [model.name]
    again = F.load_or_train_classifier(images, labels, tmp_path, steps=5, progress=True)
    assert again.name == model.name  # a progress bar is no reason to train again
    np.testing.assert_array_equal(F.predict_labels(again, images), F.predict_labels(model, images))
    other = F.load_or_train_classifier(images, labels, tmp_path, steps=6)
    assert other.name != model.name and len(list(tmp_path.glob("*.keras"))) == 2


def _logits(model, images):
    return keras.ops.convert_to_numpy(model(images, training=False))


def test_ensemble_logits_are_the_log_of_the_members_mean_probability():
    images, _ = class_images(2, size=16)
    members = [F.build_classifier(16, 1, widths=(4, 8), seed=seed) for seed in (0, 1, 2)]
    probabilities = [keras.ops.convert_to_numpy(keras.ops.softmax(_logits(m, images)))
                     for m in members]
    assert not np.allclose(probabilities[0], probabilities[1])  # the members differ
    ensemble = F.ensemble_classifiers(members)
    np.testing.assert_allclose(np.exp(_logits(ensemble, images)), np.mean(probabilities, axis=0),
                               rtol=1e-5, atol=1e-7)
    mean = np.mean(probabilities, axis=0)
    np.testing.assert_array_equal(F.predict_labels(ensemble, images), mean.argmax(axis=1))
    assert [m.name for m in members] == [f"ct_classifier_ensemble_{k}" for k in range(3)]


def test_ensemble_of_one_member_keeps_its_probabilities_and_floors_zero():
    member = F.build_classifier(16, 1, widths=(4, 8))
    images, _ = class_images(1, size=16)
    single = F.ensemble_classifiers([member])
    np.testing.assert_allclose(np.exp(_logits(single, images)),
                               keras.ops.convert_to_numpy(keras.ops.softmax(_logits(member, images))),
                               rtol=1e-5, atol=1e-7)
    floored = keras.ops.convert_to_numpy(F.LogProbabilities()(np.array([[0.0, 1.0]], "float32")))
    np.testing.assert_allclose(floored, [[np.log(F.LOG_PROBABILITY_FLOOR), 0.0]], rtol=1e-6)


def test_ensemble_classifiers_checks_its_members():
    with pytest.raises(ValueError, match=r"`members` must hold at least one classifier"):
        F.ensemble_classifiers([])
    mixed = [F.build_classifier(16, 1, widths=(4, 8)), F.build_classifier(32, 1, widths=(4, 8))]
    with pytest.raises(ValueError, match=r"one input shape and class count. Received input "
                                         r"shapes \[\(16, 16, 1\), \(32, 32, 1\)\]"):
        F.ensemble_classifiers(mixed)
    images, labels = class_images(2, size=16)
    for members in (0, 1.5, True):
        with pytest.raises(ValueError, match=rf"`members` must be a positive int. Received: "
                                             rf"members={members!r}"):
            F.train_classifier_ensemble(images, labels, members=members, steps=1)


def test_trained_ensemble_learns_saves_and_reloads(tmp_path):
    images, labels = class_images(40, size=32, seed=0)
    held_out, held_labels = class_images(10, size=32, seed=1)
    model = F.load_or_train_classifier(images, labels, tmp_path, members=2, steps=300, seed=4)
    members = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    assert len(members) == 2 and all(m.optimizer.iterations.numpy() == 300 for m in members)
    augmentations = [[layer.seed for layer in m.layers if isinstance(layer, keras.layers.RandomFlip)]
                     for m in members]
    assert augmentations == [[4], [5]]  # member k augments with seed + k
    assert (F.predict_labels(model, held_out) == held_labels).mean() >= 0.9
    reloaded = F.load_or_train_classifier(images, labels, tmp_path, members=2, steps=300, seed=4)
    assert reloaded.name == model.name and len(list(tmp_path.glob("*.keras"))) == 1
    np.testing.assert_allclose(_logits(reloaded, held_out), _logits(model, held_out), rtol=1e-6)
    plain = F.train_classifier_ensemble(images[:6], labels[:6], members=1, steps=2)
    assert plain.name == "ct_classifier"  # one member: the classifier itself, no wrapper


def test_ensemble_progress_bars_name_each_member(capsys):
    images, labels = class_images(2, size=16)
    F.train_classifier_ensemble(images, labels, members=2, steps=1, widths=(4, 8), progress=True)
    err = capsys.readouterr().err
    assert "classifier 1/2" in err and "classifier 2/2" in err
