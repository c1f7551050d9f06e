"""What every evaluation module shares: image checks, resizing, batching, feature extractors.

- `resize_images`: the NHWC [0, 1] float batches every metric takes (checked by
  `lungkit.checks.check_images`) at another size or channel count.
- `FeatureExtractor`: the interface of FID/KID features (`name`, `__call__(images)` ->
  `(N, D)`), implemented by `lungkit.evaluation.features.InceptionFeatures` and
  `lungkit.evaluation.domain_encoder.DomainEncoder`.
- `predict_batches`, `load_or_build`, `default_cache_dir`: running a Keras model in eager
  batches, and caching trained evaluation networks by a hash of their data
  (`lungkit.files.data_hash`).
"""

import logging
import os
from pathlib import Path

import keras
import numpy as np
from tqdm.auto import tqdm

from lungkit.checks import check_images

logger = logging.getLogger(__name__)


def resize_images(images, size, channels):
    """Resizes a float batch `(N, H, W, C)` to `(N, size, size, channels)` (tiles or averages C)."""
    images = np.asarray(images, dtype="float32")
    if images.shape[-1] != channels:
        if channels == 3:
            images = np.repeat(images, 3, axis=-1)  # grayscale tiled, as ImageNet nets expect
        else:
            images = images.mean(axis=-1, keepdims=True)
    if images.shape[1:3] != (size, size):
        images = keras.ops.convert_to_numpy(
            keras.ops.image.resize(images, (size, size), interpolation="bilinear", antialias=True)
        )
    return images.astype("float32")


class FeatureExtractor:
    """Maps float images `(N, H, W, C)` in [0, 1] to features `(N, D)` float32, in batches."""

    name = "features"

    def __init__(self, batch_size=64):
        self.batch_size = batch_size

    def embed_batch(self, images):
        """Features of one validated batch; subclasses implement it."""
        raise NotImplementedError

    def __call__(self, images, progress=False):
        images = check_images(images)
        starts = range(0, len(images), self.batch_size)
        features = [
            np.asarray(self.embed_batch(images[start : start + self.batch_size]), dtype="float32")
            for start in tqdm(starts, desc=self.name, disable=not progress)
        ]
        return np.concatenate(features, axis=0)

    def __repr__(self):
        return f"{type(self).__name__}(name={self.name!r})"


def predict_batches(model, images, batch_size=64):
    """`model(images)` in eager batches, as numpy (no `predict()` retracing per new model)."""
    outputs = [keras.ops.convert_to_numpy(model(images[start : start + batch_size], training=False))
               for start in range(0, len(images), batch_size)]
    return np.concatenate(outputs, axis=0)


def load_or_build(path, build, what="model"):
    """The Keras model saved at `path`, or `build()`'s, saved there for the next call.

    Returns `(model, loaded)`: `loaded` is True when it came from the file.
    """
    path = Path(path)
    if path.is_file():
        logger.info("Loading cached %s %s", what, path)
        return keras.saving.load_model(path), True
    model = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    logger.info("Saved %s to %s", what, path)
    return model, False


def default_cache_dir():
    """`$LUNGKIT_CACHE/features`, default `~/.cache/lungkit/features`."""
    root = os.environ.get("LUNGKIT_CACHE", Path.home() / ".cache" / "lungkit")
    return Path(root).expanduser() / "features"
