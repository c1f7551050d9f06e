"""Tests for lungkit.models.registry: names, classes, options, and load_model's errors."""

import json
import subprocess
import sys

import keras
import numpy as np
import pytest

import lungkit
from lungkit.models import registry


def test_every_registered_name_imports_its_class():
    for name, spec in registry.MODELS.items():
        cls = registry.model_class(name)
        assert registry.model_name(cls) == name and spec.summary
        assert set(spec.sampling_options) <= {"steps", "sampler", "label", "guidance"}
    assert registry.diffusion_sampler("diffusion") and not registry.diffusion_sampler("vae")
    with pytest.raises(ValueError, match=r"`model` must be one of \('vae', 'denoiser'"):
        registry.model_class("gan")
    json.dumps({name: spec.path for name, spec in registry.MODELS.items()})
    code = "import lungkit.cli, sys; print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "False"]  # the CLI starts without TensorFlow


def test_load_model_works_in_a_fresh_interpreter(tmp_path):
    """`lungkit.load_model` registers every model class itself: no model import needed."""
    from lungkit.models.vae import VAE

    vae = VAE(image_size=32, channels=1, latent_dim=2, widths=(4, 8), dense_units=8, seed=0)
    path = tmp_path / "vae.keras"
    vae.save(path)
    expected = vae.decoder(np.zeros((1, 2), "float32")).numpy()
    code = ("import sys, numpy as np, lungkit\n"
            "m = lungkit.load_model(sys.argv[1])\n"
            "np.save(sys.argv[2], m.decoder(np.zeros((1, 2), 'float32')).numpy())\n")
    out = tmp_path / "decoded.npy"
    subprocess.run([sys.executable, "-c", code, str(path), str(out)], check=True, timeout=300)
    np.testing.assert_allclose(np.load(out), expected, rtol=1e-6)


def test_load_model_names_what_is_wrong_with_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="`path` must be an existing .keras file"):
        lungkit.load_model(tmp_path / "nope.keras")
    text = tmp_path / "notes.keras"
    text.write_text("not a model")
    with pytest.raises(ValueError, match="notes.keras is not a Keras model file"):
        lungkit.load_model(text)
    inputs = keras.Input((4,))
    plain = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    plain.save(tmp_path / "plain.keras")
    with pytest.raises(ValueError, match="holds a Functional, not a lungkit model"):
        lungkit.load_model(tmp_path / "plain.keras")
    data = (tmp_path / "plain.keras").read_bytes()
    (tmp_path / "half.keras").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="half.keras is not a Keras model file"):
        lungkit.load_model(tmp_path / "half.keras")
