"""Feature extractors for FID, KID and precision/recall, and the small CT classifier.

Two extractors share one interface (`FeatureExtractor`: a `name` and `__call__(images)`
returning `(N, D)` features):

- `InceptionFeatures`: InceptionV3 average-pool features (2048-d), the network FID was
  defined with (Heusel et al., 2017). Used only when its ImageNet weights are on disk: an
  explicit path or the Keras cache file. Nothing here ever downloads them.
- `DomainEncoder`: features learned from the real training images themselves, by an
  autoencoder that also rates how noisy and blurred its input is, so that they describe
  the images even where the classes are not separable; standardized once with the training
  images' statistics. Numbers from it are comparable only between runs that use the same
  encoder, which is why the encoder's `name` carries a hash of its data and settings.

`build_classifier` / `train_classifier` are the small CT classifier: the `DomainEncoder`'s
`predict_labels` (class fidelity) and `lungkit.metrics`' "train on synthetic, test on real".
"""

import hashlib
import logging
import os
from pathlib import Path

import keras
import numpy as np
import scipy.ndimage
from tqdm.auto import tqdm

from lungkit.data.images import CLASS_NAMES

logger = logging.getLogger(__name__)

NUM_CLASSES = len(CLASS_NAMES)  # Normal, Benign, Malignant
INCEPTION_SIZE = 299  # InceptionV3's native input size (Szegedy et al., 2016)
INCEPTION_WEIGHTS_FILE = "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"  # Keras name
DOMAIN_WIDTHS = (16, 32, 64)  # conv widths of the domain CNNs: seconds per epoch on CPU at 64 px
DOMAIN_STEM_WIDTH = 16  # the feature autoencoder's full-resolution conv
DOMAIN_FEATURE_DIMS = 2 * (DOMAIN_STEM_WIDTH + sum(DOMAIN_WIDTHS))  # mean and std per channel
CLASSIFIER_FEATURE_DIMS = 64  # size of the classifier's penultimate ("features") layer
DOMAIN_ENCODER_VERSION = 2  # in the cache key; 1 was the classifier-feature encoder
AUTOENCODER_EPOCHS = 40  # passes over the data the feature autoencoder gets by default,
AUTOENCODER_STEPS = (150, 600)  # clipped to these optimizer steps (~30 ms/step at 32 px,
# ~90 ms at 64 px on 2 CPU cores): enough that noise of std 0.05 stands out at 32-64 px
AUTOENCODER_CHUNK_BYTES = 2**28  # largest block of degraded training copies held at once
MAX_NOISE_STD = 0.25  # strongest training noise, in [0, 1] intensity units
MAX_BLUR_FRACTION = 1 / 16  # strongest training blur sigma, as a fraction of the image side
DEGRADE_PROBABILITY = 0.5  # chance of noise, and independently of blur, per training image
STD_FLOOR = 1.0  # feature std floor, in units of the median std (see feature_standardization)
STD_POOL_EPSILON = 1e-6  # inside GlobalStdPooling2D's square root (finite gradient at 0)
MIN_TRAIN_STEPS = 100  # optimizer steps a classifier gets at least: tiny sets (tens of
# images, one or two batches per epoch) otherwise stop at chance after a few epochs
KINDS = ("auto", "inception", "domain")


def check_images(images, name="images"):
    """Validates an NHWC float batch in [0, 1] and returns it as float32 numpy.

    Raises:
        ValueError: naming `name` when the rank, channel count or value range is wrong.
    """
    images = np.asarray(images, dtype="float32")
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"`{name}` must be NHWC with 1 or 3 channels. Received shape {images.shape}")
    if images.shape[0] == 0:
        raise ValueError(f"`{name}` must hold at least one image. Received shape {images.shape}")
    low, high = float(images.min()), float(images.max())
    if low < -1e-3 or high > 1 + 1e-3:
        raise ValueError(f"`{name}` must be float in [0, 1]. Received values in [{low:.3g}, {high:.3g}]")
    return np.clip(images, 0.0, 1.0)


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


def data_hash(*arrays):
    """A short, stable sha1 of arrays' shapes, dtypes and bytes (the cache key of real data)."""
    digest = hashlib.sha1()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.shape}{array.dtype}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:16]


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


# --------------------------------------------------------------------------- Inception
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


# --------------------------------------------------------------------------- domain CNN
def build_classifier(image_size, channels, num_classes=NUM_CLASSES, widths=DOMAIN_WIDTHS,
                     feature_dims=CLASSIFIER_FEATURE_DIMS, dropout=0.2, name="ct_classifier"):
    """A small CNN classifier: images `(B, S, S, C)` in [0, 1] -> logits `(B, num_classes)`.

    Each width is a stride-2 conv and a stride-1 conv (ReLU); then global average pooling, a
    ReLU dense layer named "features" (`feature_dims`), dropout, and float32 logits.
    """
    if image_size < 2 ** len(widths):
        raise ValueError(f"`image_size` must be >= {2 ** len(widths)} for {len(widths)} "
                         f"downsamplings. Received: image_size={image_size}")
    if channels not in (1, 3):
        raise ValueError(f"`channels` must be 1 or 3. Received: channels={channels}")
    if num_classes < 2:
        raise ValueError(f"`num_classes` must be >= 2. Received: num_classes={num_classes}")
    inputs = keras.Input((image_size, image_size, channels), name="images")
    x = keras.layers.Rescaling(2.0, offset=-1.0)(inputs)  # [0, 1] -> [-1, 1]
    for width in widths:
        x = keras.layers.Conv2D(width, 3, strides=2, padding="same", activation="relu")(x)
        x = keras.layers.Conv2D(width, 3, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(feature_dims, activation="relu", name="features")(x)
    x = keras.layers.Dropout(dropout)(x)
    outputs = keras.layers.Dense(num_classes, dtype="float32", name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def _check_labels(labels, n, num_classes, name="labels"):
    labels = np.asarray(labels).astype("int64").reshape(-1)
    if len(labels) != n:
        raise ValueError(f"`{name}` must hold one label per image ({n}). Received {len(labels)}")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"`{name}` must lie in [0, {num_classes - 1}]. "
                         f"Received values in [{labels.min()}, {labels.max()}]")
    return labels


def train_classifier(images, labels, image_size=None, channels=None, num_classes=NUM_CLASSES,
                     epochs=10, batch_size=32, learning_rate=2e-3, widths=DOMAIN_WIDTHS,
                     min_steps=MIN_TRAIN_STEPS):
    """Builds and trains `build_classifier` on `(images, labels)`; returns the Keras model.

    Args:
        images: float `(N, H, W, C)` in [0, 1]; resized to `image_size` (default H).
        labels: ints `(N,)` in [0, num_classes).
        channels: model channels (default C; images are tiled or averaged to match).
        min_steps: the data is repeated within each epoch until `epochs` give at least this
            many optimizer steps.
    """
    images = check_images(images)
    labels = _check_labels(labels, len(images), num_classes)
    image_size = image_size or images.shape[1]
    channels = channels or images.shape[-1]
    images = resize_images(images, image_size, channels)
    n_images, steps = len(images), epochs * -(-len(images) // batch_size)
    if steps < min_steps:
        repeats = -(-min_steps // steps)
        images, labels = np.tile(images, (repeats, 1, 1, 1)), np.tile(labels, repeats)
    model = build_classifier(image_size, channels, num_classes, widths=widths)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    history = model.fit(images, labels, epochs=epochs, batch_size=batch_size, shuffle=True,
                        verbose=0)
    logger.info("Trained classifier on %d images (%d px, %d epochs): train accuracy %.3f",
                n_images, image_size, epochs, history.history["accuracy"][-1])
    return model


def predict_labels(model, images, batch_size=64):
    """Argmax class of a classifier's logits for float images, resized to its input size."""
    _, size, _, channels = model.input_shape
    images = resize_images(check_images(images), size, channels)
    return np.argmax(predict_batches(model, images, batch_size), axis=-1)


def predict_batches(model, images, batch_size=64):
    """`model(images)` in eager batches, as numpy (no `predict()` retracing per new model)."""
    outputs = [keras.ops.convert_to_numpy(model(images[start : start + batch_size], training=False))
               for start in range(0, len(images), batch_size)]
    return np.concatenate(outputs, axis=0)


# --------------------------------------------------------------------------- domain encoder
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
        labels = _check_labels(labels, len(images), num_classes, "train_labels")
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
        if path.is_file():
            logger.info("Loading cached domain encoder %s", path)
            return cls(keras.saving.load_model(path), name=name, path=path, loaded_from_cache=True)
        images = resize_images(images, image_size, channels)
        autoencoder = train_domain_autoencoder(images, steps=steps, batch_size=batch_size,
                                               seed=seed)
        classifier = train_classifier(images, labels, image_size, channels, num_classes,
                                      epochs=epochs, batch_size=batch_size, min_steps=min_steps)
        model = assemble_domain_encoder(autoencoder, classifier, images)
        path.parent.mkdir(parents=True, exist_ok=True)
        model.save(path)
        logger.info("Saved domain encoder to %s", path)
        return cls(model, name=name, path=path)

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


def default_cache_dir():
    """`$LUNGKIT_CACHE/features`, default `~/.cache/lungkit/features`."""
    root = os.environ.get("LUNGKIT_CACHE", Path.home() / ".cache" / "lungkit")
    return Path(root).expanduser() / "features"


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
