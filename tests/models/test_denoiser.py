"""Tests for lungkit.models.denoiser: the paper's U-Net denoiser."""

import keras
import numpy as np
import pytest

from lungkit.models.denoiser import PAPER_NOISE_STD, UNetDenoiser

TINY = dict(image_size=32, widths=(8, 16), blocks_per_level=1, groups=4)


def _ct_images(channels=3):
    """Four 32x32 CT-like slices in [0, 1] (the `tiny_ct_batch` recipe, usable module-wide)."""
    yy, xx = np.mgrid[:32, :32]
    images = []
    for shift in range(4):
        body = ((yy - 16) ** 2 / 14**2 + (xx - 16) ** 2 / 12**2) < 1
        lung = ((yy - 15) ** 2 + (xx - 10 - shift) ** 2) < 16
        images.append(np.where(body, 0.6, 0.05) - 0.5 * lung)
    images = np.clip(np.asarray(images, "float32"), 0, 1)[..., None]
    return np.repeat(images, channels, axis=-1)


@pytest.fixture(scope="module")
def trained():
    """A tiny denoiser overfitted to four slices, with its loss history."""
    keras.utils.set_random_seed(0)
    model = UNetDenoiser(channels=3, seed=0, **TINY)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    images = np.tile(_ct_images(), (4, 1, 1, 1))  # 4 steps per epoch
    history = model.fit(images, batch_size=4, epochs=12, verbose=0)
    return model, history.history["loss"]


def test_loss_falls_when_overfitting(trained):
    _, losses = trained
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:3])


def test_restore_reduces_error(trained):
    model, _ = trained
    clean = _ct_images()
    noisy = model.add_noise(clean, seed=7).numpy()
    restored = model.restore(noisy, batch_size=3)
    assert restored.shape == clean.shape and restored.dtype == np.float32
    assert restored.min() >= 0.0 and restored.max() <= 1.0
    noisy_mse = np.mean((noisy - clean) ** 2)
    assert np.mean((restored - clean) ** 2) < 0.8 * noisy_mse
    assert 0.5 * PAPER_NOISE_STD**2 < noisy_mse < PAPER_NOISE_STD**2  # clipping trims a bit


def test_paper_mode_imitates_sources_and_pure_noise_does_not(trained):
    model, _ = trained
    sources = _ct_images()
    imitations = model.generate(6, source_images=sources, seed=1, progress=False)
    from_noise = model.generate(6, seed=1, steps=3, progress=False)
    cycled = sources[np.arange(6) % 4]
    assert np.mean((imitations - cycled) ** 2) < 0.01
    nearest = [min(np.mean((x - s) ** 2) for s in sources) for x in from_noise]
    assert min(nearest) > 5 * np.mean((imitations - cycled) ** 2)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("with_sources", [False, True])
def test_generate_shape_range_dtype(channels, with_sources):
    model = UNetDenoiser(channels=channels, seed=0, **TINY)
    sources = _ct_images(channels) if with_sources else None
    samples = model.generate(5, source_images=sources, noise_std=(0.05, 0.3), steps=2,
                             batch_size=2, progress=False)
    assert samples.shape == (5, 32, 32, channels) and samples.dtype == np.float32
    assert samples.min() >= 0.0 and samples.max() <= 1.0
    assert samples.std() > 0.01


def test_seed_determinism():
    model = UNetDenoiser(channels=1, seed=0, **TINY)
    first = model.generate(3, seed=5, progress=False)
    np.testing.assert_array_equal(first, model.generate(3, seed=5, progress=False))
    assert not np.array_equal(first, model.generate(3, seed=6, progress=False))
    sources = _ct_images(1)
    np.testing.assert_array_equal(
        model.generate(3, source_images=sources, seed=2, progress=False),
        model.generate(3, source_images=sources, seed=2, progress=False))
    # two models with the same seed draw the same training noise
    twin = UNetDenoiser(channels=1, seed=0, **TINY)
    np.testing.assert_array_equal(model.add_noise(sources), twin.add_noise(sources))


def test_noise_std_range_draws_one_std_per_image():
    model = UNetDenoiser(channels=1, noise_std=(0.0, 0.4), seed=0, **TINY)
    flat = np.full((64, 32, 32, 1), 0.5, "float32")
    stds = np.std(model.add_noise(flat).numpy(), axis=(1, 2, 3))
    assert stds.min() < 0.1 and stds.max() > 0.3 and stds.max() <= 0.42


def test_save_load_round_trip(trained, tmp_path):
    model, _ = trained
    path = tmp_path / "denoiser.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(reloaded, UNetDenoiser)
    noisy = model.add_noise(_ct_images(), seed=3).numpy()
    np.testing.assert_allclose(reloaded.restore(noisy), model.restore(noisy), atol=1e-6)
    ranged = UNetDenoiser(channels=1, noise_std=[0.05, 0.2], attention_levels=[1], **TINY)
    clone = UNetDenoiser.from_config(ranged.get_config())
    assert clone.noise_std == (0.05, 0.2) and clone.attention_levels == (1,)
    assert clone.get_config() == ranged.get_config()


@pytest.mark.parametrize("kwargs,match", [
    (dict(channels=2), "`channels` must be 1 or 3"),
    (dict(noise_std=0.0), "`noise_std` must be a number > 0"),
    (dict(noise_std=(0.3, 0.1)), r"`noise_std` as a range must be `\(low, high\)`"),
    (dict(noise_std="big"), "`noise_std` must be"),
    (dict(image_size=30, widths=(8, 16, 16)), "divisible by 4"),
])
def test_constructor_errors(kwargs, match):
    args = {**TINY, **kwargs}
    with pytest.raises(ValueError, match=match):
        UNetDenoiser(**args)


def test_method_errors():
    model = UNetDenoiser(channels=1, **TINY)
    with pytest.raises(ValueError, match=r"`noisy` must be NHWC with 1 channel"):
        model.restore(np.zeros((2, 32, 32, 3), "float32"))
    with pytest.raises(ValueError, match="`steps` must be an integer >= 1"):
        model.restore(np.zeros((2, 32, 32, 1), "float32"), steps=0)
    with pytest.raises(ValueError, match="`n` must be an integer >= 1"):
        model.generate(0, progress=False)
    with pytest.raises(ValueError, match="`source_images` must be 32x32 px"):
        model.generate(2, source_images=np.zeros((2, 16, 16, 1), "float32"), progress=False)
    with pytest.raises(ValueError, match="`noise_std` must be"):
        model.generate(2, noise_std=-1.0, progress=False)
