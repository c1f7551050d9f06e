"""Tests for lungkit.evaluation.classifier: the CT classifier learns, augments only in
training, caches by data and options, and ensembles average probabilities."""

import keras
import numpy as np
import pytest
from scipy import ndimage
from toy_data import class_images

from lungkit.evaluation import classifier as C


def test_build_classifier_has_feature_layer():
    model = C.build_classifier(32, 1, num_classes=3)
    assert model.output_shape == (None, 3)
    assert model.get_layer("features").output.shape == (None, C.CLASSIFIER_FEATURE_DIMS)
    with pytest.raises(ValueError, match="image_size"):
        C.build_classifier(4, 1)


def test_classifier_learns_translated_classes_and_generalises():
    """Toy classes whose cue sits anywhere in the image (a disc at a random place): after a few
    hundred augmented steps the CNN labels held-out images, not just the training ones, and
    blurred ones (generated slices are blurrier than real ones) as well as sharp ones."""
    images, labels = class_images(40, size=32, seed=0)
    held_out, held_labels = class_images(10, size=32, seed=1)
    model = C.train_classifier(images, labels, steps=300, seed=0)
    assert model.optimizer.iterations.numpy() == 300
    accuracy = (C.predict_labels(model, held_out) == held_labels).mean()
    assert accuracy >= 0.9, accuracy
    blurred = ndimage.gaussian_filter(held_out, (0, 1.2, 1.2, 0))
    accuracy = (C.predict_labels(model, blurred) == held_labels).mean()
    assert accuracy >= 0.9, accuracy


def test_classifier_augments_only_in_training():
    images, _ = class_images(2, size=32)
    model = C.build_classifier(32, 1, seed=3)
    inference = [keras.ops.convert_to_numpy(model(images, training=False)) for _ in range(2)]
    np.testing.assert_array_equal(inference[0], inference[1])
    plain = C.build_classifier(32, 1, augment=False)
    plain.set_weights(model.get_weights())  # augmentation layers hold no weights
    np.testing.assert_allclose(keras.ops.convert_to_numpy(plain(images, training=False)),
                               inference[0], rtol=1e-5, atol=1e-6)
    training = keras.ops.convert_to_numpy(model(images, training=True))
    assert not np.allclose(training, inference[0])
    blur = [layer for layer in model.layers if isinstance(layer, keras.layers.RandomGaussianBlur)]
    assert len(blur) == 1 and blur[0].sigma == (0.1, C.AUGMENT_BLUR_SIGMA)


def test_train_classifier_checks_steps():
    images, labels = class_images(2, size=16)
    with pytest.raises(ValueError, match=r"`steps` must be an integer >= 1. Received: steps=0"):
        C.train_classifier(images, labels, steps=0)


def test_load_or_train_classifier_caches_by_data_and_options(tmp_path):
    images, labels = class_images(4, size=16)
    model = C.load_or_train_classifier(images, labels, tmp_path, steps=5)
    files = list(tmp_path.glob("ct_classifier_*.keras"))
    assert [f.stem for f in files] == [model.name]
    again = C.load_or_train_classifier(images, labels, tmp_path, steps=5, progress=True)
    assert again.name == model.name  # a progress bar is no reason to train again
    np.testing.assert_array_equal(C.predict_labels(again, images), C.predict_labels(model, images))
    other = C.load_or_train_classifier(images, labels, tmp_path, steps=6)
    assert other.name != model.name and len(list(tmp_path.glob("*.keras"))) == 2


def _logits(model, images):
    return keras.ops.convert_to_numpy(model(images, training=False))


def test_ensemble_logits_are_the_log_of_the_members_mean_probability():
    images, _ = class_images(2, size=16)
    members = [C.build_classifier(16, 1, widths=(4, 8), seed=seed) for seed in (0, 1, 2)]
    probabilities = [keras.ops.convert_to_numpy(keras.ops.softmax(_logits(m, images)))
                     for m in members]
    assert not np.allclose(probabilities[0], probabilities[1])  # the members differ
    ensemble = C.ensemble_classifiers(members)
    np.testing.assert_allclose(np.exp(_logits(ensemble, images)), np.mean(probabilities, axis=0),
                               rtol=1e-5, atol=1e-7)
    mean = np.mean(probabilities, axis=0)
    np.testing.assert_array_equal(C.predict_labels(ensemble, images), mean.argmax(axis=1))
    assert [m.name for m in members] == [f"ct_classifier_ensemble_{k}" for k in range(3)]


def test_ensemble_of_one_member_keeps_its_probabilities_and_floors_zero():
    member = C.build_classifier(16, 1, widths=(4, 8))
    images, _ = class_images(1, size=16)
    single = C.ensemble_classifiers([member])
    np.testing.assert_allclose(np.exp(_logits(single, images)),
                               keras.ops.convert_to_numpy(keras.ops.softmax(_logits(member, images))),
                               rtol=1e-5, atol=1e-7)
    floored = keras.ops.convert_to_numpy(C.LogProbabilities()(np.array([[0.0, 1.0]], "float32")))
    np.testing.assert_allclose(floored, [[np.log(C.LOG_PROBABILITY_FLOOR), 0.0]], rtol=1e-6)


def test_ensemble_classifiers_checks_its_members():
    with pytest.raises(ValueError, match=r"`members` must hold at least one classifier"):
        C.ensemble_classifiers([])
    mixed = [C.build_classifier(16, 1, widths=(4, 8)), C.build_classifier(32, 1, widths=(4, 8))]
    with pytest.raises(ValueError, match=r"one input shape and class count. Received input "
                                         r"shapes \[\(16, 16, 1\), \(32, 32, 1\)\]"):
        C.ensemble_classifiers(mixed)
    images, labels = class_images(2, size=16)
    for members in (0, 1.5, True):
        with pytest.raises(ValueError, match=rf"`members` must be an integer >= 1. Received: "
                                             rf"members={members!r}"):
            C.train_classifier_ensemble(images, labels, members=members, steps=1)


def test_trained_ensemble_learns_saves_and_reloads(tmp_path):
    images, labels = class_images(40, size=32, seed=0)
    held_out, held_labels = class_images(10, size=32, seed=1)
    model = C.load_or_train_classifier(images, labels, tmp_path, members=2, steps=300, seed=4)
    members = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    assert len(members) == 2 and all(m.optimizer.iterations.numpy() == 300 for m in members)
    augmentations = [[layer.seed for layer in m.layers if isinstance(layer, keras.layers.RandomFlip)]
                     for m in members]
    assert augmentations == [[4], [5]]  # member k augments with seed + k
    assert (C.predict_labels(model, held_out) == held_labels).mean() >= 0.9
    reloaded = C.load_or_train_classifier(images, labels, tmp_path, members=2, steps=300, seed=4)
    assert reloaded.name == model.name and len(list(tmp_path.glob("*.keras"))) == 1
    np.testing.assert_allclose(_logits(reloaded, held_out), _logits(model, held_out), rtol=1e-6)
    plain = C.train_classifier_ensemble(images[:6], labels[:6], members=1, steps=2)
    assert plain.name == "ct_classifier"  # one member: the classifier itself, no wrapper


def test_ensemble_progress_bars_name_each_member(capsys):
    images, labels = class_images(2, size=16)
    C.train_classifier_ensemble(images, labels, members=2, steps=1, widths=(4, 8), progress=True)
    err = capsys.readouterr().err
    assert "classifier 1/2" in err and "classifier 2/2" in err
