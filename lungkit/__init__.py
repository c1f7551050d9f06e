"""lungkit: VAE vs. diffusion models for lung CT image generation.

Reproduces, measures and extends Chen (2024), "Comparison of VAE model and diffusion model in
lung cancer images generation". The public API is re-exported here and imported lazily, so
`import lungkit` is quick and the data tools work without loading TensorFlow.
"""

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "load_image": "lungkit.data.images",
    "load_data": "lungkit.data.images",
    "normalize": "lungkit.data.images",
    "CLASS_NAMES": "lungkit.data.labels",
    "fetch_dataset": "lungkit.data.fetch",
    "mount_drive": "lungkit.data.sources",
    "make_phantom_dataset": "lungkit.data.phantom",
    "make_dataset": "lungkit.data.pipeline",
    "VAE": "lungkit.models.vae",
    "build_unet": "lungkit.models.unet",
    "UNetDenoiser": "lungkit.models.denoiser",
    "NoiseSchedule": "lungkit.models.diffusion",
    "DiffusionModel": "lungkit.models.diffusion",
    "LatentDiffusion": "lungkit.models.latent",
    "load_model": "lungkit.models.registry",
    "evaluate": "lungkit.evaluation.metrics",
    "compare": "lungkit.experiment.compare",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lungkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)
