"""Tests for lungkit.models.recipe and its options on the diffusion models: min-SNR-gamma
loss weights, EMA warm-up, v-prediction by default, and old configs loading as trained."""

import keras
import numpy as np
import pytest

from lungkit.models.diffusion import DiffusionModel
from lungkit.models.latent import LatentDiffusion
from lungkit.models.recipe import ema_decay_at, loss_weights
from lungkit.models.schedule import NoiseSchedule

TINY = dict(image_size=8, channels=1, timesteps=20, widths=(8,), blocks_per_level=1, seed=0)


@pytest.mark.parametrize("t", [0, 10, 250, 500, 900, 999])
def test_min_snr_weights_match_the_formula_on_the_cosine_schedule(t):
    alpha_bar = NoiseSchedule("cosine", 1000).alphas_cumprod[t]
    snr = alpha_bar / (1.0 - alpha_bar)
    eps = float(loss_weights(np.float32(alpha_bar), "epsilon", 5.0))
    v = float(loss_weights(np.float32(alpha_bar), "v", 5.0))
    # float32 inside (as the model stores alpha_bar): 1 - alpha_bar at t = 0 keeps ~4 digits
    assert eps == pytest.approx(min(snr, 5.0) / snr, rel=1e-3)
    assert v == pytest.approx(min(snr, 5.0) / (snr + 1.0), rel=1e-3)


def test_min_snr_weights_known_values():
    # SNR 9 (alpha_bar 0.9): capped at 5 -> eps 5/9, v 5/10; SNR 1: eps 1, v 1/2;
    # SNR 1/3 (alpha_bar 0.25): eps 1, v 0.25.
    alpha_bar = np.array([0.9, 0.5, 0.25], dtype="float32")
    np.testing.assert_allclose(loss_weights(alpha_bar, "epsilon", 5.0), [5 / 9, 1.0, 1.0],
                               rtol=1e-5)
    np.testing.assert_allclose(loss_weights(alpha_bar, "v", 5.0), [0.5, 0.5, 0.25], rtol=1e-5)
    # Low-noise steps get less weight than high-noise ones under eps-prediction's cap.
    schedule = NoiseSchedule("cosine", 1000).alphas_cumprod.astype("float32")
    weights = np.asarray(loss_weights(schedule, "epsilon", 5.0))
    assert weights[0] < 0.01 and weights[-1] == pytest.approx(1.0)


def _twin_losses(prediction, **options):
    """The plain and the weighted loss of the same network on the same draws."""
    x0 = np.random.default_rng(0).uniform(-1, 1, (4, 8, 8, 1)).astype("float32")
    plain = DiffusionModel(**TINY, prediction=prediction)
    weighted = DiffusionModel(**TINY, prediction=prediction, loss_weighting="min_snr", **options)
    head = plain.network.get_layer("head")  # zero at init: give it weights so outputs vary
    head.set_weights([w + 0.1 for w in head.get_weights()])
    weighted.network.set_weights(plain.network.get_weights())
    return float(plain.denoising_loss(x0)), float(weighted.denoising_loss(x0))


def test_min_snr_loss_weights_the_mse():
    plain, weighted = _twin_losses("epsilon", min_snr_gamma=1e9)  # cap never reached: w = 1
    assert weighted == pytest.approx(plain, rel=1e-5)
    plain, weighted = _twin_losses("v", min_snr_gamma=1e9)  # w = alpha_bar < 1
    assert 0 < weighted < plain
    plain, weighted = _twin_losses("epsilon", min_snr_gamma=1e-3)  # w = 1e-3 / SNR
    assert weighted < 0.1 * plain
    with pytest.raises(ValueError, match="`loss_weighting` must be one of"):
        DiffusionModel(**TINY, loss_weighting="p2")
    with pytest.raises(ValueError, match="`min_snr_gamma` must be"):
        DiffusionModel(**TINY, min_snr_gamma=0.0)


def test_ema_decay_warms_up():
    np.testing.assert_allclose([float(ema_decay_at(0.999, t)) for t in (0, 1, 90, 10**6)],
                               [0.1, 2 / 11, 91 / 100, 0.999], rtol=1e-6)


def test_ema_after_k_steps_follows_the_warm_up_formula():
    model = DiffusionModel(**TINY, ema_decay=0.99)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    images = np.random.default_rng(1).uniform(0, 1, (4, 8, 8, 1)).astype("float32")
    expected = [w.numpy() for w in model.ema_network.weights]
    for t in range(4):
        model.train_step(images)
        decay = min(0.99, (1 + t) / (10 + t))
        expected = [decay * e + (1 - decay) * w.numpy()
                    for e, w in zip(expected, model.network.weights, strict=True)]
    moved = 0
    for e, w, initial in zip(expected, model.ema_network.weights,
                             DiffusionModel(**TINY).ema_network.weights, strict=True):
        np.testing.assert_allclose(w.numpy(), e, rtol=1e-5, atol=1e-6)
        moved += not np.allclose(w.numpy(), initial.numpy())
    assert moved  # the EMA left its initial weights (0.99 without warm-up would barely move)


def test_defaults_saved_and_old_configs_load_as_trained():
    model = DiffusionModel(**TINY)
    config = model.get_config()
    assert config["prediction"] == "v" and config["ema_warmup"] is True
    assert config["loss_weighting"] == "none" and config["min_snr_gamma"] == 5.0
    weighted = DiffusionModel(**TINY, loss_weighting="min_snr", min_snr_gamma=2.0)
    assert DiffusionModel.from_config(weighted.get_config()).get_config() == \
        weighted.get_config()
    old = {k: v for k, v in config.items()
           if k not in ("ema_warmup", "loss_weighting", "min_snr_gamma")}
    old["prediction"] = "epsilon"  # what an old default run saved
    loaded = DiffusionModel.from_config(old)
    assert (loaded.prediction, loaded.ema_warmup, loaded.loss_weighting) == \
        ("epsilon", False, "none")


def test_latent_diffusion_passes_the_recipe_options():
    model = LatentDiffusion(image_size=16, channels=1, latent_channels=2,
                            autoencoder_widths=(8, 8), widths=(8,), blocks_per_level=1,
                            timesteps=20, loss_weighting="min_snr", min_snr_gamma=3.0, seed=0)
    assert model.diffusion.prediction == "v" and model.diffusion.ema_warmup
    assert (model.diffusion.loss_weighting, model.diffusion.min_snr_gamma) == ("min_snr", 3.0)
    config = model.get_config()
    assert config["loss_weighting"] == "min_snr" and config["min_snr_gamma"] == 3.0
    old = {k: v for k, v in config.items() if k not in ("ema_warmup", "loss_weighting")}
    assert LatentDiffusion.from_config(old).diffusion.ema_warmup is False
