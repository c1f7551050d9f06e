def test_package_imports():
    import lungkit

    assert lungkit.__version__


def test_load_model_works_in_a_fresh_interpreter(tmp_path):
    """`lungkit.load_model` registers every model class itself: no model import needed."""
    import subprocess
    import sys

    import numpy as np

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


def test_load_model_names_a_missing_file(tmp_path):
    import pytest

    import lungkit

    with pytest.raises(FileNotFoundError, match="`path` must be an existing .keras file"):
        lungkit.load_model(tmp_path / "nope.keras")
