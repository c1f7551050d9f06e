"""The small CT classifier: class-fidelity judge, TSTR classifier, domain encoder's labeller.

`build_classifier` / `train_classifier` make a CNN that finds a lesion anywhere in a slice
(augmented so it does not memorise anatomy or take blur for a class); an ensemble of them
(`train_classifier_ensemble`) averages probabilities; `load_or_train_classifier` caches one
by a hash of its data and settings; `predict_labels` runs any of them.
"""

import logging
from pathlib import Path

import keras
import numpy as np
from tqdm.auto import tqdm

from lungkit.checks import check_images, check_int, check_optional_int
from lungkit.data.labels import NUM_CLASSES, check_labels
from lungkit.evaluation.common import (
    load_or_build,
    predict_batches,
    resize_images,
)
from lungkit.files import data_hash

logger = logging.getLogger(__name__)

CLASSIFIER_FEATURE_DIMS = 64  # size of the classifier's penultimate ("features") layer
CLASSIFIER_VERSION = 3  # in load_or_train_classifier's cache key; 1: no augmentation, 2: no blur
CLASSIFIER_WIDTHS = (16, 32, 64, 128)  # its conv widths: 64 px -> 4x4 before pooling
# Batch norm's moving statistics forget their initial values (variance 1) by 0.9 per step:
# with Keras' default 0.99 a short training keeps enough of them to put a classifier that
# fits its training images at chance in inference mode (docs/results.md).
BN_MOMENTUM = 0.9
# Training-time augmentation: without it the CNN memorises each slice's anatomy instead of
# learning the lesions (docs/results.md, "class-fidelity judge").
AUGMENT_SHIFT = 0.1  # fraction of the side
AUGMENT_ROTATION = 0.05  # fraction of a full turn (18 degrees)
AUGMENT_ZOOM = 0.1  # +-10% scale
# Random Gaussian blur (a random share of the images, sigma up to AUGMENT_BLUR_SIGMA px): the
# classifier judges generated slices, most of them blurrier than real ones; trained on sharp
# slices only it takes blur for a mass (docs/results.md).
AUGMENT_BLUR_SIGMA = 1.5
AUGMENT_BLUR_KERNEL = 5
LOG_PROBABILITY_FLOOR = 1e-12  # an ensemble's logits are log(mean probability), floored here
# Optimizer steps a classifier gets at least: tiny sets (tens of images, one or two batches
# per epoch) otherwise stop at chance after a few epochs.
MIN_TRAIN_STEPS = 100


def build_classifier(image_size, channels, num_classes=NUM_CLASSES, widths=CLASSIFIER_WIDTHS,
                     feature_dims=CLASSIFIER_FEATURE_DIMS, dropout=0.3, augment=True, seed=0,
                     name="ct_classifier"):
    """A small CNN classifier: images `(B, S, S, C)` in [0, 1] -> logits `(B, num_classes)`.

    A lesion is a small blob anywhere in the lungs, so the network is built to find one rather
    than to recognise a whole slice: training-time augmentation (mirror, shift, rotation, zoom;
    identity at inference) keeps it from memorising each slice's anatomy, and a random Gaussian
    blur keeps it from taking blur (what most generated slices have) for a class; each width is a
    stride-1 conv and a stride-2 conv with batch norm (ReLU); global max pooling (is there a
    blob anywhere?) beside average pooling; a ReLU dense layer named "features"
    (`feature_dims`), dropout, and float32 logits.
    """
    if image_size < 2 ** len(widths):
        raise ValueError(f"`image_size` must be >= {2 ** len(widths)} for {len(widths)} "
                         f"downsamplings. Received: image_size={image_size}")
    if channels not in (1, 3):
        raise ValueError(f"`channels` must be 1 or 3. Received: channels={channels}")
    if num_classes < 2:
        raise ValueError(f"`num_classes` must be >= 2. Received: num_classes={num_classes}")
    layers = keras.layers
    inputs = keras.Input((image_size, image_size, channels), name="images")
    x = inputs
    if augment:  # "constant" fills with 0: the black air around the body
        x = layers.RandomFlip("horizontal", seed=seed)(x)
        x = layers.RandomTranslation(AUGMENT_SHIFT, AUGMENT_SHIFT, fill_mode="constant",
                                     seed=seed + 1)(x)
        x = layers.RandomRotation(AUGMENT_ROTATION, fill_mode="constant", seed=seed + 2)(x)
        x = layers.RandomZoom(AUGMENT_ZOOM, fill_mode="constant", seed=seed + 3)(x)
        x = layers.RandomGaussianBlur(factor=(0.0, 1.0), kernel_size=AUGMENT_BLUR_KERNEL,
                                      sigma=(0.1, AUGMENT_BLUR_SIGMA), value_range=(0, 1),
                                      seed=seed + 4)(x)
    x = layers.Rescaling(2.0, offset=-1.0)(x)  # [0, 1] -> [-1, 1]
    for width in widths:
        x = layers.Conv2D(width, 3, padding="same", activation="relu")(x)
        x = layers.Conv2D(width, 3, strides=2, padding="same", use_bias=False)(x)
        x = layers.Activation("relu")(layers.BatchNormalization(momentum=BN_MOMENTUM)(x))
    x = layers.Concatenate()([layers.GlobalMaxPooling2D()(x), layers.GlobalAveragePooling2D()(x)])
    x = layers.Dense(feature_dims, activation="relu", name="features")(x)
    x = layers.Dropout(dropout)(x)
    outputs = layers.Dense(num_classes, dtype="float32", name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def train_classifier(images, labels, image_size=None, channels=None, num_classes=NUM_CLASSES,
                     epochs=10, batch_size=32, learning_rate=1e-3, widths=CLASSIFIER_WIDTHS,
                     min_steps=MIN_TRAIN_STEPS, steps=None, augment=True, seed=0, progress=False):
    """Builds and trains `build_classifier` on `(images, labels)`; returns the Keras model.

    Adam with a cosine-decayed learning rate (to 10% at the end), so the last epochs settle.

    Args:
        images: float `(N, H, W, C)` in [0, 1]; resized to `image_size` (default H).
        labels: ints `(N,)` in [0, num_classes).
        channels: model channels (default C; images are tiled or averaged to match).
        min_steps: the data is repeated within each epoch until `epochs` give at least this
            many optimizer steps.
        steps: total optimizer steps, in place of `epochs` (the data is repeated to fit).
        augment: training-time augmentation (see `build_classifier`); `seed` seeds it.
        progress: a progress bar over the optimizer steps; a str names it (default
            "classifier").
    """
    images = check_images(images)
    labels = check_labels(labels, len(images), num_classes)
    steps = check_optional_int("steps", steps)
    image_size = image_size or images.shape[1]
    channels = channels or images.shape[-1]
    images = resize_images(images, image_size, channels)
    n_images, batches = len(images), -(-len(images) // batch_size)
    if steps is not None:  # whole epochs covering `steps`; min_steps does not apply
        epochs, min_steps = -(-steps // batches), 0
    total = epochs * batches
    if total < min_steps:
        repeats = -(-min_steps // total)
        images, labels = np.tile(images, (repeats, 1, 1, 1)), np.tile(labels, repeats)
        total *= repeats
    model = build_classifier(image_size, channels, num_classes, widths=widths, augment=augment,
                             seed=seed)
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, total, alpha=0.1)
    model.compile(optimizer=keras.optimizers.Adam(schedule),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    desc = progress if isinstance(progress, str) else "classifier"
    callbacks = [_StepProgress(total, desc)] if progress else []
    history = model.fit(images, labels, epochs=epochs, batch_size=batch_size, shuffle=True,
                        verbose=0, callbacks=callbacks)
    logger.info("Trained classifier on %d images (%d px, %d epochs, %d steps): train accuracy "
                "%.3f", n_images, image_size, epochs, total, history.history["accuracy"][-1])
    return model


class _StepProgress(keras.callbacks.Callback):
    """A tqdm bar over training batches, with the running accuracy."""

    def __init__(self, total, desc):
        super().__init__()
        self.total, self.desc, self.bar = total, desc, None

    def on_train_begin(self, logs=None):
        self.bar = tqdm(total=self.total, desc=self.desc, unit="step")

    def on_train_batch_end(self, batch, logs=None):
        self.bar.update(1)

    def on_epoch_end(self, epoch, logs=None):
        if logs and "accuracy" in logs:
            self.bar.set_postfix(accuracy=f"{float(logs['accuracy']):.3f}")

    def on_train_end(self, logs=None):
        self.bar.close()


@keras.saving.register_keras_serializable(package="lungkit")
class LogProbabilities(keras.layers.Layer):
    """`log(p)` of probabilities `p`, floored at `LOG_PROBABILITY_FLOOR` (finite logits)."""

    def call(self, probabilities):
        return keras.ops.log(keras.ops.maximum(probabilities, LOG_PROBABILITY_FLOOR))


def ensemble_classifiers(members, name="ct_classifier_ensemble"):
    """One classifier from several: `log(mean_k softmax(logits_k))`, `(B, num_classes)`.

    Its output is a valid logits vector (softmax of it is the members' mean probability),
    so it is scored, saved and reloaded like a single classifier. Members must share the
    input shape and class count; each keeps its own layers (renamed `<name>_<k>`).
    """
    members = list(members)
    if not members:
        raise ValueError("`members` must hold at least one classifier. Received: []")
    shapes = {tuple(member.input_shape[1:]) for member in members}
    classes = {member.output_shape[-1] for member in members}
    if len(shapes) != 1 or len(classes) != 1:
        raise ValueError(f"`members` must share one input shape and class count. Received "
                         f"input shapes {sorted(shapes)} and class counts {sorted(classes)}")
    inputs = keras.Input(shapes.pop(), name="images")
    probabilities = []
    for index, member in enumerate(members):
        member.name = f"{name}_{index}"
        probabilities.append(keras.layers.Softmax(dtype="float32")(member(inputs)))
    mean = probabilities[0] if len(members) == 1 else keras.layers.Average()(probabilities)
    logits = LogProbabilities(name="logits")(mean)
    return keras.Model(inputs, logits, name=name)


def train_classifier_ensemble(images, labels, members=1, seed=0, progress=False, **options):
    """`members` classifiers from `train_classifier`, seeds `seed, seed + 1, ...`, as one model.

    One classifier's held-out accuracy depends on its seed (docs/results.md): averaging the
    members' probabilities (`ensemble_classifiers`) makes class fidelity depend less on one
    training's luck. Member `k` gets `seed + k` (its
    augmentation); `members=1` returns the plain classifier.
    """
    members = check_int("members", members)
    models = [train_classifier(images, labels, seed=seed + index, **options,
                               progress=progress and f"classifier {index + 1}/{members}")
              for index in range(members)]
    return models[0] if members == 1 else ensemble_classifiers(models)


def load_or_train_classifier(images, labels, cache_dir, **options):
    """`train_classifier_ensemble(images, labels, **options)`, saved once and reloaded after.

    The file is `cache_dir/ct_classifier_<hash>.keras`, the hash covering the images, labels,
    options (all but `progress`) and `CLASSIFIER_VERSION`, so a rerun of the same experiment
    skips the training and scores with the very same model. The model's `name` is the file's
    stem.
    """
    images = check_images(images)
    settings = repr(sorted((k, v) for k, v in options.items() if k != "progress")).encode()
    key = data_hash(images, np.asarray(labels), np.frombuffer(settings, dtype="uint8"),
                    np.asarray([CLASSIFIER_VERSION]))
    path = Path(cache_dir) / f"ct_classifier_{key}.keras"

    def train():
        model = train_classifier_ensemble(images, labels, **options)
        model.name = path.stem
        return model

    return load_or_build(path, train, "classifier")[0]


def predict_labels(model, images, batch_size=64):
    """Argmax class of a classifier's logits for float images, resized to its input size."""
    _, size, _, channels = model.input_shape
    images = resize_images(check_images(images), size, channels)
    return np.argmax(predict_batches(model, images, batch_size), axis=-1)
