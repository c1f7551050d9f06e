"""Tests for lungkit.training.lr_schedules and `train(lr_schedule=...)`: warm-up then cosine
decay, known values at its ends, and a resumed run that continues the schedule."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from lungkit import training
from lungkit.models.base import GenerativeModel
from lungkit.training.lr_schedules import WarmupCosine, make_schedule


@keras.saving.register_keras_serializable(package="lungkit_tests")
class OneConv(GenerativeModel):
    """One convolution reconstructing its input (MSE)."""

    loss_names = ("loss",)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv = keras.layers.Conv2D(3, 3, padding="same")

    def call(self, images, training=False):
        return self.conv(images)

    def compute_losses(self, images, labels=None, training=False):
        return (keras.ops.mean((self(images, training=training) - images) ** 2),)


def test_warmup_cosine_known_values():
    schedule = WarmupCosine(1e-3, total_steps=100, warmup_steps=10)
    lr = [float(schedule(step)) for step in (0, 5, 10, 55, 100, 150)]
    np.testing.assert_allclose(lr, [0.0, 5e-4, 1e-3, 5e-4, 0.0, 0.0], atol=1e-9)
    floor = WarmupCosine(1e-3, total_steps=100, warmup_steps=0, final_fraction=0.1)
    assert float(floor(0)) == pytest.approx(1e-3) and float(floor(100)) == pytest.approx(1e-4)
    assert WarmupCosine.from_config(schedule.get_config()).get_config() == schedule.get_config()


def test_make_schedule_reads_warmup_as_fraction_or_steps():
    assert make_schedule("constant", 1e-3, 100) == 1e-3
    assert make_schedule("cosine", 1e-3, 200, warmup=0.05).warmup_steps == 10
    assert make_schedule("cosine", 1e-3, 200, warmup=30).warmup_steps == 30
    with pytest.raises(ValueError, match="`lr_schedule` must be one of"):
        make_schedule("step", 1e-3, 100)
    with pytest.raises(ValueError, match="`warmup_steps` must be < total_steps"):
        WarmupCosine(1e-3, total_steps=10, warmup_steps=10)


class _Stop(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt("simulated crash")


def _train(out_dir, **kwargs):
    keras.utils.set_random_seed(0)
    images = np.random.RandomState(0).rand(8, 8, 8, 3).astype("float32")
    dataset = tf.data.Dataset.from_tensor_slices(images).batch(4)  # 2 steps per epoch
    return training.train(lambda: OneConv(name="one"), dataset, epochs=4, out_dir=out_dir,
                          optimizer="sgd", learning_rate=0.1, lr_schedule="cosine",
                          warmup=0.25, verbose=0, **kwargs)


def test_train_with_cosine_schedule_resumes_where_it_stopped(tmp_path):
    model, expected = _train(tmp_path / "ref")
    schedule = model.optimizer.learning_rate  # the current rate, at step 8 = the end
    assert int(model.optimizer.iterations.numpy()) == 8
    assert float(model.optimizer._learning_rate(2)) == pytest.approx(0.1)  # end of warm-up
    assert float(schedule) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "run", callbacks=[_Stop()])
    resumed, history = _train(tmp_path / "run")
    assert history["epoch"] == [0, 1, 2, 3]
    np.testing.assert_allclose(history["loss"], expected["loss"], rtol=1e-5)
    for a, b in zip(resumed.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_cli_train_takes_the_schedule_options():
    from lungkit.cli import build_parser

    args = build_parser().parse_args(["train", "diffusion", "--lr-schedule", "cosine",
                                      "--warmup", "0.1"])
    assert (args.lr_schedule, args.warmup) == ("cosine", 0.1)
    defaults = build_parser().parse_args(["train", "diffusion"])
    assert (defaults.lr_schedule, defaults.warmup) == ("constant", 0.05)
