"""Argument checks shared by every public constructor, loader and metric.

Each check raises `ValueError` (or `TypeError` for a wrong kind of object) whose message names
the argument, says what was expected and shows what arrived, in the form Keras uses:
"`batch_size` must be an integer >= 1. Received: batch_size=0". Each returns the value
normalised (a Python int, a float, a tuple), so a constructor can check and store in one line.
numpy only: data, models and evaluation all import it.
"""

import math

import numpy as np

IMAGE_RANGE_TOLERANCE = 1e-3  # how far outside [0, 1] a float image may stray (round-off)
# The option values `lungkit.training` accepts, here so that TensorFlow-free callers (the CLI,
# the experiment config) refuse a bad one before anything is loaded.
STRATEGIES = ("auto", "cpu", "mirrored", "multiworker", "tpu")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
# feature spaces of FID/KID: all that exist, without InceptionV3, or InceptionV3 required
FEATURE_CHOICES = ("auto", "inception", "domain")
# Seconds of training between checkpoints by default (`lungkit.training.callbacks.Checkpoint`):
# a checkpoint of a demo-size U-Net takes about a second on a CPU, a third of a 3-second epoch.
SAVE_SECONDS = 30.0


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_int(name, value, low=1, high=None):
    """An integer in `[low, high]` (`high` None: no upper bound); returns it as a Python int."""
    if not _is_int(value) or value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"`{name}` must be an integer {bound}. Received: {name}={value!r}")
    return int(value)


def check_optional_int(name, value, low=1, high=None):
    """None, or an integer as `check_int` accepts it."""
    return None if value is None else check_int(name, value, low, high)


def check_number(name, value, low=None, high=None, low_open=False, high_open=False):
    """A finite real number within the given bounds; returns it as a float.

    Args:
        low, high: bounds (None: unbounded on that side).
        low_open, high_open: exclude the bound itself (`(0, 1)` instead of `[0, 1]`).
    """
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    ok = ok and math.isfinite(float(value))
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        left = "-inf" if low is None else f"{low:g}"
        right = "inf" if high is None else f"{high:g}"
        interval = f"{'(' if low_open or low is None else '['}{left}, {right}" \
                   f"{')' if high_open or high is None else ']'}"
        raise ValueError(f"`{name}` must be a finite number in {interval}. "
                         f"Received: {name}={value!r}")
    return float(value)


def check_choice(name, value, choices):
    """One of `choices` (compared with `==`); the message lists them."""
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {tuple(choices)}. Received: {name}={value!r}")
    return value


def check_int_tuple(name, values, low=1, min_length=1):
    """A non-empty sequence of integers >= `low`; returns a tuple of Python ints."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__") \
            or len(values) < min_length:
        raise ValueError(f"`{name}` must be a sequence of at least {min_length} integer(s) >= "
                         f"{low}. Received: {name}={values!r}")
    for value in values:
        if not _is_int(value) or value < low:
            raise ValueError(f"`{name}` must hold integers >= {low}. Received: {name}={values!r}")
    return tuple(int(value) for value in values)


def check_seed(name, value):
    """None or an integer seed."""
    if value is not None and not _is_int(value):
        raise ValueError(f"`{name}` must be an integer or None. Received: {name}={value!r}")
    return None if value is None else int(value)


def check_channels(channels, name="channels"):
    """1 (grayscale CT) or 3 (RGB, as the paper loads its JPGs)."""
    if not _is_int(channels) or channels not in (1, 3):
        raise ValueError(f"`{name}` must be 1 or 3. Received: {name}={channels!r}")
    return int(channels)


def check_finite(name, values):
    """Refuses NaN or infinite values in a float array by `name` (they would train a NaN model).

    Returns the array unchanged; integer and bool arrays pass without a scan.
    """
    values = np.asarray(values)
    if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
        bad = int(np.size(values) - np.isfinite(values).sum())
        raise ValueError(f"`{name}` must be finite: {bad} value(s) are NaN or infinite.")
    return values


def check_images(images, name="images", size=None, channels=None, clip=True):
    """An NHWC batch of float images in [0, 1], as every lungkit boundary takes them.

    Args:
        images: array-like `(N, H, W, C)`, C in (1, 3), N >= 1, floats in [0, 1] (values up
            to `IMAGE_RANGE_TOLERANCE` outside are round-off and clipped).
        size: the required `H == W`, or None for any.
        channels: the required C, or None for 1 or 3.
        clip: return the batch clipped to [0, 1].

    Returns:
        float32 numpy `(N, H, W, C)`.

    Raises:
        ValueError: naming `name` when the rank, size, channel count, value range is wrong,
            or a value is NaN or infinite.
    """
    images = np.asarray(images)
    if images.dtype == object or not (np.issubdtype(images.dtype, np.floating)
                                      or np.issubdtype(images.dtype, np.integer)):
        raise ValueError(f"`{name}` must be a float array. Received dtype {images.dtype}")
    images = images.astype("float32", copy=False)
    expected_channels = (1, 3) if channels is None else (channels,)
    if images.ndim != 4 or images.shape[-1] not in expected_channels:
        raise ValueError(f"`{name}` must be NHWC with {' or '.join(map(str, expected_channels))} "
                         f"channel(s). Received shape {images.shape}")
    if size is not None and images.shape[1:3] != (size, size):
        raise ValueError(f"`{name}` must be {size}x{size} px. Received shape {images.shape}")
    if images.shape[0] == 0:
        raise ValueError(f"`{name}` must hold at least one image. Received shape {images.shape}")
    check_finite(name, images)
    low, high = float(images.min()), float(images.max())
    if low < -IMAGE_RANGE_TOLERANCE or high > 1 + IMAGE_RANGE_TOLERANCE:
        raise ValueError(f"`{name}` must be float in [0, 1]. "
                         f"Received values in [{low:.3g}, {high:.3g}]")
    return np.clip(images, 0.0, 1.0) if clip else images
