"""Tests for lungkit.evaluation.common: resizing and the extractor interface."""

import numpy as np

from lungkit.evaluation import common


def test_resize_images_tiles_and_averages_channels():
    gray = np.random.default_rng(0).uniform(size=(2, 16, 16, 1)).astype("float32")
    rgb = common.resize_images(gray, 16, 3)
    assert rgb.shape == (2, 16, 16, 3)
    np.testing.assert_allclose(common.resize_images(rgb, 8, 1), common.resize_images(gray, 8, 1), atol=1e-6)
