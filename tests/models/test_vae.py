"""Tests for lungkit.models.vae: shapes, loss maths, training, sampling, serialisation."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from lungkit.models.vae import VAE
from lungkit.models.vae_layers import Sampling, kl_divergence, reconstruction_loss

TINY = dict(latent_dim=4, widths=(8, 16), dense_units=16)


@pytest.fixture
def tiny_vae():
    return VAE(image_size=32, channels=3, seed=0, **TINY)


def _losses(model, images):
    return [float(v) for v in model.compute_losses(tf.constant(images), training=False)]


@pytest.mark.parametrize("image_size", [32, 64])
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes(image_size, channels):
    model = VAE(image_size=image_size, channels=channels, seed=0, **TINY)
    images = np.random.rand(3, image_size, image_size, channels).astype("float32")
    z_mean, z_log_var = model.encode(images)
    assert z_mean.shape == z_log_var.shape == (3, 4)
    assert z_mean.dtype == np.float32
    recon = model.reconstruct(images)
    assert recon.shape == images.shape and recon.dtype == np.float32
    assert model(images).shape == images.shape
    as_uint8 = np.round(images * 255).astype(np.uint8)
    np.testing.assert_allclose(model.encode(as_uint8)[0], model.encode(as_uint8 / 255.0)[0],
                               rtol=1e-5, atol=1e-6)
    losses = _losses(model, images)
    assert len(losses) == 3 and all(np.isfinite(losses))


def test_kl_divergence_matches_hand_computed_closed_form():
    z_mean = np.array([[0.0, 0.0], [1.0, 2.0]], "float32")
    z_log_var = np.array([[0.0, 0.0], [math.log(2.0), 0.0]], "float32")
    # Row 1 is N(0, I) itself: KL = 0. Row 2: -0.5 * [(1 + ln2 - 1 - 2) + (1 + 0 - 4 - 1)]
    # = -0.5 * (ln2 - 6) = 3 - ln2 / 2.
    kl = keras.ops.convert_to_numpy(kl_divergence(z_mean, z_log_var))
    np.testing.assert_allclose(kl, [0.0, 3.0 - math.log(2.0) / 2], rtol=1e-6, atol=1e-7)


def test_reconstruction_loss_on_known_pixels():
    images = np.array([[[[1.0], [0.0]]], [[[0.5], [0.5]]]], "float32")  # (2, 1, 2, 1)
    recon = np.array([[[[0.5], [0.25]]], [[[0.5], [0.5]]]], "float32")
    bce = keras.ops.convert_to_numpy(reconstruction_loss(images, recon, "bce"))
    # -ln 0.5 - ln 0.75 for image 1; 2 * ln 2 (the entropy floor at 0.5) for image 2.
    np.testing.assert_allclose(bce, [math.log(2) + math.log(4 / 3), 2 * math.log(2)], rtol=1e-5)
    mse = keras.ops.convert_to_numpy(reconstruction_loss(images, recon, "mse"))
    np.testing.assert_allclose(mse, [0.25 + 0.0625, 0.0], atol=1e-7)
    with pytest.raises(ValueError, match="`kind` must be one of"):
        reconstruction_loss(images, recon, "l1")


def test_total_is_reconstruction_plus_beta_kl(tiny_ct_batch):
    model = VAE(image_size=32, channels=3, beta=0.5, seed=0, **TINY)
    total, recon, kl = _losses(model, tiny_ct_batch)
    assert total == pytest.approx(recon + 0.5 * kl, rel=1e-6)
    # Summed over 32 * 32 * 3 pixels: the paper's per-image scale, not a per-pixel mean.
    assert 0.3 * 32 * 32 * 3 < recon < 1.5 * 32 * 32 * 3


def test_sampling_layer_statistics_and_config():
    layer = Sampling(seed=3)
    z_mean = np.full((20000, 2), 2.0, "float32")
    z_log_var = np.full((20000, 2), math.log(0.25), "float32")
    z = keras.ops.convert_to_numpy(layer([z_mean, z_log_var]))
    assert abs(z.mean() - 2.0) < 0.02 and abs(z.std() - 0.5) < 0.02
    clone = Sampling.from_config(layer.get_config())
    assert clone.seed == 3


def test_fit_reduces_loss_with_exact_metric_names(tiny_ct_batch):
    model = VAE(image_size=32, channels=3, seed=0, **TINY)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    history = model.fit(tiny_ct_batch, batch_size=4, epochs=12, verbose=0)
    assert set(history.history) == {"loss", "reconstruction_loss", "kl_loss"}
    losses = history.history["loss"]
    assert all(np.isfinite(v) for values in history.history.values() for v in values)
    assert losses[-1] < losses[0] - 50  # ~2,130 -> ~1,950 on these 3,072-value images
    evaluated = model.evaluate(tiny_ct_batch, batch_size=4, verbose=0, return_dict=True)
    assert set(evaluated) == {"loss", "reconstruction_loss", "kl_loss"}


def test_fit_accepts_dataset_with_labels(tiny_ct_batch):
    model = VAE(image_size=32, channels=3, seed=0, **TINY)
    model.compile(optimizer="adam")
    dataset = tf.data.Dataset.from_tensor_slices((tiny_ct_batch, np.arange(4))).batch(2)
    history = model.fit(dataset, epochs=1, verbose=0, shuffle=False)
    assert np.isfinite(history.history["loss"][0])


def test_generate_range_dtype_shape_and_seed(tiny_vae):
    images = tiny_vae.generate(5, seed=7, batch_size=2)
    assert images.shape == (5, 32, 32, 3) and images.dtype == np.float32
    assert images.min() >= 0.0 and images.max() <= 1.0
    np.testing.assert_array_equal(images, tiny_vae.generate(5, seed=7))
    assert not np.array_equal(images, tiny_vae.generate(5, seed=8))
    assert not np.array_equal(tiny_vae.generate(5), tiny_vae.generate(5))
    with pytest.raises(ValueError, match="`n` must be an integer >= 1"):
        tiny_vae.generate(0)


def test_save_and_load_round_trip_in_safe_mode(tiny_ct_batch, tmp_path):
    model = VAE(image_size=32, channels=1, reconstruction="mse", beta=2.0, seed=4, **TINY)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    gray = tiny_ct_batch[..., :1]
    model.fit(gray, batch_size=2, epochs=1, verbose=0)
    model.save(tmp_path / "vae.keras")
    reloaded = keras.models.load_model(tmp_path / "vae.keras", safe_mode=True)
    assert isinstance(reloaded, VAE)
    assert reloaded.get_config() == model.get_config()
    np.testing.assert_array_equal(reloaded.reconstruct(gray), model.reconstruct(gray))
    np.testing.assert_array_equal(reloaded.generate(3, seed=1), model.generate(3, seed=1))
    # The optimizer state comes back too, so training resumes where it stopped.
    assert reloaded.compiled
    for saved, loaded in zip(model.optimizer.variables, reloaded.optimizer.variables, strict=True):
        np.testing.assert_array_equal(np.asarray(saved), np.asarray(loaded))


def test_config_round_trips_every_argument():
    model = VAE(image_size=64, channels=1, latent_dim=6, widths=(8, 8, 16), dense_units=0,
                reconstruction="mse", beta=0.25, seed=11)
    clone = VAE.from_config(model.get_config())
    assert clone.get_config() == model.get_config()
    assert clone.widths == (8, 8, 16) and clone.count_params() == model.count_params()


def test_wrong_input_shape_names_expected_and_received(tiny_vae):
    tiny_vae.compile(optimizer="adam")
    expected = r"must have shape \(batch, 32, 32, 3\).*Received: shape=\(2, 16, 16, 3\)"
    with pytest.raises(ValueError, match=expected):
        tiny_vae.fit(np.zeros((2, 16, 16, 3), "float32"), epochs=1, verbose=0)
    dataset = tf.data.Dataset.from_tensor_slices(np.zeros((4, 32, 32, 1), "float32")).batch(2)
    with pytest.raises(ValueError, match=r"Received: shape=\(None, 32, 32, 1\)"):
        tiny_vae.fit(dataset, epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"`images` must have shape \(batch, 32, 32, 3\)"):
        tiny_vae.encode(np.zeros((2, 32, 32, 1), "float32"))
    with pytest.raises(ValueError, match=r"`z` must have shape \(n, 4\)"):
        tiny_vae.decode(np.zeros((2, 5), "float32"))


@pytest.mark.parametrize("kwargs, match", [
    (dict(image_size=16), r"`image_size` must be an integer in \[32, 256\]"),
    (dict(image_size=512), r"`image_size` must be an integer in \[32, 256\]"),
    (dict(image_size=40), "divisible by 16"),
    (dict(channels=2), "`channels` must be 1 or 3"),
    (dict(latent_dim=0), "`latent_dim` must be an integer >= 1"),
    (dict(widths=()), "`widths` must be a sequence of at least 1 integer"),
    (dict(reconstruction="l1"), "`reconstruction` must be one of"),
    (dict(beta=-1.0), r"`beta` must be a finite number in \[0, inf\)"),
    (dict(num_classes=0), "`num_classes` must be an integer >= 1"),
    (dict(num_classes=3, class_dropout=1.0), r"`class_dropout` must be a finite number in \[0, 1\)"),
    (dict(seed="a"), "`seed` must be an integer or None"),
])
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VAE(**kwargs)


def test_huge_learning_rate_gives_nan_and_terminate_on_nan_stops(tiny_ct_batch):
    model = VAE(image_size=32, channels=3, seed=0, **TINY)
    model.compile(optimizer=keras.optimizers.SGD(1e6))
    history = model.fit(tiny_ct_batch, batch_size=2, epochs=5, verbose=0,
                        callbacks=[keras.callbacks.TerminateOnNaN()])
    assert len(history.epoch) == 1 and not np.isfinite(history.history["loss"][-1])


def test_mixed_precision_keeps_losses_and_outputs_float32(tiny_ct_batch):
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = VAE(image_size=32, channels=3, seed=0, **TINY)
        losses = model.compute_losses(tf.constant(tiny_ct_batch), training=False)
        assert all(loss.dtype == tf.float32 for loss in losses)
        assert all(np.isfinite(float(loss)) for loss in losses)
        assert model.generate(2, seed=0).dtype == np.float32
        assert model.encoder.layers[1].compute_dtype == "bfloat16"
    finally:
        keras.mixed_precision.set_global_policy("float32")


# --------------------------------------------------------------------------- conditional VAE
@pytest.fixture
def tiny_cvae():
    return VAE(image_size=32, channels=1, num_classes=3, class_dropout=0.2, seed=0, **TINY)


def test_conditional_vae_takes_labels_in_decoder_and_prior_only(tiny_cvae, tiny_ct_batch):
    gray, labels = tiny_ct_batch[..., :1], np.array([0, 1, 2, 2])
    assert [t.name for t in tiny_cvae.encoder.inputs] == ["images"]  # q(z | x)
    assert [t.name for t in tiny_cvae.decoder.inputs] == ["z", "labels"]
    assert tiny_cvae.prior_means.embeddings.shape == (4, 4)  # 3 classes + "no label"
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(tiny_cvae.prior_means.embeddings),
                                  0.0)  # training starts from N(0, I)
    assert tiny_cvae((gray, labels)).shape == gray.shape
    assert tiny_cvae(gray).shape == gray.shape  # images alone: "no label"
    z_mean, z_log_var = tiny_cvae.encode(gray)
    assert z_mean.shape == z_log_var.shape == (4, 4)
    assert tiny_cvae.reconstruct(gray, "benign").shape == gray.shape
    assert not np.allclose(tiny_cvae.reconstruct(gray, "benign"),
                           tiny_cvae.reconstruct(gray, "normal"))  # the decoder sees y
    assert not any(isinstance(layer, keras.layers.Lambda)
                   for part in (tiny_cvae.encoder, tiny_cvae.decoder) for layer in part.layers)


def test_conditional_generate_label_changes_the_output(tiny_cvae):
    normal = tiny_cvae.generate(3, seed=1, label="normal")
    malignant = tiny_cvae.generate(3, seed=1, label="Malignant")
    assert normal.shape == (3, 32, 32, 1) and normal.dtype == np.float32
    assert 0.0 <= normal.min() and normal.max() <= 1.0
    np.testing.assert_array_equal(normal, tiny_cvae.generate(3, seed=1, label=0))
    assert not np.allclose(normal, malignant)
    assert not np.allclose(tiny_cvae.generate(3, seed=1), normal)  # None: the null class
    mixed = tiny_cvae.generate(3, seed=1, label=["normal", "bengin", 2])
    np.testing.assert_array_equal(mixed[0], normal[0])
    np.testing.assert_array_equal(mixed[2], malignant[2])
    with pytest.raises(ValueError, match="one of"):
        tiny_cvae.generate(2, label="cancer")
    with pytest.raises(ValueError, match=r"integer in \[0, 2\]"):
        tiny_cvae.generate(2, label=3)


def test_guidance_is_refused_by_the_vae(tiny_cvae, tiny_vae):
    with pytest.raises(ValueError, match="`guidance`.*diffusion models.*guidance=3.0"):
        tiny_cvae.generate(2, label=2, guidance=3.0)
    with pytest.raises(ValueError, match="`label` needs a VAE built with `num_classes`"):
        tiny_vae.generate(2, label="malignant")


def test_conditional_prior_moves_samples_and_the_kl(tiny_cvae, tiny_ct_batch):
    """p(z | y) = N(mu_y, I): generate decodes mu_y + eps; the KL is to N(mu_y, I)."""
    gray, labels = tiny_ct_batch[..., :1], np.array([0, 1, 2, 2])
    means = np.zeros((4, 4), "float32")
    means[2] = [3.0, -2.0, 1.0, 0.5]
    tiny_cvae.prior_means.embeddings.assign(means)
    eps = keras.ops.convert_to_numpy(
        keras.random.normal((3, 4), dtype="float32", seed=keras.random.SeedGenerator(5)))
    np.testing.assert_allclose(tiny_cvae.generate(3, seed=5, label="malignant"),
                               tiny_cvae.decode(eps + means[2], "malignant"), atol=1e-6)
    np.testing.assert_allclose(tiny_cvae.generate(3, seed=5, label="normal"),
                               tiny_cvae.decode(eps, "normal"), atol=1e-6)
    z_mean, z_log_var = tiny_cvae.encode(gray)
    prior = means[labels]
    expected = np.mean(-0.5 * np.sum(1 + z_log_var - (z_mean - prior) ** 2 - np.exp(z_log_var),
                                     axis=-1))
    _, _, kl = tiny_cvae.compute_losses(gray, labels, training=False)
    np.testing.assert_allclose(float(kl), expected, rtol=1e-5)


def test_conditional_label_dropout_replaces_a_share_of_labels(tiny_cvae):
    labels = np.zeros(4000, "int32")
    kept = keras.ops.convert_to_numpy(tiny_cvae._conditioning(labels, 4000, training=True))
    assert set(np.unique(kept)) == {0, 3}
    assert abs((kept == 3).mean() - 0.2) < 0.03
    evaluated = keras.ops.convert_to_numpy(tiny_cvae._conditioning(labels, 4000, training=False))
    assert (evaluated == 0).all()


def test_conditional_vae_learns_the_class_end_to_end():
    """Two classes that differ only in brightness: the label alone must pick the brightness."""
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 16)
    images = np.where(labels[:, None, None, None] == 0, 0.2, 0.8) + 0.02 * rng.standard_normal(
        (32, 32, 32, 1))
    images = np.clip(images, 0, 1).astype("float32")
    model = VAE(image_size=32, channels=1, num_classes=2, class_dropout=0.0, seed=0, **TINY)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).shuffle(32, seed=0).batch(4)
    losses = model.fit(dataset, epochs=20, verbose=0).history["loss"]
    assert losses[-1] < losses[0] - 100  # ~715 -> ~525
    dark, bright = model.generate(8, seed=0, label=0), model.generate(8, seed=0, label=1)
    assert dark.mean() < 0.4 and bright.mean() > 0.7  # the data: 0.2 and 0.8
    model.fit_class_prior(images, labels)  # the ex-post prior keeps the classes apart
    dark, bright = model.generate(8, seed=0, label=0), model.generate(8, seed=0, label=1)
    assert dark.mean() < 0.4 and bright.mean() > 0.7


def test_conditional_save_load_and_config_round_trip(tiny_cvae, tiny_ct_batch, tmp_path):
    gray, labels = tiny_ct_batch[..., :1], np.array([0, 1, 2, 1])
    tiny_cvae.compile(optimizer=keras.optimizers.Adam(1e-3))
    tiny_cvae.fit(tf.data.Dataset.from_tensor_slices((gray, labels)).batch(2), epochs=1,
                  verbose=0)
    means = keras.ops.convert_to_numpy(tiny_cvae.prior_means.embeddings)
    assert np.abs(means).max() > 0  # the KL gradient moved the class priors
    config = tiny_cvae.get_config()
    assert config["num_classes"] == 3 and config["class_dropout"] == 0.2
    assert VAE.from_config(config).get_config() == config
    tiny_cvae.save(tmp_path / "cvae.keras")
    reloaded = keras.models.load_model(tmp_path / "cvae.keras", safe_mode=True)
    assert reloaded.get_config() == config
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(reloaded.prior_means.embeddings),
                                  means)
    for label in ("normal", "malignant", None):
        np.testing.assert_array_equal(reloaded.generate(3, seed=2, label=label),
                                      tiny_cvae.generate(3, seed=2, label=label))
    np.testing.assert_array_equal(reloaded.reconstruct(gray, labels),
                                  tiny_cvae.reconstruct(gray, labels))


def test_fit_class_prior_fits_a_gaussian_per_class_and_generate_samples_it(tiny_cvae,
                                                                             tmp_path):
    """p(z | y) = N(m_y, C_y + jitter I) of the encodings; generate decodes m_y + L_y eps."""
    rng = np.random.default_rng(0)
    images = rng.random((30, 32, 32, 1)).astype("float32")
    labels = np.arange(30) % 3
    learned = tiny_cvae.generate(3, seed=5, label="malignant")
    assert not tiny_cvae.has_fitted_prior
    assert tiny_cvae.fit_class_prior(images, labels, jitter=0.01) == {0: 10, 1: 10, 2: 10}
    assert tiny_cvae.has_fitted_prior
    z_mean, _ = tiny_cvae.encode(images)
    locs = keras.ops.convert_to_numpy(tiny_cvae.class_prior_loc)
    scales = keras.ops.convert_to_numpy(tiny_cvae.class_prior_scale)
    for row, rows in enumerate([labels == 0, labels == 1, labels == 2, slice(None)]):
        np.testing.assert_allclose(locs[row], z_mean[rows].mean(axis=0), rtol=1e-4, atol=1e-5)
        cov = np.cov(z_mean[rows], rowvar=False) + 0.01 * np.eye(4)
        np.testing.assert_allclose(scales[row] @ scales[row].T, cov, rtol=1e-3, atol=1e-5)
        assert np.allclose(scales[row], np.tril(scales[row]))  # a Cholesky factor
    eps = keras.ops.convert_to_numpy(
        keras.random.normal((3, 4), dtype="float32", seed=keras.random.SeedGenerator(5)))
    fitted = tiny_cvae.generate(3, seed=5, label="malignant")
    np.testing.assert_allclose(fitted, tiny_cvae.decode(locs[2] + eps @ scales[2].T, 2),
                               atol=1e-5)
    np.testing.assert_array_equal(tiny_cvae.generate(3, seed=5, label="malignant",
                                                     prior="fitted"), fitted)
    np.testing.assert_array_equal(tiny_cvae.generate(3, seed=5, label="malignant",
                                                     prior="learned"), learned)
    np.testing.assert_allclose(tiny_cvae.generate(3, seed=5),  # None: the "no label" row
                               tiny_cvae.decode(locs[3] + eps @ scales[3].T), atol=1e-5)
    tiny_cvae.save(tmp_path / "cvae.keras")
    reloaded = keras.models.load_model(tmp_path / "cvae.keras", safe_mode=True)
    assert reloaded.has_fitted_prior
    np.testing.assert_array_equal(reloaded.generate(3, seed=5, label="malignant"), fitted)
    # A dataset of (images, labels) batches fits the same prior as the arrays.
    batches = tf.data.Dataset.from_tensor_slices((images, labels)).batch(7)
    tiny_cvae.fit_class_prior(batches, jitter=0.01)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(tiny_cvae.class_prior_loc), locs,
                               atol=1e-5)


def test_fit_class_prior_and_prior_argument_errors(tiny_cvae, tiny_vae):
    images = np.random.default_rng(0).random((6, 32, 32, 1)).astype("float32")
    with pytest.raises(ValueError, match="prior='fitted' needs `fit_class_prior` first"):
        tiny_cvae.generate(2, label=0, prior="fitted")
    with pytest.raises(ValueError, match=r"`prior` must be one of \(None, 'learned', 'fitted'\). "
                                         "Received: prior='gmm'"):
        tiny_cvae.generate(2, label=0, prior="gmm")
    with pytest.raises(ValueError, match="at least 2 images of every class. Received counts "
                                         r"per class: \{0: 3, 1: 3, 2: 0\}"):
        tiny_cvae.fit_class_prior(images, [0, 1, 0, 1, 0, 1])
    with pytest.raises(ValueError, match="`labels` is required"):
        tiny_cvae.fit_class_prior(images)
    with pytest.raises(ValueError, match=r"`jitter` must be a finite number in \[0, inf\)"):
        tiny_cvae.fit_class_prior(images, [0, 1, 2] * 2, jitter=-1.0)
    with pytest.raises(ValueError, match="needs a conditional VAE"):
        tiny_vae.fit_class_prior(images, [0, 1, 2] * 2)
    with pytest.raises(ValueError, match="`prior` applies to a conditional VAE"):
        tiny_vae.generate(2, prior="learned")
    assert not tiny_cvae.has_fitted_prior and not tiny_vae.has_fitted_prior


def test_resize_decoder_draws_no_checkerboard_and_round_trips(tmp_path):
    """A constant feature map decodes to a period-2 pattern through the paper's 3x3 stride-2
    transposed convolutions (uneven overlap), to a flat image through resize + conv."""
    def checkerboard(decoder):
        keras.utils.set_random_seed(0)
        vae = VAE(image_size=32, channels=1, latent_dim=4, widths=(8, 16), decoder=decoder)
        dense = vae.decoder.get_layer("dense")
        kernel, bias = dense.get_weights()
        dense.set_weights([np.zeros_like(kernel), np.full_like(bias, 0.5)])  # constant map
        image = vae.decode(np.zeros((1, 4), "float32"))[0, 4:-4, 4:-4, 0]  # interior
        return float(np.abs(image - np.roll(image, 1, axis=0)).mean()), vae

    transpose, _ = checkerboard("transpose")
    resize, vae = checkerboard("resize")
    assert transpose > 100 * max(resize, 1e-6), (transpose, resize)
    assert vae.get_config()["decoder"] == "resize"
    vae.save(tmp_path / "vae.keras")
    reloaded = keras.saving.load_model(tmp_path / "vae.keras")
    np.testing.assert_allclose(reloaded.decode(np.ones((2, 4), "float32")),
                               vae.decode(np.ones((2, 4), "float32")), atol=1e-6)
    with pytest.raises(ValueError, match=r"`decoder` must be one of \('transpose', 'resize'\)"):
        VAE(image_size=32, channels=1, latent_dim=4, widths=(8, 16), decoder="deconv")
