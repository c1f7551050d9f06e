"""`training.fit` builds the optimizer before the first trace: the train step of a model that
sets `built = True` in `__init__` (DiffusionModel, VAE) is traced once in the first epoch.

Before, Adam's slots were created inside the first trace and `tf.function` traced again
(issue 23: first epoch 29.1 s against 19.7 s). The count is a Python side effect of the
train step, which runs only while tracing.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from lungkit import training


def _model(kind):
    keras.utils.set_random_seed(0)
    if kind == "vae":
        from lungkit.models.vae import VAE
        model = VAE(image_size=32, channels=1, latent_dim=4, widths=(8,), dense_units=0, seed=1)
    else:
        from lungkit.models.diffusion import DiffusionModel
        model = DiffusionModel(image_size=8, channels=1, timesteps=50, widths=(8,),
                               blocks_per_level=1, seed=1)
    model.compile(keras.optimizers.Adam(1e-3))
    return model


def _dataset(kind):
    size = 32 if kind == "vae" else 8
    images = np.random.default_rng(0).random((8, size, size, 1), dtype=np.float32)
    return tf.data.Dataset.from_tensor_slices(images).batch(4)


def _count_traces(model):
    traces = []
    step = model.train_step

    def counted(data):
        traces.append(1)  # runs at trace time only
        return step(data)

    model.train_step = counted
    return traces


@pytest.mark.parametrize("kind", ["diffusion", "vae"])
def test_first_epoch_traces_the_train_step_once(kind, tmp_path):
    model = _model(kind)
    assert model.built and not model.optimizer.built  # the case that traced twice
    traces = _count_traces(model)
    training.fit(model, _dataset(kind), 1, tmp_path, tensorboard=False, verbose=0)
    assert model.optimizer.built
    assert len(traces) == 1


def test_the_count_sees_the_second_trace_of_an_unbuilt_optimizer():
    """The counter is not blind: plain `Model.fit`, which leaves Adam's slots to the first
    trace, traces the step twice (what `training.fit` did before)."""
    model = _model("diffusion")
    traces = _count_traces(model)
    model.fit(_dataset("diffusion"), epochs=1, verbose=0, shuffle=False)
    assert len(traces) == 2
