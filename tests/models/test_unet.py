"""Tests for lungkit.models.unet: shapes, conditioning, validation, save/load."""

import keras
import numpy as np
import pytest

from lungkit.models.unet import AttentionBlock, ResidualBlock, SinusoidalEmbedding, build_unet

TINY = dict(widths=(8, 16), blocks_per_level=1)


def _inputs(size, channels, time_embedding, num_classes, batch=2):
    images = np.random.default_rng(0).random((batch, size, size, channels), dtype="float32")
    inputs = [images]
    if time_embedding:
        inputs.append(np.linspace(0.1, 0.9, batch).astype("float32"))
    if num_classes is not None:
        inputs.append(np.arange(batch, dtype="int32") % (num_classes + 1))
    return inputs if len(inputs) > 1 else images


def _randomise_head(model):
    """The last conv starts at zero; give it weights so outputs depend on the inputs."""
    head = model.get_layer("head")
    kernel, bias = head.get_weights()
    head.set_weights([np.random.default_rng(1).normal(0, 0.1, kernel.shape).astype("float32"),
                      bias])


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("time_embedding,num_classes", [(False, None), (True, None),
                                                        (True, 3), (False, 2)])
def test_output_shape_and_inputs(channels, time_embedding, num_classes):
    model = build_unet(16, channels, time_embedding=time_embedding, num_classes=num_classes,
                       **TINY)
    assert [tuple(i.shape) for i in model.inputs][0] == (None, 16, 16, channels)
    expected_inputs = 1 + time_embedding + (num_classes is not None)
    assert len(model.inputs) == expected_inputs
    outputs = model(_inputs(16, channels, time_embedding, num_classes))
    assert tuple(outputs.shape) == (2, 16, 16, channels)
    assert outputs.dtype == "float32"
    np.testing.assert_array_equal(outputs, 0.0)  # zero-initialised head


def test_attention_out_channels_and_depth():
    model = build_unet(32, 3, widths=(8, 16, 16), blocks_per_level=2, attention_levels=(1, 2),
                       time_embedding=True, out_channels=6)
    names = [layer.name for layer in model.layers]
    assert "down1_attn0" in names and "middle_attn" in names and "down0_attn0" not in names
    assert sum(isinstance(layer, AttentionBlock) for layer in model.layers) == 2 * 2 * 2 + 1
    outputs = model(_inputs(32, 3, True, None))
    assert tuple(outputs.shape) == (2, 32, 32, 6)


def test_time_and_label_change_the_output():
    model = build_unet(16, 1, time_embedding=True, num_classes=2, **TINY)
    _randomise_head(model)
    images = np.random.default_rng(0).random((1, 16, 16, 1), dtype="float32")
    times, labels = np.array([0.2], "float32"), np.array([0], "int32")
    base = model([images, times, labels]).numpy()
    later = model([images, np.array([0.8], "float32"), labels]).numpy()
    null_class = model([images, times, np.array([2], "int32")]).numpy()
    assert np.abs(base - later).max() > 1e-4
    assert np.abs(base - null_class).max() > 1e-4
    assert model.get_layer("class_embedding").input_dim == 3  # num_classes + 1 (null) rows


def test_sinusoidal_embedding_values():
    layer = SinusoidalEmbedding(8, max_frequency=100.0)
    features = layer(np.array([0.0, 0.5], "float32")).numpy()
    assert features.shape == (2, 8)
    np.testing.assert_allclose(features[0], [0, 0, 0, 0, 1, 1, 1, 1], atol=1e-6)
    # lowest frequency is 1 cycle per unit: sin(2 pi * 0.5) = 0, cos = -1
    np.testing.assert_allclose([features[1, 0], features[1, 4]], [0.0, -1.0], atol=1e-5)
    assert np.abs(features).max() <= 1.0 + 1e-6
    clone = SinusoidalEmbedding.from_config(layer.get_config())
    np.testing.assert_allclose(clone(np.array([0.3], "float32")),
                               layer(np.array([0.3], "float32")))


def test_residual_block_shortcut_only_when_width_changes():
    same = ResidualBlock(8, groups=4)
    same(np.zeros((1, 4, 4, 8), "float32"))
    wider = ResidualBlock(16, groups=4)
    out = wider([np.zeros((1, 4, 4, 8), "float32"), np.zeros((1, 12), "float32")])
    assert tuple(out.shape) == (1, 4, 4, 16)
    assert len(wider.weights) == len(same.weights) + 4  # shortcut + embedding kernels/biases
    assert ResidualBlock.from_config(wider.get_config()).width == 16


@pytest.mark.parametrize("kwargs,match", [
    (dict(image_size=33), "divisible by 2 for a U-Net with 1"),
    (dict(groups=3), "`groups` must divide every width"),
    (dict(channels=0), "`channels` must be an integer >= 1"),
    (dict(attention_levels=(2,)), "attention_levels"),
    (dict(embedding_dims=7), "`embedding_dims` must be even"),
    (dict(widths=()), "`widths` must be a non-empty"),
    (dict(num_classes=0), "`num_classes`"),
])
def test_validation_errors(kwargs, match):
    args = dict(image_size=32, channels=3, **TINY)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        build_unet(**args)


def test_save_and_load_safe_mode_identical(tmp_path):
    model = build_unet(16, 3, attention_levels=(1,), time_embedding=True, num_classes=3, **TINY)
    _randomise_head(model)
    inputs = _inputs(16, 3, True, 3)
    model.save(tmp_path / "unet.keras")
    reloaded = keras.saving.load_model(tmp_path / "unet.keras", safe_mode=True)
    np.testing.assert_allclose(reloaded(inputs), model(inputs), rtol=1e-6, atol=1e-7)


def test_mixed_precision_keeps_float32_output():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_unet(16, 1, attention_levels=(1,), time_embedding=True, **TINY)
        assert model.get_layer("down0_res0").compute_dtype == "float16"
        outputs = model(_inputs(16, 1, True, None))
        assert outputs.dtype == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _variants(model):
    return {layer.variant for layer in model.layers if isinstance(layer, ResidualBlock)}


def test_fast_block_is_the_default_and_has_one_affine_free_norm():
    fast = ResidualBlock(8, groups=4, variant="fast")
    classic = ResidualBlock(8, groups=4)  # the layer's own default: configs saved before
    for block in (fast, classic):
        block([np.zeros((1, 4, 4, 8), "float32"), np.zeros((1, 12), "float32")])
    # classic: two norms with gamma and beta; fast: one norm without them
    assert len(classic.weights) == len(fast.weights) + 4
    assert fast.norm2 is None and not fast.norm1.center and not fast.norm1.scale
    assert _variants(build_unet(16, 1, time_embedding=True, **TINY)) == {"fast"}
    assert _variants(build_unet(16, 1, block="classic", **TINY)) == {"classic"}
    with pytest.raises(ValueError, match="`block` must be one of"):
        build_unet(16, 1, block="slow", **TINY)


def test_configs_without_the_block_argument_rebuild_the_classic_block():
    block = ResidualBlock(8, groups=4, variant="fast")
    config = block.get_config()
    assert config["variant"] == "fast"
    del config["variant"]
    assert ResidualBlock.from_config(config).variant == "classic"
    from lungkit.models.diffusion import DiffusionModel

    model = DiffusionModel(image_size=8, channels=1, timesteps=10, widths=(8, 16),
                           blocks_per_level=1, seed=0)
    config = model.get_config()
    assert config["block"] == "fast" and _variants(model.network) == {"fast"}
    del config["block"]
    old = DiffusionModel.from_config(config)
    assert _variants(old.network) == _variants(old.ema_network) == {"classic"}


def _denoiser():
    from lungkit.models.denoiser import UNetDenoiser

    return UNetDenoiser(image_size=8, channels=1, groups=4, seed=0, **TINY)


def _latent():
    from lungkit.models.latent import LatentDiffusion

    return LatentDiffusion(image_size=16, channels=1, latent_channels=2,
                           autoencoder_widths=(8, 16), timesteps=10, seed=0, **TINY)


@pytest.mark.parametrize("build, unet", [(_denoiser, lambda m: m.unet),
                                         (_latent, lambda m: m.diffusion.network)],
                         ids=["denoiser", "latent"])
def test_every_unet_model_saves_its_block_and_old_files_load_classic(build, unet, tmp_path):
    """A model saved before the `block` option was trained with the classic block."""
    model = build()
    assert model.get_config()["block"] == "fast" and _variants(unet(model)) == {"fast"}
    classic = type(model).from_config({**model.get_config(), "block": "classic"})
    assert _variants(unet(classic)) == {"classic"}
    path = str(tmp_path / "classic.keras")
    classic.save(path)
    assert _variants(unet(keras.saving.load_model(path))) == {"classic"}
    old = model.get_config()
    del old["block"]
    assert _variants(unet(type(model).from_config(old))) == {"classic"}
    with pytest.raises(ValueError, match="`block` must be one of"):
        type(model).from_config({**model.get_config(), "block": "slow"})


@pytest.mark.parametrize("block", ["fast", "classic"])
def test_both_blocks_use_the_embedding(block):
    model = build_unet(16, 1, time_embedding=True, block=block, **TINY)
    _randomise_head(model)
    images = np.random.default_rng(0).random((1, 16, 16, 1), dtype="float32")
    early = model([images, np.array([0.1], "float32")]).numpy()
    late = model([images, np.array([0.9], "float32")]).numpy()
    assert np.abs(early - late).max() > 1e-4
