"""lungkit: VAE vs. diffusion models for lung CT image generation.

Reproduces, measures and extends Chen (2024), "Comparison of VAE model and diffusion model in
lung cancer images generation". The public API is re-exported here and imported lazily, so
`import lungkit` is quick and the data tools work without loading TensorFlow.

TensorFlow is not a dependency of `pip install lungkit` (platforms such as Colab ship their own
build; the `cpu` and `gpu` extras install one). Importing a part that needs it without it
raises an ImportError that names those extras (`require_tensorflow`).
"""

import importlib
import importlib.abc
import importlib.util
import sys

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
    "NoiseSchedule": "lungkit.models.schedule",
    "DiffusionModel": "lungkit.models.diffusion",
    "LatentDiffusion": "lungkit.models.latent",
    "load_model": "lungkit.models.registry",
    "evaluate": "lungkit.evaluation.metrics",
    "compare": "lungkit.experiment.compare",
}

__all__ = ["__version__", "require_tensorflow", *_EXPORTS]

# The parts of lungkit that import TensorFlow (directly or through Keras) when imported: these
# packages and everything in them, except the TensorFlow-free modules below.
TENSORFLOW_PACKAGES = ("lungkit.models", "lungkit.training", "lungkit.evaluation",
                       "lungkit.data.pipeline")
TENSORFLOW_FREE = ("lungkit.models", "lungkit.models.registry", "lungkit.models.schedule",
                   "lungkit.evaluation", "lungkit.evaluation.statistics")


def require_tensorflow(what="this part of lungkit"):
    """Raises an ImportError naming the extras that install TensorFlow, when it is missing.

    Without the check, a missing TensorFlow surfaces deep inside Keras ("No module named
    'tensorflow.python'"), which does not say that `pip install lungkit` leaves it out on
    purpose. `what` names the part that needs it, for the message.
    """
    if importlib.util.find_spec("tensorflow") is None:
        raise ImportError(
            f"{what} needs TensorFlow, which is not installed. Install lungkit with it: "
            f'pip install "lungkit[cpu]" (or "lungkit[gpu]" for CUDA GPUs); Colab already '
            f"has TensorFlow. `import lungkit` and the data tools work without it.",
            name="tensorflow")


class _TensorFlowCheck(importlib.abc.MetaPathFinder):
    """Calls `require_tensorflow` before Python imports one of `TENSORFLOW_PACKAGES`.

    It finds nothing itself (returns None), so the normal finders then import the package.
    """

    def find_spec(self, name, path=None, target=None):
        needs = any(name == p or name.startswith(p + ".") for p in TENSORFLOW_PACKAGES)
        if needs and name not in TENSORFLOW_FREE:
            require_tensorflow(name)
        return None


if not any(isinstance(finder, _TensorFlowCheck) for finder in sys.meta_path):
    sys.meta_path.insert(0, _TensorFlowCheck())


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lungkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)
