"""The feature spaces every FID/KID/precision/recall number is computed in, by name.

`build_extractors` is the one entry point. None of its extractors is trained on the
generators' training split: "random_cnn" and "texture" need no training on lung data at all
(`lungkit.evaluation.random_features`; only their per-dimension scales are fixed from the
encoder split, `StandardizedFeatures`), "domain_encoder" is trained only on the images passed
as `encoder_train_images` (an encoder split no generator sees, chosen by the caller), and
"inception" joins when local InceptionV3 weights exist (its name carries the weights file's
hash, so cached statistics cannot outlive a change of weights).
"""

import hashlib
import logging

import numpy as np

from lungkit.checks import FEATURE_CHOICES, check_images
from lungkit.evaluation.common import FeatureExtractor
from lungkit.evaluation.domain_encoder import DomainEncoder, feature_standardization
from lungkit.evaluation.features import (
    INCEPTION_WEIGHTS_FILE,
    InceptionFeatures,
    find_inception_weights,
    keras_cache_dir,
)
from lungkit.evaluation.random_features import RandomCNNFeatures, TextureFeatures
from lungkit.files import data_hash

logger = logging.getLogger(__name__)


def file_hash(path, length=12):
    """First `length` hex digits of the SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:length]


class StandardizedFeatures(FeatureExtractor):
    """Another extractor's features standardized per dimension by fixed real-image statistics.

    Raw random-CNN or texture features mix units (a GLCM contrast of hundreds beside
    correlations below 1), so KID's kernel `x.y / D` would hear only the largest. The mean and
    (floored) variance come once from `images` (`domain_encoder.feature_standardization`),
    which must be slices no generator trains on; the name carries their hash.
    """

    def __init__(self, base, images):
        super().__init__(base.batch_size)
        self.base = base
        self.mean, variance = feature_standardization(base(images))
        self.scale = np.sqrt(variance)
        self.name = f"{base.name}_z{data_hash(check_images(images))[:8]}"

    def embed_batch(self, images):
        return (self.base.embed_batch(images) - self.mean) / self.scale


def build_extractors(encoder_train_images, encoder_train_labels=None, *, size, channels,
                     seed=0, cache_dir=None, features="auto", progress=False):
    """Builds the named feature extractors, `{name: FeatureExtractor}`.

    Args:
        encoder_train_images: images of the encoder split (no generator trains on them);
            float `(N, H, W, C)` in [0, 1]; they also fix the per-dimension scales of the
            untrained spaces (`StandardizedFeatures`). None or fewer than 2 images:
            untrained spaces left raw, and no domain encoder.
        encoder_train_labels: their class ints; None leaves out "domain_encoder" (it trains
            a classifier head).
        size, channels: the image size and channels the untrained extractors resize to.
        seed: seed of the random CNN (its weights) and of the domain encoder's training.
        cache_dir: where the domain encoder is cached (see `DomainEncoder.fit`).
        features: "auto" keeps every space that exists, "domain" leaves InceptionV3 out,
            "inception" requires its local weights (`FEATURE_CHOICES`).
        progress: logs which extractors were built.

    Returns:
        dict with keys "random_cnn", "texture", and when available "domain_encoder" and
        "inception"; each value has `.name` naming the space in every number.

    Raises:
        FileNotFoundError: `features="inception"` without local InceptionV3 weights.
    """
    if features not in FEATURE_CHOICES:
        raise ValueError(f"`features` must be one of {FEATURE_CHOICES}. Received: "
                         f"features={features!r}")
    extractors = {
        "random_cnn": RandomCNNFeatures(size, channels, seed=seed),
        "texture": TextureFeatures(size),
    }
    if encoder_train_images is None or len(encoder_train_images) < 2:
        encoder_train_images = encoder_train_labels = None  # no split to learn scales from
    if encoder_train_images is not None:  # fixed per-dimension scales from the encoder split
        images = check_images(encoder_train_images, "encoder_train_images")
        extractors = {space: StandardizedFeatures(extractor, images)
                      for space, extractor in extractors.items()}
    if encoder_train_labels is not None:
        extractors["domain_encoder"] = DomainEncoder.fit(images, encoder_train_labels,
                                                         cache_dir=cache_dir, seed=seed)
    weights = None if features == "domain" else find_inception_weights()
    if features == "inception" and weights is None:
        raise FileNotFoundError(f"`features='inception'` needs {INCEPTION_WEIGHTS_FILE} in "
                                f"{keras_cache_dir()} (lungkit never downloads it).")
    if weights is not None:
        inception = InceptionFeatures(weights=weights)
        inception.name = f"inception_v3_{file_hash(weights)}"
        extractors["inception"] = inception
    if progress:
        logger.info("Feature extractors: %s", {k: v.name for k, v in extractors.items()})
    return extractors
