"""Models: the paper's VAE and U-Net denoiser, a true DDPM/DDIM, and the latent hybrid."""

from pathlib import Path

# every module that registers a lungkit model class with Keras
MODEL_MODULES = ("vae", "denoiser", "diffusion", "autoencoder", "latent")


def load_model(path, **kwargs):
    """Loads any saved lungkit model (`.keras`): `keras.saving.load_model` once every lungkit
    model class is registered, so it works in a fresh interpreter without importing the
    model's module first. `kwargs` go to Keras (e.g. `compile=False`)."""
    import importlib

    import keras

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"`path` must be an existing .keras file. Received: path={path}")
    for module in MODEL_MODULES:
        importlib.import_module(f"lungkit.models.{module}")
    return keras.saving.load_model(path, **kwargs)
