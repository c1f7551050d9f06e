"""The one registry of lungkit's models: their names, classes, and how to load a saved one.

`MODELS` maps the name used everywhere (the CLI's `MODEL` argument, `ExperimentConfig.models`,
the benchmarks) to a `ModelSpec`; `STUDENTS` does the same for models trained from a saved
teacher (the CLI's `train distill`): where the class lives and a one-line summary. Classes are
imported only when asked for (`model_class`), so the CLI starts without TensorFlow. Each model
class declares the `generate()` options a caller may pass (`SAMPLING_OPTIONS`), so nobody has
to probe a model with `hasattr` to know what it takes.

`load_model(path)` loads any saved lungkit model in a fresh interpreter: every registered
module is imported first, so Keras knows every class.
"""

import dataclasses
import importlib
import zipfile
from pathlib import Path

from lungkit import require_tensorflow


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A registered model.

    Attributes:
        name: the name used by the CLI, the experiment config and the benchmarks.
        path: the class, as `"module:Class"`.
        summary: one line for help texts.
        sampling_options: the keyword arguments of its `generate()` that a caller may set
            from the command line (`seed` is always accepted).
    """

    name: str
    path: str
    summary: str
    sampling_options: tuple = ()

    @property
    def module(self):
        return self.path.partition(":")[0]

    def load_class(self):
        """Imports and returns the class."""
        module, _, attribute = self.path.partition(":")
        return getattr(importlib.import_module(module), attribute)


MODELS = {spec.name: spec for spec in (
    ModelSpec("vae", "lungkit.models.vae:VAE", "the paper's VAE (conditional with num_classes)",
              ("label",)),
    ModelSpec("denoiser", "lungkit.models.denoiser:UNetDenoiser",
              "the paper's U-Net denoiser (its 'diffusion model')", ("steps",)),
    ModelSpec("diffusion", "lungkit.models.diffusion:DiffusionModel",
              "a true DDPM sampled by DDIM, DDPM or DPM-Solver++",
              ("steps", "sampler", "label", "guidance")),
    ModelSpec("latent", "lungkit.models.latent:LatentDiffusion",
              "the VAE-diffusion hybrid: a DDPM in an autoencoder's latent space",
              ("steps", "sampler", "label", "guidance")),
)}
# Models trained from a saved teacher, not from the data alone (`lungkit train distill
# --teacher PATH`): registered for the CLI, `model_name` and `load_model`, but not models of
# the comparison in their own right (`ExperimentConfig.models` lists `MODELS`).
STUDENTS = {spec.name: spec for spec in (
    ModelSpec("distill", "lungkit.models.distill:DistilledDiffusion",
              "a 1-4 step student distilled from a saved diffusion model (--teacher)",
              ("steps", "label", "guidance")),
)}
REGISTERED = {**MODELS, **STUDENTS}
# Modules that register Keras classes a saved lungkit model may contain (sub-models too).
SERIALIZABLE_MODULES = ("lungkit.models.vae", "lungkit.models.denoiser",
                        "lungkit.models.diffusion", "lungkit.models.autoencoder",
                        "lungkit.models.latent", "lungkit.models.distill")


def model_spec(name):
    """The `ModelSpec` registered under `name`; the error lists the names."""
    if name not in REGISTERED:
        raise ValueError(f"`model` must be one of {tuple(REGISTERED)}. Received: model={name!r}")
    return REGISTERED[name]


def diffusion_sampler(name):
    """True when the registered model samples with a diffusion sampler (`sampler=` option)."""
    return "sampler" in model_spec(name).sampling_options


def model_class(name):
    """The model class registered under `name` (imported now)."""
    return model_spec(name).load_class()


def model_name(model):
    """The registry name of a model instance or class (None when it is not registered)."""
    cls = model if isinstance(model, type) else type(model)
    for spec in REGISTERED.values():
        if spec.path == f"{cls.__module__}:{cls.__name__}":
            return spec.name
    return None


def load_model(path, **kwargs):
    """Loads any saved lungkit model (`.keras`).

    `keras.saving.load_model` once every lungkit model class is registered, so it works in a
    fresh interpreter without importing the model's module first. `kwargs` go to Keras
    (e.g. `compile=False`).

    Raises:
        FileNotFoundError: `path` is not a file.
        ValueError: the file is not a Keras archive (a text file, a half-written file), or
            holds a Keras model that is not a lungkit model.
    """
    require_tensorflow("lungkit.load_model")
    import keras

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"`path` must be an existing .keras file. Received: path={path}")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a Keras model file (a .keras file is a zip archive; "
                         f"this one is not: corrupt, truncated or another format).")
    for module in SERIALIZABLE_MODULES:
        importlib.import_module(module)
    try:
        model = keras.saving.load_model(path, **kwargs)
    except (ValueError, TypeError, KeyError, OSError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path} could not be loaded as a lungkit model: "
                         f"{type(error).__name__}: {error}") from error
    if type(model).__module__ not in SERIALIZABLE_MODULES:
        raise ValueError(f"{path} holds a {type(model).__name__}, not a lungkit model (one of "
                         f"{', '.join(spec.path.split(':')[1] for spec in REGISTERED.values())}).")
    return model
