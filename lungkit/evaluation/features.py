"""Feature extractors for FID, KID and precision/recall, and the choice between them.

Two extractors share one interface (`lungkit.evaluation.common.FeatureExtractor`: a `name`
and `__call__(images)` returning `(N, D)` features):

- `InceptionFeatures`: InceptionV3 average-pool features (2048-d), the network FID was
  defined with (Heusel et al., 2017). Used only when its ImageNet weights are on disk: an
  explicit path or the Keras cache file. Nothing here ever downloads them.
- `DomainEncoder` (`lungkit.evaluation.domain_encoder`): features learned from real
  training images by an autoencoder that also rates how noisy and blurred its input is;
  used when the InceptionV3 weights are absent.

`get_feature_extractor` picks one and logs why.
"""

import logging
import os
from pathlib import Path

import keras

from lungkit.evaluation.common import FeatureExtractor, resize_images
from lungkit.evaluation.domain_encoder import DomainEncoder

logger = logging.getLogger(__name__)

INCEPTION_SIZE = 299  # InceptionV3's native input size (Szegedy et al., 2016)
INCEPTION_WEIGHTS_FILE = "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"  # Keras name
KINDS = ("auto", "inception", "domain")


def keras_cache_dir():
    """Where `keras.utils.get_file` keeps downloaded weights (`$KERAS_HOME/models`)."""
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")).expanduser() / "models"


def find_inception_weights(weights=None):
    """Returns the local InceptionV3 no-top weights file, or None when there is none.

    Args:
        weights: an explicit `.h5` path; None looks in the Keras cache only.

    Raises:
        FileNotFoundError: when an explicit `weights` path does not exist.
    """
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"`weights` must be an existing file. Received: weights={weights}")
        return path
    path = keras_cache_dir() / INCEPTION_WEIGHTS_FILE
    return path if path.is_file() else None


def build_inception(weights_path):
    """InceptionV3 without top, global average pooling, weights loaded from a local file."""
    return keras.applications.InceptionV3(
        include_top=False, pooling="avg", weights=str(weights_path),
        input_shape=(INCEPTION_SIZE, INCEPTION_SIZE, 3),
    )


class InceptionFeatures(FeatureExtractor):
    """InceptionV3 pool features (2048-d): images resized to 299, grayscale tiled to RGB."""

    name = "inception_v3"

    def __init__(self, weights=None, batch_size=32):
        super().__init__(batch_size)
        path = find_inception_weights(weights)
        if path is None:
            raise FileNotFoundError(
                f"InceptionV3 weights not found: pass `weights=` or place {INCEPTION_WEIGHTS_FILE} "
                f"in {keras_cache_dir()} (lungkit never downloads them)."
            )
        self.weights_path = path
        self.model = build_inception(path)

    def embed_batch(self, images):
        images = resize_images(images, INCEPTION_SIZE, 3)
        images = keras.applications.inception_v3.preprocess_input(images * 255.0)  # to [-1, 1]
        return keras.ops.convert_to_numpy(self.model(images, training=False))


def get_feature_extractor(kind="auto", train_images=None, train_labels=None, cache_dir=None,
                          weights=None, epochs=8, steps=None):
    """Picks the feature extractor for FID/KID and logs which one and why.

    Args:
        kind: "inception" (needs local weights), "domain" (needs `train_images` and
            `train_labels`), or "auto": Inception when its weights are on disk, else domain.
        weights: explicit InceptionV3 no-top `.h5` path; default: the Keras cache file.
        epochs: training epochs of the domain encoder's classifier.
        steps: training steps of the domain encoder's feature autoencoder (None: by data size).

    Returns:
        An `InceptionFeatures` or a `DomainEncoder`.
    """
    if kind not in KINDS:
        raise ValueError(f"`kind` must be one of {KINDS}. Received: kind={kind!r}")
    if kind in ("auto", "inception"):
        path = find_inception_weights(weights)
        if path is not None:
            logger.info("Feature extractor: InceptionV3 with local weights %s", path)
            return InceptionFeatures(weights=path)
        if kind == "inception":
            raise FileNotFoundError(f"`kind='inception'` needs local weights; none in "
                                    f"{keras_cache_dir()} and no `weights=` given.")
        logger.info("Feature extractor: domain encoder (no InceptionV3 weights in %s)",
                    keras_cache_dir())
    if train_images is None or train_labels is None:
        raise ValueError("The domain encoder needs `train_images` and `train_labels`. "
                         f"Received: train_images={type(train_images).__name__}, "
                         f"train_labels={type(train_labels).__name__}")
    return DomainEncoder.fit(train_images, train_labels, cache_dir=cache_dir, epochs=epochs,
                             steps=steps)
