"""Tests for lungkit.models.base: `ReplicaSeeds`, each replica's own training draws.

The two-replica test needs a fresh TensorFlow split into two logical CPUs, so it runs this
file's `_worker` entry in a subprocess (as tests/training/test_loop.py does).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from lungkit.models.base import ReplicaSeeds

ROOT = Path(__file__).resolve().parents[2]
MODELS = ("diffusion", "denoiser", "vae")


def test_replica_seeds_leave_replica_0_unchanged_and_fold_in_others():
    plain, viewed = keras.random.SeedGenerator(7), keras.random.SeedGenerator(7)
    np.testing.assert_array_equal(keras.random.normal((5,), seed=ReplicaSeeds(viewed)),
                                  keras.random.normal((5,), seed=plain))
    np.testing.assert_array_equal(viewed.state, plain.state)  # it advances the generator
    first = keras.random.normal((5,), seed=ReplicaSeeds(keras.random.SeedGenerator(7), 1))
    again = keras.random.normal((5,), seed=ReplicaSeeds(keras.random.SeedGenerator(7), 1))
    other = keras.random.normal((5,), seed=ReplicaSeeds(keras.random.SeedGenerator(7), 2))
    np.testing.assert_array_equal(first, again)  # reproducible from (seed, replica)
    assert not np.allclose(first, keras.random.normal((5,), seed=keras.random.SeedGenerator(7)))
    assert not np.allclose(first, other)


def test_two_replicas_draw_their_own_noise_reproducibly(tmp_path):
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT),
                   "CUDA_VISIBLE_DEVICES": ""}
    process = subprocess.run([sys.executable, str(Path(__file__).resolve()), str(tmp_path)],
                             env=environment, cwd=str(ROOT), capture_output=True, text=True,
                             timeout=180)
    assert process.returncode == 0, (process.stdout + process.stderr)[-3000:]
    results = json.loads((tmp_path / "replicas.json").read_text())
    assert results["replicas"] == 2
    for name in MODELS:
        first, again, single = (results[name][key] for key in ("first", "again", "single"))
        # every replica its own timesteps / noise / label-drop mask: the same images, weights
        # and generator state give each replica another loss
        assert first[0] != pytest.approx(first[1], rel=1e-6), name
        assert again == first, name  # reproducible from the model's seed and the replica id
        assert single == pytest.approx(first[0], rel=1e-5), name  # replica 0 = one device


# --- subprocess entry -------------------------------------------------------------------------
def _build(name):
    from lungkit.models.denoiser import UNetDenoiser
    from lungkit.models.diffusion import DiffusionModel
    from lungkit.models.vae import VAE

    if name == "diffusion":
        return DiffusionModel(image_size=8, channels=1, timesteps=50, widths=(8,),
                              blocks_per_level=1, num_classes=3, class_dropout=0.5, seed=0)
    if name == "denoiser":
        return UNetDenoiser(image_size=8, channels=1, widths=(8,), blocks_per_level=1,
                            noise_std=(0.05, 0.3), seed=0)
    return VAE(image_size=32, channels=1, latent_dim=4, widths=(8, 16), dense_units=16,
               num_classes=3, class_dropout=0.5, seed=0)


def _worker(out_dir):
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from lungkit.training.runs import _seed_generators

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    labels = tf.constant([0, 1, 2, 0])
    results = {"replicas": strategy.num_replicas_in_sync}
    for name in MODELS:
        keras.utils.set_random_seed(0)
        with strategy.scope():
            model = _build(name)
            size = model.image_size
            images = tf.constant(np.random.default_rng(0).uniform(size=(4, size, size, 1)),
                                 tf.float32)
            model.compute_losses(images, labels, training=False)  # builds it
        states = [g.state.numpy() for g in _seed_generators(model)]

        def restore(model=model, states=states):
            for generator, state in zip(_seed_generators(model), states, strict=True):
                generator.state.assign(state)

        @tf.function
        def replicated(model=model, images=images):
            return strategy.run(lambda: model.compute_losses(images, labels, training=True)[0])

        first = [float(v) for v in strategy.experimental_local_results(replicated())]
        restore()
        again = [float(v) for v in strategy.experimental_local_results(replicated())]
        restore()
        single = float(model.compute_losses(images, labels, training=True)[0])
        print(name, first, again, single)
        results[name] = {"first": first, "again": again, "single": single}
    Path(out_dir, "replicas.json").write_text(json.dumps(results))


if __name__ == "__main__":
    _worker(sys.argv[1])
