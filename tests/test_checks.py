"""Tests for lungkit.checks: each check accepts what it should, refuses the rest by name."""

import numpy as np
import pytest

from lungkit import checks


def test_check_int_bounds_and_types():
    assert checks.check_int("n", np.int64(3)) == 3 and type(checks.check_int("n", 3)) is int
    assert checks.check_int("size", 32, low=32, high=256) == 32
    for bad in (0, -1, 2.0, True, "3", None):
        with pytest.raises(ValueError, match=r"`n` must be an integer >= 1\. Received: n="):
            checks.check_int("n", bad)
    with pytest.raises(ValueError, match=r"in \[32, 256\]\. Received: size=512"):
        checks.check_int("size", 512, low=32, high=256)
    assert checks.check_optional_int("limit", None) is None
    assert checks.check_int("units", 0, low=0) == 0


def test_check_number_intervals():
    assert checks.check_number("beta", 0) == 0.0
    assert checks.check_number("p", 0.5, 0, 1, high_open=True) == 0.5
    with pytest.raises(ValueError, match=r"`p` must be a finite number in \[0, 1\)\. Received: p=1"):
        checks.check_number("p", 1, 0, 1, high_open=True)
    with pytest.raises(ValueError, match=r"in \(0, inf\)"):
        checks.check_number("lr", 0.0, low=0, low_open=True)
    for bad in (float("nan"), float("inf"), True, "1", None):
        with pytest.raises(ValueError, match="finite number"):
            checks.check_number("x", bad)


def test_choices_tuples_seeds_channels():
    assert checks.check_choice("kind", "bce", ("bce", "mse")) == "bce"
    with pytest.raises(ValueError, match=r"one of \('bce', 'mse'\)\. Received: kind='l2'"):
        checks.check_choice("kind", "l2", ("bce", "mse"))
    assert checks.check_int_tuple("widths", [8, 16]) == (8, 16)
    for bad in ((), "816", (8, 0), (8, 1.5), 8):
        with pytest.raises(ValueError, match="`widths` must"):
            checks.check_int_tuple("widths", bad)
    with pytest.raises(ValueError, match="at least 2"):
        checks.check_int_tuple("widths", (8,), min_length=2)
    assert checks.check_seed("seed", None) is None and checks.check_seed("seed", 3) == 3
    with pytest.raises(ValueError, match="`seed` must be an integer or None"):
        checks.check_seed("seed", 1.5)
    assert checks.check_channels(1) == 1
    with pytest.raises(ValueError, match="`channels` must be 1 or 3. Received: channels=2"):
        checks.check_channels(2)


def test_check_images_names_the_problem():
    images = np.full((2, 8, 8, 1), 0.5, "float32")
    assert checks.check_images(images).dtype == np.float32
    np.testing.assert_array_equal(checks.check_images(images + 5e-4), np.minimum(images + 5e-4, 1))
    with pytest.raises(ValueError, match="NHWC with 1 or 3 channel"):
        checks.check_images(np.zeros((2, 8, 8, 2)))
    with pytest.raises(ValueError, match=r"`real` must be float in \[0, 1\]"):
        checks.check_images(np.full((2, 8, 8, 1), 255.0), "real")
    with pytest.raises(ValueError, match="at least one image"):
        checks.check_images(np.zeros((0, 8, 8, 1)))
    with pytest.raises(ValueError, match="must be 16x16 px"):
        checks.check_images(images, size=16)
    with pytest.raises(ValueError, match="NHWC with 3 channel"):
        checks.check_images(images, channels=3)
    nan = images.copy()
    nan[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"`x` must be finite: 1 value\(s\) are NaN"):
        checks.check_images(nan, "x")
    with pytest.raises(ValueError, match="float array"):
        checks.check_images(np.array([["a"]]))
