import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from lungkit.data.phantom import make_phantom_slice
from lungkit.evaluation.metrics import sharpness
from lungkit.evaluation.spectrum import high_frequency_ratio, spectral_distance


@pytest.fixture(scope="module")
def slices():
    rng = np.random.default_rng(0)
    real = np.stack([make_phantom_slice(rng, size=32) for _ in range(8)])[..., None] / 255.0
    real = real.astype("float32")
    blurred = np.stack([gaussian_filter(x[..., 0], 1.0) for x in real])[..., None]
    noisy = np.clip(blurred + rng.normal(0, 0.1, blurred.shape), 0, 1).astype("float32")
    return real, blurred.astype("float32"), noisy


def test_real_against_itself_scores_like_real(slices):
    real, _, _ = slices
    assert high_frequency_ratio(real, real).mean() == pytest.approx(1.0, rel=1e-5)


def test_blur_has_less_high_frequency_power(slices):
    real, blurred, _ = slices
    assert high_frequency_ratio(blurred, real).mean() < 0.5
    assert spectral_distance(blurred, real).mean() > spectral_distance(real, real).mean()


def test_noise_on_blur_is_not_as_sharp_as_real(slices):
    real, _, noisy = slices
    # the Laplacian variance is fooled by noise, and so can be the summed high-band ratio
    # (noise 0.1 on a 1-px blur restores the total power); the band-by-band distance is not
    assert sharpness(noisy).mean() > sharpness(real).mean()
    assert spectral_distance(noisy, real).mean() > 2 * spectral_distance(real, real).mean()
