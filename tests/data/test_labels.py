"""Tests for lungkit.data.labels: names and aliases map to labels, helpers count and split them."""

import numpy as np
import pytest

from lungkit.data.labels import (
    CLASS_NAMES,
    NUM_CLASSES,
    balanced_labels,
    check_labels,
    class_counts,
    class_label,
    labels_from_counts,
    resolve_labels,
)


def test_class_names_and_aliases_map_to_labels():
    assert CLASS_NAMES == ("Normal", "Benign", "Malignant") and NUM_CLASSES == 3
    for name, label in [("normal", 0), ("Bengin", 1), ("BENIGN", 1), ("Malignant cases", 2),
                        (" bengin case ", 1), (2, 2), (np.int64(0), 0)]:
        assert class_label(name) == label
    for bad in ("cancer", 3, -1, True, 1.0, None):
        with pytest.raises(ValueError, match=r"`classes` must be one of .*Received: classes="):
            class_label(bad, "classes")


def test_resolve_labels_accepts_one_label_or_one_per_image():
    np.testing.assert_array_equal(resolve_labels("BENGIN", 2), [1, 1])
    np.testing.assert_array_equal(resolve_labels(["normal", "Benign", 2], 3), [0, 1, 2])
    assert resolve_labels(1, 4).dtype == np.int32
    with pytest.raises(ValueError, match="one label or 3 labels. Received 2"):
        resolve_labels([0, 1], 3)
    with pytest.raises(ValueError, match="label='cancer'"):
        resolve_labels("cancer", 1)
    with pytest.raises(ValueError, match=r"integer in \[0, 1\].*label=2"):
        resolve_labels(2, 1, num_classes=2)


def test_check_labels_names_length_range_and_type():
    np.testing.assert_array_equal(check_labels([0, 2, 1], 3), [0, 2, 1])
    with pytest.raises(ValueError, match="one label per image \\(2\\). Received 3"):
        check_labels([0, 1, 2], 2)
    with pytest.raises(ValueError, match=r"`train_labels` must lie in \[0, 2\]"):
        check_labels([0, 3], 2, name="train_labels")
    with pytest.raises(ValueError, match="must be integers"):
        check_labels([0.5, 1.0], 2)


def test_balanced_labels_counts_and_their_inverse():
    labels = balanced_labels(7)
    np.testing.assert_array_equal(labels, [0, 0, 0, 1, 1, 2, 2])
    assert class_counts(labels) == [3, 2, 2]
    assert class_counts(balanced_labels(48)) == [16, 16, 16]
    np.testing.assert_array_equal(labels_from_counts(class_counts(labels)), labels)
    assert class_counts([2, 2]) == [0, 0, 2]
