"""Tests for lungkit.models.diffusion: the pixel-space DDPM model and its sampler.

The maths it samples with (schedules, plans, update rules) is tested in test_schedule.py;
here, the model around it: training, EMA, saving, conditioning, and seeded sampling loops
through `sample` with fixed stand-in networks, pinned to stored numbers.
"""

import keras
import numpy as np
import pytest
from keras import ops

from lungkit.models.diffusion import DiffusionModel
from lungkit.models.sampling import StepOptions
from lungkit.models.schedule import StepCoefficients

MU, STD = 0.2, 0.3  # per-pixel Gaussian "data" x0 ~ N(MU, STD^2), as in test_schedule.py


# ---------------------------------------------------------------------------- fixed networks
class GaussianEps(keras.layers.Layer):
    """A stand-in network: the exact noise predictor for Gaussian data (times = t / T)."""

    def __init__(self, alphas_cumprod, **kwargs):
        super().__init__(**kwargs)
        self.alphas_cumprod = np.asarray(alphas_cumprod, "float32")

    def call(self, inputs, training=False):
        x, times = inputs[0], inputs[1]
        t = ops.cast(ops.round(times * len(self.alphas_cumprod)), "int32")
        abar = ops.reshape(ops.take(ops.convert_to_tensor(self.alphas_cumprod), t), (-1, 1, 1, 1))
        return ops.sqrt(1 - abar) * (x - ops.sqrt(abar) * MU) / (abar * STD**2 + 1 - abar)


def test_model_dpm_solver_with_exact_denoiser_recovers_gaussian_data():
    model = DiffusionModel(image_size=8, channels=1, widths=(8,), blocks_per_level=1,
                           prediction="epsilon")  # GaussianEps predicts eps
    model.ema_network = GaussianEps(model.schedule.alphas_cumprod)
    images = model.generate(256, steps=20, sampler="dpm++", seed=0, batch_size=256,
                            progress=False, clip_denoised=False)
    pixels = images * 2 - 1  # back to model space
    assert pixels.mean() == pytest.approx(MU, abs=0.01)
    assert pixels.std() == pytest.approx(STD, rel=0.06)


class FakeNetwork(keras.layers.Layer):
    """A fixed stand-in network: `0.5 tanh(x) + 0.2 t/T - 0.1 (+ 0.05 label)`, no weights."""

    def call(self, inputs, training=False):
        x, times = inputs[0], ops.reshape(inputs[1], (-1, 1, 1, 1))
        output = 0.5 * ops.tanh(x) + 0.2 * times - 0.1
        if len(inputs) > 2:
            output = output + 0.05 * ops.reshape(ops.cast(inputs[2], "float32"), (-1, 1, 1, 1))
        return output


# (prediction, num_classes, n, sample() arguments) -> (sum, mean |x|, three elements of x),
# stored from the sampler before its step was split into a predict and an update step.
GOLDEN_SAMPLES = [
    ("epsilon", None, 1, dict(sampler="ddim", steps=10, seed=0, clip_denoised=False),
     (-0.535729169845581, 0.7142937183380127,
      -1.7587025165557861, 0.8967405557632446, -1.4341791868209839)),
    ("epsilon", None, 1, dict(sampler="ddim", steps=10, eta=0.5, seed=1, clip_denoised=False),
     (-4.4173808097839355, 1.037090539932251,
      0.6239830255508423, -1.8786883354187012, -0.577747642993927)),
    ("epsilon", None, 1, dict(sampler="dpm++", steps=10, seed=2, clip_denoised=False),
     (-3.8840041160583496, 0.560544490814209,
      -0.5919249057769775, -0.6173231601715088, 0.6367402672767639)),
    ("epsilon", None, 1, dict(sampler="ddpm", seed=3, clip_denoised=False),
     (7.460798263549805, 0.7010349035263062,
      0.07451611757278442, 0.7149218320846558, -0.1963394284248352)),
    ("v", 2, 2, dict(sampler="ddim", steps=10, seed=4, label=1, guidance=2.0),
     (-2.945082664489746, 0.5198574066162109,
      -0.41955381631851196, -0.6478758454322815, -0.7961384057998657)),
    ("v", 2, 2, dict(sampler="dpm++", steps=10, seed=5, label=[0, 1], guidance=1.0,
                     clip_denoised=False),
     (4.189006328582764, 0.5249696969985962,
      -1.7295656204223633, -0.5296802520751953, -0.9032392501831055)),
]


@pytest.mark.parametrize("prediction, num_classes, n, arguments, golden", GOLDEN_SAMPLES,
                         ids=[f"{case[0]}-{case[3]['sampler']}-{i}"
                              for i, case in enumerate(GOLDEN_SAMPLES)])
def test_golden_sample_with_a_fixed_network(prediction, num_classes, n, arguments, golden):
    model = DiffusionModel(image_size=4, channels=1, timesteps=50, schedule="linear",
                           prediction=prediction, widths=(8,), blocks_per_level=1,
                           num_classes=num_classes, seed=0)
    model.ema_network = FakeNetwork()
    x = model.sample(n, progress=False, **arguments)
    assert x.shape == (n, 4, 4, 1)
    # One comparison for all five numbers, so a failure shows how many moved.
    measured = [x.sum(), np.abs(x).mean(), *x.ravel()[[0, 5, -1]]]
    np.testing.assert_allclose(measured, golden, rtol=0, atol=1e-5)


def test_sample_progressive_yields_every_step_and_sample_drains_it():
    model = DiffusionModel(image_size=4, channels=1, timesteps=50, schedule="linear",
                           widths=(8,), blocks_per_level=1, seed=0)
    model.ema_network = FakeNetwork()
    arguments = dict(steps=5, sampler="dpm++", seed=1, batch_size=2, progress=False)
    chain = list(model.sample_progressive(3, **arguments))
    assert [(step.start, step.count, step.index, step.final) for step in chain] == \
        [(0, 2, k, k == 4) for k in range(5)] + [(2, 1, k, k == 4) for k in range(5)]
    assert [step.timestep for step in chain[:5]] == list(model.schedule.plan("dpm++", 5).timesteps)
    final = np.concatenate([ops.convert_to_numpy(step.x)[:step.count] for step in chain
                            if step.final])
    np.testing.assert_array_equal(final, model.sample(3, **arguments))
    # The last step jumps to t = -1, where the sample is that step's pred_x0; earlier ones not.
    np.testing.assert_allclose(chain[4].x, chain[4].pred_x0, atol=1e-6)
    assert not np.allclose(chain[3].x, chain[3].pred_x0, atol=1e-3)
    # Arguments are checked at the call, before the first step; past `n` they are keywords.
    with pytest.raises(ValueError, match="`n` must be an integer >= 1"):
        model.sample_progressive(0)
    with pytest.raises(TypeError, match="positional"):
        model.generate(2, 5)


# ---------------------------------------------------------------------------- the model
def tiny_model(**kwargs):
    args = dict(image_size=16, channels=1, timesteps=20, widths=(8, 16), blocks_per_level=1,
                seed=0)
    model = DiffusionModel(**{**args, **kwargs})
    # The U-Net's head starts at zero; random head weights make the sampler outputs depend
    # on the inputs, time and label.
    for network in (model.network, model.ema_network):
        head = network.get_layer("head")
        head.set_weights([w + 0.05 * np.random.default_rng(0).standard_normal(w.shape)
                          for w in head.get_weights()])
    return model


def test_config_round_trip_and_validation():
    model = DiffusionModel(image_size=16, channels=3, timesteps=50, schedule="linear",
                           prediction="v", widths=(8, 16), blocks_per_level=1,
                           attention_levels=(1,), ema_decay=0.99, num_classes=3,
                           class_dropout=0.2, seed=7)
    config = model.get_config()
    clone = DiffusionModel.from_config(config)
    assert clone.get_config() == config
    assert config["prediction"] == "v" and config["num_classes"] == 3
    with pytest.raises(ValueError, match="`prediction` must be one of"):
        DiffusionModel(prediction="x0")
    with pytest.raises(ValueError, match=r"`ema_decay` must be a finite number in \[0, 1\)"):
        DiffusionModel(ema_decay=1.0)
    with pytest.raises(ValueError, match="`kind` must be one of"):
        DiffusionModel(schedule="sigmoid")


def test_tiny_model_loss_falls(tiny_ct_batch):
    model = DiffusionModel(image_size=32, channels=3, timesteps=100, widths=(8, 16),
                           blocks_per_level=1, seed=0, prediction="epsilon")
    model.compile(optimizer=keras.optimizers.Adam(5e-3))
    images = np.repeat(tiny_ct_batch, 2, axis=0)
    losses = model.fit(images, batch_size=8, epochs=25, verbose=0).history["loss"]
    # The untrained network outputs zeros, so its loss is E[eps^2] = 1.
    assert losses[0] == pytest.approx(1.0, abs=0.25)
    assert np.isfinite(losses).all() and np.mean(losses[-5:]) < 0.6 * losses[0]


def test_ema_update_rule_and_save_load_keeps_both_weights(tmp_path, tiny_ct_batch):
    model = tiny_model(image_size=32, channels=3, ema_decay=0.5, prediction="v",
                       ema_warmup=False)  # the plain rule; the warm-up: test_recipe.py
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    for online, ema in zip(model.network.weights, model.ema_network.weights, strict=True):
        np.testing.assert_array_equal(online.numpy(), ema.numpy())  # initialised equal
    before = [w.numpy() for w in model.ema_network.weights]
    model.fit(tiny_ct_batch, batch_size=4, epochs=1, verbose=0)  # one optimizer step
    online = [w.numpy() for w in model.network.weights]
    for old, new, w in zip(before, model.ema_network.weights, online, strict=True):
        np.testing.assert_allclose(new.numpy(), 0.5 * old + 0.5 * w, rtol=1e-5, atol=1e-7)
    model.fit(tiny_ct_batch, epochs=2, verbose=0)
    assert not all(np.array_equal(a.numpy(), b.numpy())
                   for a, b in zip(model.network.weights, model.ema_network.weights, strict=True))
    ema_images = model.generate(2, steps=3, seed=1, progress=False)
    online_images = model.generate(2, steps=3, seed=1, progress=False, use_ema=False)
    assert not np.allclose(ema_images, online_images)
    model.save(tmp_path / "diffusion.keras")
    reloaded = keras.saving.load_model(tmp_path / "diffusion.keras")
    for name in ("network", "ema_network"):
        for a, b in zip(getattr(model, name).weights, getattr(reloaded, name).weights,
                        strict=True):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_array_equal(reloaded.generate(2, steps=3, seed=1, progress=False),
                                  ema_images)


def _count_steps(model):
    """Wraps the compiled step so each call (one network evaluation) is recorded."""
    import tensorflow as tf

    compiled = tf.function(model._sampling_step, reduce_retracing=True)
    calls = []

    def counting(x, row, times, *args):
        calls.append(float(ops.convert_to_numpy(times)[0]))
        return compiled(x, row, times, *args)

    model._compiled_step = counting
    return calls


def test_ddpm_uses_every_step_and_ddim_the_requested_count():
    model = tiny_model()
    calls = _count_steps(model)
    model.generate(2, sampler="ddpm", steps=5, seed=0, progress=False)
    np.testing.assert_allclose(calls, np.arange(19, -1, -1) / 20)
    calls.clear()
    model.generate(2, sampler="ddim", steps=5, seed=0, progress=False, spacing="trailing")
    np.testing.assert_allclose(calls, np.array([19, 15, 11, 7, 3]) / 20)
    calls.clear()
    model.generate(3, sampler="dpm++", steps=4, seed=0, batch_size=2, progress=False)
    assert len(calls) == 2 * 4  # two batches of four steps


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpm++"])
def test_generate_shapes_and_range(sampler, channels):
    model = tiny_model(channels=channels)
    images = model.generate(3, steps=4, sampler=sampler, seed=0, batch_size=2, progress=False)
    assert images.shape == (3, 16, 16, channels) and images.dtype == np.float32
    assert images.min() >= 0 and images.max() <= 1 and images.std() > 0


def test_sampling_is_deterministic_for_a_seed():
    model = tiny_model()
    first = model.generate(2, steps=5, seed=3, progress=False)
    traces = model._compiled_step.experimental_get_tracing_count()
    np.testing.assert_array_equal(first, model.generate(2, steps=5, seed=3, progress=False))
    model.generate(2, steps=7, seed=9, spacing="trailing", progress=False)
    assert model._compiled_step.experimental_get_tracing_count() == traces  # no retracing
    assert not np.allclose(first, model.generate(2, steps=5, seed=4, progress=False))
    stochastic = model.generate(2, steps=5, seed=3, eta=1.0, progress=False)
    np.testing.assert_array_equal(stochastic,
                                  model.generate(2, steps=5, seed=3, eta=1.0, progress=False))
    assert not np.allclose(first, stochastic)


def test_guidance_and_conditioning():
    model = tiny_model(num_classes=3)
    assert model(np.zeros((2, 16, 16, 1), "float32")).shape == (2, 16, 16, 1)  # fit's build
    unconditional = model.generate(2, steps=3, seed=0, progress=False)
    np.testing.assert_array_equal(
        model.generate(2, steps=3, seed=0, label="malignant", guidance=0.0, progress=False),
        unconditional)
    normal = model.generate(2, steps=3, seed=0, label=0, progress=False)
    malignant = model.generate(2, steps=3, seed=0, label="Malignant", progress=False)
    assert not np.allclose(normal, unconditional) and not np.allclose(normal, malignant)
    guided = model.generate(2, steps=3, seed=0, label=2, guidance=3.0, progress=False)
    assert not np.allclose(guided, malignant)
    with pytest.raises(ValueError, match="`guidance` needs a `label`"):
        model.generate(2, steps=3, guidance=2.0, progress=False)
    with pytest.raises(ValueError, match="`label` needs a model built with `num_classes`"):
        tiny_model().generate(2, steps=3, label=1, progress=False)


def test_guided_step_combines_conditional_and_unconditional_outputs():
    model = tiny_model(num_classes=3)
    x = keras.random.normal((2, 16, 16, 1), seed=0)
    row = ops.convert_to_tensor(model.schedule.plan("ddim", 3).coefficients[0].astype("float32"))
    times = ops.full((2,), 0.5)
    labels = ops.convert_to_tensor([2, 2], dtype="int32")
    null = ops.convert_to_tensor([3, 3], dtype="int32")

    def x0(labels, guidance, guided):
        options = StepOptions(use_ema=True, guided=guided, clip=False, stochastic=False)
        step = StepCoefficients.from_row(row)
        return ops.convert_to_numpy(model._denoise(x, step, times, labels, guidance, options)[0])

    conditional, unconditional = x0(labels, 1.0, False), x0(null, 0.0, False)
    np.testing.assert_allclose(x0(labels, 3.0, True),
                               unconditional + 3.0 * (conditional - unconditional),
                               rtol=1e-4, atol=1e-4)




def test_the_last_sampling_batch_is_not_padded():
    from lungkit.models.diffusion import DiffusionModel

    model = DiffusionModel(image_size=8, channels=1, timesteps=10, widths=(8,),
                           blocks_per_level=1, seed=0)
    steps = list(model.sample_progressive(5, steps=2, batch_size=3, seed=0, progress=False))
    finals = [s for s in steps if s.final]
    assert [(s.start, s.count, s.x.shape[0]) for s in finals] == [(0, 3, 3), (3, 2, 2)]
    assert model.sample(5, steps=2, batch_size=3, seed=0, progress=False).shape == (5, 8, 8, 1)
