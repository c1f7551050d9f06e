"""Tests for lungkit.evaluation.common: the image checks and resizing every metric uses."""

import numpy as np
import pytest

from lungkit.evaluation import common


def test_check_images_names_the_problem():
    with pytest.raises(ValueError, match="NHWC with 1 or 3 channels"):
        common.check_images(np.zeros((2, 8, 8, 2)))
    with pytest.raises(ValueError, match=r"`real` must be float in \[0, 1\]"):
        common.check_images(np.full((2, 8, 8, 1), 255.0), "real")


def test_resize_images_tiles_and_averages_channels():
    gray = np.random.default_rng(0).uniform(size=(2, 16, 16, 1)).astype("float32")
    rgb = common.resize_images(gray, 16, 3)
    assert rgb.shape == (2, 16, 16, 3)
    np.testing.assert_allclose(common.resize_images(rgb, 8, 1), common.resize_images(gray, 8, 1), atol=1e-6)
