"""DistilledDiffusion: progressive (and guided) distillation of a tiny DDPM, trained once."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from lungkit import training
from lungkit.models.diffusion import DiffusionModel
from lungkit.models.distill import DistilledDiffusion, halving_rounds
from lungkit.models.registry import load_model

SIZE, T = 8, 100  # 8 px, 100 timesteps: trailing grids 99, 74, 49, 24 nest at 4, 2, 1 steps


def images_and_labels(n=32):
    yy, xx = np.mgrid[:SIZE, :SIZE]
    images = np.stack([0.5 + 0.4 * np.sin(xx / 2 + k) * np.cos(yy / 3) for k in range(n)])
    return np.clip(images, 0, 1)[..., None].astype("float32"), np.arange(n) % 2


def dataset(n=32, batch=16):
    return tf.data.Dataset.from_tensor_slices(images_and_labels(n)).batch(batch)


def tiny_teacher(num_classes=2, prediction="v"):
    return DiffusionModel(image_size=SIZE, channels=1, widths=(8,), blocks_per_level=1,
                          timesteps=T, num_classes=num_classes, prediction=prediction, seed=0)


@pytest.fixture(scope="module")
def teacher():
    """A conditional 8 px DDPM trained for 40 updates (enough to have a 2-step output)."""
    keras.utils.set_random_seed(0)
    model = tiny_teacher()
    model.compile(optimizer=keras.optimizers.Adam(2e-3))
    images, labels = images_and_labels()
    model.fit(images, labels, batch_size=4, epochs=5, verbose=0)
    return model


def student(teacher, **kwargs):
    keras.utils.set_random_seed(1)
    options = {"steps": 1, "start_steps": 2, "round_updates": 40, "seed": 0, **kwargs}
    model = DistilledDiffusion(teacher, **options)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    return model


@pytest.fixture(scope="module")
def distilled(teacher, tmp_path_factory):
    """`(untrained student, student after one 2 -> 1 round of 40 updates by training.fit)`."""
    untrained = student(teacher)
    trained = student(teacher)
    training.fit(trained, dataset(batch=4), 5, tmp_path_factory.mktemp("distill"), verbose=0,
                 tensorboard=False)
    return untrained, trained


GUIDED = dict(label=1, guidance=2.0)


@pytest.mark.parametrize("condition", [{}, GUIDED], ids=["unconditional", "guided"])
def test_one_step_student_approaches_two_step_teacher_on_fixed_noise(teacher, distilled,
                                                                       condition):
    untrained, trained = distilled
    target = teacher.generate(8, steps=2, spacing="trailing", seed=3, progress=False,
                              **condition)
    before, after = (model.generate(8, steps=1, seed=3, progress=False, **condition)
                     for model in (untrained, trained))
    error_before = np.mean((before - target) ** 2)
    error_after = np.mean((after - target) ** 2)
    assert error_after < 0.5 * error_before, (error_before, error_after)


def test_untrained_student_is_its_teacher_and_noise_matches_the_teacher(teacher, distilled):
    untrained, _ = distilled
    # One student step from T-1 straight to x_0 is one teacher DDIM step with the same grid
    np.testing.assert_allclose(
        untrained.generate(4, steps=1, seed=5, progress=False, label=0, guidance=1.0),
        teacher.generate(4, steps=1, spacing="trailing", seed=5, progress=False, label=0,
                         guidance=1.0), atol=1e-5)


def test_guidance_is_an_input_and_w0_is_the_unconditional_student(distilled):
    _, trained = distilled
    unconditional = trained.generate(4, seed=2, progress=False)
    w0 = trained.generate(4, seed=2, progress=False, label=1, guidance=0.0)
    np.testing.assert_array_equal(w0, unconditional)
    w1, w3 = (trained.generate(4, seed=2, progress=False, label=1, guidance=w) for w in (1, 3))
    # a tiny teacher's guidance moves the outputs little (6e-4 with the fast U-Net block);
    # ignoring w would leave them exactly equal
    assert np.abs(w3 - w1).mean() > 1e-4
    assert np.abs(w1 - unconditional).mean() > 1e-4


def test_save_and_load_give_identical_outputs(distilled, tmp_path):
    _, trained = distilled
    trained.save(tmp_path / "student.keras")
    reloaded = load_model(tmp_path / "student.keras")
    assert isinstance(reloaded, DistilledDiffusion) and reloaded.rounds == (1,)
    for options in ({}, GUIDED):
        np.testing.assert_allclose(reloaded.generate(4, seed=7, progress=False, **options),
                                   trained.generate(4, seed=7, progress=False, **options),
                                   rtol=1e-6, atol=1e-6)


class _Interrupt(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 2:
            raise KeyboardInterrupt("simulated crash")


class _NetworkAfterEachUpdate(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.weights = []

    def on_train_batch_end(self, batch, logs=None):
        self.weights.append(self.model.network.get_weights())


def test_rounds_hand_over_keep_their_students_and_resume(tmp_path):
    """Rounds 2 -> 1 of 3 updates, 2 updates per epoch: round 0 ends inside epoch 2 (index
    1), so the resumed run (killed before epoch 3) must bring the hand-over back too."""
    teacher = tiny_teacher(num_classes=None)  # an untrained one: the mechanics, cheaply

    def fresh():
        return student(teacher, start_steps=4, round_updates=3)

    data, spy = dataset(16, 8), _NetworkAfterEachUpdate()
    reference = fresh()
    assert reference.rounds == (2, 1) and reference.trained_steps == (2,)
    expected = training.fit(reference, data, 4, tmp_path / "ref", verbose=0, callbacks=[spy],
                            tensorboard=False)
    assert reference.trained_steps == (2, 1)
    after_round0 = spy.weights[2]  # after update 3
    for network in (reference.previous_network, reference.kept_networks[0]):
        for a, b in zip(network.get_weights(), after_round0, strict=True):
            np.testing.assert_array_equal(a, b)
    assert any(np.abs(a - b).max() > 0 for a, b in zip(reference.network.get_weights(),
                                                        after_round0, strict=True))
    two_steps = reference.generate(2, steps=2, seed=0, progress=False)
    assert two_steps.shape == (2, SIZE, SIZE, 1) and 0 <= two_steps.min() <= two_steps.max() <= 1

    with pytest.raises(KeyboardInterrupt):
        training.fit(fresh(), data, 4, tmp_path / "run", callbacks=[_Interrupt()], verbose=0,
                     tensorboard=False)
    resumed = fresh()
    history = training.fit(resumed, data, 4, tmp_path / "run", verbose=0, tensorboard=False)
    assert history["epoch"] == [0, 1, 2, 3]
    np.testing.assert_allclose(history["loss"], expected["loss"], rtol=1e-5)
    for a, b in zip(resumed.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_unconditional_teacher_gives_an_unconditional_student():
    model = DistilledDiffusion(tiny_teacher(num_classes=None), steps=2, start_steps=4)
    assert not model.guided and model.network.input_shape[0] == (None, SIZE, SIZE, 1)
    with pytest.raises(ValueError, match="num_classes"):
        model.generate(1, label=1, progress=False)


def test_clear_errors(teacher, distilled):
    _, trained = distilled
    with pytest.raises(ValueError, match=r"trained step counts \(1,\).*steps=4"):
        trained.generate(1, steps=4, progress=False)
    with pytest.raises(TypeError, match="DiffusionModel.*Received: a Sequential"):
        DistilledDiffusion(keras.Sequential())
    with pytest.raises(ValueError, match="predict v.*'epsilon'"):
        DistilledDiffusion(tiny_teacher(prediction="epsilon"))
    with pytest.raises(ValueError, match="power of two.*start_steps=12"):
        halving_rounds(12, 4)
    assert halving_rounds(64, 1) == (32, 16, 8, 4, 2, 1)
