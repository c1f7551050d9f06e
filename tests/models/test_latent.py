"""LatentAutoencoder and LatentDiffusion: shapes, scale factor, two-stage training, sampling, saving."""

import keras
import numpy as np
import pytest

from lungkit.models.diffusion import DiffusionModel
from lungkit.models.latent import LatentAutoencoder, LatentDiffusion

TINY_AE = dict(image_size=32, channels=3, latent_channels=4, widths=(8, 16, 16))  # 8x8x4
TINY_DIFFUSION = dict(widths=(8, 16), blocks_per_level=1, timesteps=50, ema_decay=0.9)


@pytest.fixture(scope="module")
def trained():
    """A tiny autoencoder trained 3 epochs and calibrated, then a latent diffusion 2 epochs
    on the same 8 images (`fit_autoencoder`, then `fit`), with its loss histories."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:32, :32]
    discs = [((yy - 16) ** 2 + (xx - 10 - i) ** 2 < 40 + 5 * i) for i in range(8)]
    images = np.stack([np.repeat((0.2 + 0.6 * d)[..., None], 3, -1) for d in discs])
    images = (images + rng.normal(0, 0.02, images.shape)).clip(0, 1).astype("float32")
    model = LatentDiffusion(**{k: v for k, v in TINY_AE.items() if k != "widths"},
                            autoencoder_widths=TINY_AE["widths"], autoencoder_epochs=3,
                            seed=0, **TINY_DIFFUSION)
    model.compile(optimizer=keras.optimizers.Adam(2e-3))
    model.fit_autoencoder(images, batch_size=4, verbose=0, shuffle=False)
    history = model.fit(images, batch_size=4, epochs=2, verbose=0, shuffle=False)
    return model, images, history.history


def test_autoencoder_shapes_and_round_trip(tiny_ct_batch):
    autoencoder = LatentAutoencoder(**TINY_AE, seed=0)
    assert autoencoder.latent_shape == (8, 8, 4)
    z_mean, z_log_var = autoencoder.encode(tiny_ct_batch)
    assert z_mean.shape == z_log_var.shape == (4, 8, 8, 4)
    images = autoencoder.decode(z_mean)
    assert images.shape == tiny_ct_batch.shape and images.dtype == np.float32
    assert images.min() >= 0.0 and images.max() <= 1.0
    np.testing.assert_array_equal(autoencoder.reconstruct(tiny_ct_batch), images)
    losses = autoencoder.compute_losses(tiny_ct_batch)
    assert [float(x) >= 0 for x in losses] == [True] * 3
    np.testing.assert_allclose(float(losses[0]), float(losses[1]) + 1e-6 * float(losses[2]),
                               rtol=1e-5)


def test_autoencoder_reconstruction_improves_and_scale_factor_standardises(trained):
    model, images, _ = trained
    autoencoder = model.autoencoder
    first, last = model.autoencoder_history["reconstruction_loss"][0], \
        model.autoencoder_history["reconstruction_loss"][-1]
    assert last < first
    assert autoencoder.calibrated and autoencoder.scale_factor > 0
    # posterior samples, standardised: over several draws about mean 0, std 1 (a tiny model's
    # posterior is noise-dominated, so one draw of 2048 values varies by ~10%)
    latents = np.stack([np.asarray(autoencoder.to_latents(images)) for _ in range(4)])
    assert abs(latents.mean()) < 0.1 and latents.std() == pytest.approx(1.0, abs=0.2)
    scale = autoencoder.scale_factor  # measured with its own seeded noise: reproducible
    assert autoencoder.compute_scale_factor(images) == pytest.approx(scale, rel=1e-6)
    # The frozen autoencoder is not trained by the diffusion stage; its optimizer is dropped.
    assert not autoencoder.trainable and autoencoder.optimizer is None
    assert len(model.trainable_variables) == len(model.diffusion.network.trainable_variables)


def test_scale_factor_is_in_config_only_once_measured():
    autoencoder = LatentAutoencoder(**TINY_AE)
    assert autoencoder.get_config()["scale_factor"] is None and autoencoder.scale_factor == 1.0
    restored = LatentAutoencoder.from_config({**autoencoder.get_config(), "scale_factor": 0.5,
                                              "shift_factor": 0.1})
    assert restored.calibrated and restored.scale_factor == 0.5
    assert restored.shift_factor == pytest.approx(0.1)


def test_latent_diffusion_trains_and_generates(trained):
    model, _, history = trained
    assert len(history["loss"]) == 2 and all(np.isfinite(history["loss"]))
    assert model.diffusion.image_size == 8 and model.diffusion.channels == 4
    images = model.generate(3, steps=5, seed=7, progress=False)
    assert images.shape == (3, 32, 32, 3) and images.dtype == np.float32
    assert images.min() >= 0.0 and images.max() <= 1.0
    np.testing.assert_array_equal(images, model.generate(3, steps=5, seed=7, progress=False))
    assert not np.array_equal(images, model.generate(3, steps=5, seed=8, progress=False))
    for sampler in ("dpm++", "ddpm"):
        assert model.generate(2, steps=4, sampler=sampler, seed=1, progress=False).shape == \
            (2, 32, 32, 3)


def test_denoising_loss_hook_matches_compute_losses(tiny_ct_batch):
    """DiffusionModel.denoising_loss on model-space data = compute_losses on [0, 1] images."""
    first = DiffusionModel(image_size=32, channels=3, seed=3, **TINY_DIFFUSION)
    second = DiffusionModel(image_size=32, channels=3, seed=3, **TINY_DIFFUSION)
    second.set_weights(first.get_weights())
    expected = float(first.compute_losses(tiny_ct_batch)[0])
    assert float(second.denoising_loss(tiny_ct_batch * 2.0 - 1.0)) == pytest.approx(expected,
                                                                                     rel=1e-6)


def test_save_and_load_round_trip(trained, tmp_path):
    model, images, _ = trained
    # Make the EMA differ from the online network, so loading must restore both.
    model.diffusion.ema_network.set_weights(
        [w * 0.5 for w in model.diffusion.ema_network.get_weights()])
    path = tmp_path / "latent.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)
    assert isinstance(reloaded.autoencoder, LatentAutoencoder)
    assert reloaded.autoencoder.scale_factor == model.autoencoder.scale_factor
    assert reloaded.autoencoder.calibrated and not reloaded.autoencoder.trainable
    for use_ema in (True, False):
        np.testing.assert_allclose(
            reloaded.generate(2, steps=4, seed=5, progress=False, use_ema=use_ema),
            model.generate(2, steps=4, seed=5, progress=False, use_ema=use_ema), atol=1e-6)
    assert int(reloaded.optimizer.iterations) == int(model.optimizer.iterations) > 0
    assert reloaded.get_config()["widths"] == list(TINY_DIFFUSION["widths"])


def test_class_conditional_hybrid_on_a_given_autoencoder(trained):
    """A trained autoencoder passed in is not trained again; labels and guidance work."""
    model, images, _ = trained
    autoencoder = model.autoencoder
    before = [w.copy() for w in autoencoder.get_weights()]
    conditional = LatentDiffusion(autoencoder, num_classes=3, seed=0, **TINY_DIFFUSION)
    conditional.compile(optimizer=keras.optimizers.Adam(1e-3))
    conditional.fit(images, np.arange(8) % 3, batch_size=4, epochs=1, verbose=0)
    assert conditional.autoencoder_history == {}
    for old, new in zip(before, autoencoder.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)
    malignant = conditional.generate(2, steps=4, seed=2, label="malignant", guidance=3.0,
                                     progress=False)
    assert malignant.shape == (2, 32, 32, 3)
    unconditional = conditional.generate(2, steps=4, seed=2, progress=False)
    assert not np.allclose(malignant, unconditional)
    np.testing.assert_allclose(  # guidance 0 is unconditional sampling, exactly
        conditional.generate(2, steps=4, seed=2, label=0, guidance=0.0, progress=False),
        unconditional, atol=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    (dict(widths=(8,)), "`widths` must be a sequence of at least 2"),
    (dict(image_size=34, widths=(8, 16, 16)), "divisible by 4"),
    (dict(widths=(8, 12)), "groups"),
    (dict(channels=2), "channels"),
    (dict(reconstruction="bce"), "reconstruction"),
    (dict(kl_weight=-1.0), "kl_weight"),
    (dict(scale_factor=0.0), "scale_factor"),
])
def test_autoencoder_validates_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LatentAutoencoder(**{**TINY_AE, **kwargs})


def test_latent_diffusion_validates_arguments():
    autoencoder = LatentAutoencoder(**TINY_AE)
    with pytest.raises(ValueError, match="image_size"):
        LatentDiffusion(autoencoder, image_size=64, **TINY_DIFFUSION)
    with pytest.raises(TypeError, match="LatentAutoencoder"):
        LatentDiffusion("vae", **TINY_DIFFUSION)
    with pytest.raises(ValueError, match="autoencoder_epochs"):
        LatentDiffusion(autoencoder, autoencoder_epochs=-1, **TINY_DIFFUSION)
    with pytest.raises(ValueError, match="shape"):
        autoencoder.decode(np.zeros((1, 4, 4, 4)))
