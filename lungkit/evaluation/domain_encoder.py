"""The domain encoder: FID/KID features learned from the real training images themselves.

Owns the feature autoencoder (`build_domain_autoencoder`, trained by
`train_domain_autoencoder` on copies degraded by `degrade_images`), the fixed standardization
of its pooled features (`feature_standardization`, `Arcsinh`), and `DomainEncoder`, the
`lungkit.evaluation.common.FeatureExtractor` that wraps the assembled network with the CT
classifier (`lungkit.evaluation.classifier.train_classifier`) beside it for class fidelity. The autoencoder also rates
how noisy and blurred its input is, so the features describe the images even where the classes
are not separable (quality-aware self-supervision, e.g. CONTRIQUE, Madhusudana et al., 2022).

Numbers from it are comparable only between runs that use the same encoder, which is why the
encoder's `name` carries a hash of its data and settings. `lungkit.evaluation.features`
picks this extractor when no InceptionV3 weights are on disk.
"""

import logging
from pathlib import Path

import keras
import numpy as np
import scipy.ndimage

from lungkit.checks import check_images
from lungkit.data.labels import NUM_CLASSES, check_labels
from lungkit.evaluation.classifier import (
    MIN_TRAIN_STEPS,
    predict_labels,
    train_classifier,
)
from lungkit.evaluation.common import (
    FeatureExtractor,
    default_cache_dir,
    load_or_build,
    predict_batches,
    resize_images,
)
from lungkit.files import data_hash

logger = logging.getLogger(__name__)

DOMAIN_WIDTHS = (16, 32, 64)  # conv widths of the domain CNNs: seconds per epoch on CPU at 64 px

DOMAIN_STEM_WIDTH = 16  # the feature autoencoder's full-resolution conv
DOMAIN_FEATURE_DIMS = 2 * (DOMAIN_STEM_WIDTH + sum(DOMAIN_WIDTHS))  # mean and std per channel
DOMAIN_ENCODER_VERSION = 4  # in the cache key; 1: classifier features, 2: unaugmented classifier,
# 3: classifier without blur augmentation
AUTOENCODER_EPOCHS = 40  # passes over the data the feature autoencoder gets by default,
AUTOENCODER_STEPS = (150, 600)  # clipped to these optimizer steps (~30 ms/step at 32 px,
# ~90 ms at 64 px on 2 CPU cores): enough that noise of std 0.05 stands out at 32-64 px
AUTOENCODER_CHUNK_BYTES = 2**28  # largest block of degraded training copies held at once
MAX_NOISE_STD = 0.25  # strongest training noise, in [0, 1] intensity units
MAX_BLUR_FRACTION = 1 / 16  # strongest training blur sigma, as a fraction of the image side
DEGRADE_PROBABILITY = 0.5  # chance of noise, and independently of blur, per training image
STD_FLOOR = 1.0  # feature std floor, in units of the median std (see feature_standardization)
STD_POOL_EPSILON = 1e-6  # inside GlobalStdPooling2D's square root (finite gradient at 0)


@keras.saving.register_keras_serializable(package="lungkit")
class GlobalStdPooling2D(keras.layers.Layer):
    """Spatial standard deviation per channel: `(B, H, W, C)` -> `(B, C)`.

    With global average pooling it gives each channel's first two moments, the texture
    statistics that noise raises and blur lowers.
    """

    def call(self, inputs):
        return keras.ops.sqrt(keras.ops.var(inputs, axis=(1, 2)) + STD_POOL_EPSILON)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])


@keras.saving.register_keras_serializable(package="lungkit")
class Arcsinh(keras.layers.Layer):
    """Elementwise `asinh`: linear near 0, logarithmic beyond (`asinh(z) ~ log(2z)`).

    Applied to standardized features it leaves real images' values (|z| of a few) nearly as
    they are but turns the hundreds of standard deviations that noise or blur can push a
    unit into single digits, so that one wild sample cannot dominate KID's cubic kernel.
    """

    def call(self, inputs):
        return keras.ops.arcsinh(inputs)


def build_domain_autoencoder(image_size, channels, widths=DOMAIN_WIDTHS,
                             stem_width=DOMAIN_STEM_WIDTH, name="domain_autoencoder"):
    """The domain encoder's training network: a convolutional autoencoder with a quality head.

    Encoder: a stride-1 stem conv, then per width a stride-2 and a stride-1 conv (ReLU). The
    mean and standard deviation over space of each of these scales' activations, concatenated,
    form the layer "pooled" (`DOMAIN_FEATURE_DIMS` = 2 * (stem_width + sum(widths))), the
    feature space. Heads: "reconstruction" `(B, S, S, C)` (decoder from the coarsest map,
    upsampled back, linear, [0, 1] targets) and "degradation" `(B, 2)` (linear on "pooled":
    the noise and blur levels in [0, 1] of the degraded input, see `degrade_images`).
    """
    if image_size < 2 ** len(widths) or image_size % 2 ** len(widths):
        raise ValueError(f"`image_size` must be a multiple of {2 ** len(widths)} for "
                         f"{len(widths)} downsamplings. Received: image_size={image_size}")
    if channels not in (1, 3):
        raise ValueError(f"`channels` must be 1 or 3. Received: channels={channels}")
    inputs = keras.Input((image_size, image_size, channels), name="images")
    x = keras.layers.Rescaling(2.0, offset=-1.0)(inputs)  # [0, 1] -> [-1, 1]
    x = keras.layers.Conv2D(stem_width, 3, padding="same", activation="relu")(x)
    scales = [x]
    for width in widths:
        x = keras.layers.Conv2D(width, 3, strides=2, padding="same", activation="relu")(x)
        x = keras.layers.Conv2D(width, 3, padding="same", activation="relu")(x)
        scales.append(x)
    pooled = keras.layers.Concatenate(name="pooled")(
        [pool()(scale) for scale in scales
         for pool in (keras.layers.GlobalAveragePooling2D, GlobalStdPooling2D)])
    degradation = keras.layers.Dense(2, dtype="float32", name="degradation")(pooled)
    for width in (*reversed(widths[:-1]), stem_width):
        x = keras.layers.UpSampling2D(2)(x)
        x = keras.layers.Conv2D(width, 3, padding="same", activation="relu")(x)
    reconstruction = keras.layers.Conv2D(channels, 3, padding="same", dtype="float32",
                                         name="reconstruction")(x)
    return keras.Model(inputs, {"reconstruction": reconstruction, "degradation": degradation},
                       name=name)


def degrade_images(images, rng, max_noise=MAX_NOISE_STD, max_blur=None,
                   probability=DEGRADE_PROBABILITY):
    """Random Gaussian blur and additive Gaussian noise, each applied with `probability`.

    Args:
        images: float `(N, H, W, C)` in [0, 1].
        rng: a `numpy.random.Generator`.
        max_noise: largest noise std (levels uniform in [0, max_noise]).
        max_blur: largest blur sigma in pixels; default `image side * MAX_BLUR_FRACTION`.

    Returns:
        `(degraded, levels)`: float32 `(N, H, W, C)` in [0, 1] and float32 `(N, 2)`, the noise
        and blur levels as fractions of their maxima (0 = untouched).
    """
    images = np.asarray(images, dtype="float32")
    n = len(images)
    max_blur = images.shape[1] * MAX_BLUR_FRACTION if max_blur is None else max_blur
    noise = np.where(rng.uniform(size=n) < probability, rng.uniform(0, max_noise, n), 0.0)
    blur = np.where(rng.uniform(size=n) < probability, rng.uniform(0, max_blur, n), 0.0)
    degraded = images.copy()
    for index in np.flatnonzero(blur):
        degraded[index] = scipy.ndimage.gaussian_filter(
            images[index], (blur[index], blur[index], 0), mode="nearest")
    degraded += (rng.normal(size=images.shape) * noise[:, None, None, None]).astype("float32")
    levels = np.stack([noise / max_noise, blur / max_blur], axis=1)
    return np.clip(degraded, 0.0, 1.0), levels.astype("float32")


def train_domain_autoencoder(images, steps=None, batch_size=32, learning_rate=2e-3,
                             seed=0, widths=DOMAIN_WIDTHS):
    """Trains `build_domain_autoencoder` on `images` (float `(N, S, S, C)` in [0, 1]).

    Each step sees a batch degraded by `degrade_images` (fresh draws each pass over the data)
    and learns to reconstruct the clean images and to regress the degradation levels. The
    first objective makes the pooled features describe the anatomy; the second makes them
    register noise and blur, the low-level ways generated images differ from real ones (the
    idea of quality-aware self-supervision, e.g. CONTRIQUE, Madhusudana et al., 2022).

    Args:
        steps: optimizer steps; None: `AUTOENCODER_EPOCHS` passes over the data, clipped to
            `AUTOENCODER_STEPS`.

    Returns:
        The trained Keras model (its layer "pooled" gives the raw features).
    """
    if steps is None:
        steps = int(np.clip(AUTOENCODER_EPOCHS * -(-len(images) // batch_size), *AUTOENCODER_STEPS))
    rng = np.random.default_rng(seed)
    model = build_domain_autoencoder(images.shape[1], images.shape[-1], widths=widths)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss={"reconstruction": "mse", "degradation": "mse"})
    total = steps * batch_size
    chunk = max(batch_size, min(total, AUTOENCODER_CHUNK_BYTES // images[0].nbytes))
    losses = {}
    while total > 0:  # chunks of freshly degraded copies, bounded in memory
        clean = images[rng.integers(0, len(images), min(chunk, total))]
        degraded, levels = degrade_images(clean, rng)
        history = model.fit(degraded, {"reconstruction": clean, "degradation": levels},
                            batch_size=batch_size, epochs=1, shuffle=False, verbose=0)
        losses = {key: values[-1] for key, values in history.history.items()}
        total -= len(clean)
    logger.info("Trained domain autoencoder on %d images (%d px, %d steps): %s", len(images),
                images.shape[1], steps,
                ", ".join(f"{k} {v:.4f}" for k, v in sorted(losses.items())))
    return model


def feature_standardization(features, floor=STD_FLOOR):
    """Per-dimension mean and variance that standardize `features` `(N, D)` of real images.

    The variance gets `(floor * median std)^2` added, so that dimensions nearly constant on
    real images (units that only fire on noise or blur) are not blown up without bound.

    Returns:
        `(mean, variance)`, float32 `(D,)` each.
    """
    features = np.asarray(features, dtype="float64")
    std = features.std(axis=0)
    variance = std**2 + (floor * max(float(np.median(std)), 1e-6)) ** 2
    return features.mean(axis=0).astype("float32"), variance.astype("float32")


def assemble_domain_encoder(autoencoder, classifier, images, batch_size=64):
    """One model `images -> {"features", "logits"}` from the trained networks.

    "features" is the autoencoder's "pooled" layer, standardized by a fixed `Normalization`
    layer ("standardized") whose mean and variance come from `images`, the real training
    images, once (`feature_standardization`), then compressed by `Arcsinh` ("features").
    "logits" is `classifier`'s output.
    """
    pooled = keras.Model(autoencoder.input, autoencoder.get_layer("pooled").output,
                         name="domain_features")
    mean, variance = feature_standardization(predict_batches(pooled, images, batch_size))
    inputs = keras.Input(autoencoder.input_shape[1:], name="images")
    standardized = keras.layers.Normalization(mean=mean, variance=variance,
                                              name="standardized")(pooled(inputs))
    features = Arcsinh(name="features")(standardized)
    logits = classifier(inputs)
    return keras.Model(inputs, {"features": features, "logits": logits}, name="domain_encoder")


class DomainEncoder(FeatureExtractor):
    """Image features learned from the real training images, and a CT classifier beside them.

    The features are the pooled activations (mean and std per channel at four scales,
    `DOMAIN_FEATURE_DIMS`) of an autoencoder trained to reconstruct degraded training images
    and to tell how noisy and blurred they are (`train_domain_autoencoder`), so they describe
    images whether or not the classes are separable. They are standardized per dimension
    with statistics of the training images fixed at training time and stored in the model
    (`feature_standardization`), then passed through `Arcsinh`: on the training images they
    are centred near 0 with std below 1; noise and blur move them by up to ~10.
    `predict_labels` uses a separate classifier (`build_classifier`) for class fidelity.

    Build it with `DomainEncoder.fit(...)` (trains, or reloads the cached `.keras` file for
    the same data and settings) or `DomainEncoder.load(path)`.
    """

    def __init__(self, model, name="domain_encoder", path=None, loaded_from_cache=False,
                 batch_size=64):
        super().__init__(batch_size)
        self.model = model
        self.feature_model = keras.Model(model.input, model.get_layer("features").output)
        self.classifier = model.get_layer("ct_classifier")
        _, self.image_size, _, self.channels = model.input_shape
        self.name, self.path, self.loaded_from_cache = name, path, loaded_from_cache

    @classmethod
    def fit(cls, images, labels, cache_dir=None, epochs=8, image_size=None, channels=None,
            num_classes=NUM_CLASSES, batch_size=32, min_steps=MIN_TRAIN_STEPS,
            steps=None, seed=0):
        """Trains the encoder, or reloads it when the same data and settings were cached.

        Args:
            images: real training images, float `(N, H, W, C)` in [0, 1].
            labels: ints `(N,)` in [0, num_classes).
            image_size: the encoder's input size (default H), rounded up to a multiple of
                8; every image is resized to it.
            cache_dir: folder for `domain_encoder_<hash>.keras`; default
                `$LUNGKIT_CACHE/features` or `~/.cache/lungkit/features`.
            epochs, min_steps: the classifier's training, as in `train_classifier`.
            steps: optimizer steps of the feature autoencoder; None: as many as
                `train_domain_autoencoder` picks for the data size.
            seed: seed of the autoencoder's degradations.
        """
        images = check_images(images, "train_images")
        labels = check_labels(labels, len(images), num_classes, "train_labels")
        factor = 2 ** len(DOMAIN_WIDTHS)  # the autoencoder's downsampling: sizes its multiples
        requested = image_size or images.shape[1]
        image_size = -(-requested // factor) * factor
        if image_size != requested:
            logger.info("Domain encoder input: %d px (%d rounded up to a multiple of %d)",
                        image_size, requested, factor)
        channels = channels or images.shape[-1]
        settings = np.asarray([DOMAIN_ENCODER_VERSION, image_size, channels, num_classes, epochs,
                               batch_size, min_steps, -1 if steps is None else steps, seed,
                               *DOMAIN_WIDTHS])
        key = data_hash(images, labels, settings)
        name = f"domain_encoder_{key}"
        path = Path(cache_dir or default_cache_dir()) / f"{name}.keras"

        def train():
            resized = resize_images(images, image_size, channels)
            autoencoder = train_domain_autoencoder(resized, steps=steps, batch_size=batch_size,
                                                   seed=seed)
            classifier = train_classifier(resized, labels, image_size, channels, num_classes,
                                          epochs=epochs, batch_size=batch_size,
                                          min_steps=min_steps)
            return assemble_domain_encoder(autoencoder, classifier, resized)

        model, loaded = load_or_build(path, train, "domain encoder")
        return cls(model, name=name, path=path, loaded_from_cache=loaded)

    @classmethod
    def load(cls, path):
        """Reloads an encoder saved by `fit` (its name is the file's stem)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"`path` must be an existing .keras file. Received: path={path}")
        return cls(keras.saving.load_model(path), name=path.stem, path=path, loaded_from_cache=True)

    def embed_batch(self, images):
        images = resize_images(images, self.image_size, self.channels)
        return keras.ops.convert_to_numpy(self.feature_model(images, training=False))

    def predict_labels(self, images):
        """Predicted class per image, ints `(N,)`."""
        return predict_labels(self.classifier, images, self.batch_size)
