"""Fixtures shared by the experiment tests: the tiny comparison settings."""

from types import MappingProxyType

import pytest

TINY = MappingProxyType(dict(
    # 2 of 6 slices per class held out (precision/recall need more than k = 3 real images),
    # 1 for the domain encoder, 3 train the generators
    image_size=32, channels=1, phantom_per_class=6, test_fraction=0.34, n_generate=8,
    models=("vae", "denoiser", "diffusion"), timing_images=8,
    features="domain", classifier_steps=20, tstr_steps=10,
    **{"vae.epochs": 2, "vae.batch_size": 8, "vae.latent_dim": 8, "vae.widths": (8, 16),
       "denoiser.epochs": 2, "denoiser.batch_size": 8, "denoiser.widths": (8, 16),
       "diffusion.epochs": 2, "diffusion.batch_size": 8, "diffusion.widths": (8, 16),
       "diffusion.timesteps": 100, "diffusion.sampling_steps": 5,
       "diffusion.ddpm_timing_images": 2},
))


@pytest.fixture(scope="session")
def tiny():
    """The tiny comparison's config overrides, read-only (extend with `{**tiny, ...}`)."""
    return TINY
