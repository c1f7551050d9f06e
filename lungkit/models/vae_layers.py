"""The VAE's building blocks: encoder and decoder networks, the sampling layer, the loss terms.

The networks follow the Keras example VAE that Chen (2024) trains: 3x3 convolutions with
stride 2 and ReLU, a dense layer to the latent mean and log-variance, and the mirror image with
transposed convolutions and a sigmoid output. `kl_divergence`, `reconstruction_loss` and
`Sampling` (the reparameterisation trick, Kingma & Welling, 2014) are shared with
`lungkit.models.autoencoder`. `lungkit.models.vae` assembles them into the `VAE` model and
re-exports the public names here; the notation table is in its docstring.
"""

import keras
import numpy as np
from keras import ops

from lungkit.models.base import ReplicaSeeds

DEFAULT_WIDTHS = (32, 64, 128, 256)  # filters per stride-2 convolution, as the Keras example grows
DEFAULT_DENSE_UNITS = 256  # hidden dense layer before z_mean / z_log_var
RECONSTRUCTIONS = ("bce", "mse")
# How the decoder doubles its resolution:
#   "transpose": the paper's 3x3 transposed convolution, stride 2 (the Keras example VAE). Its
#                kernel overlaps unevenly (3 is not divisible by the stride), which draws a
#                checkerboard into the images (Odena et al., 2016, "Deconvolution and
#                checkerboard artifacts").
#   "resize":    nearest-neighbour upsampling, then a 3x3 convolution (their remedy).
DECODERS = ("transpose", "resize")
LABEL_EMBEDDING_DIMS = 16  # width of the learned class embedding of a conditional VAE


def kl_divergence(z_mean, z_log_var):
    """KL(q(z | x) || N(0, I)) for a diagonal Gaussian q, summed over latent dimensions.

    `KL = -0.5 * sum(1 + log sigma^2 - mu^2 - sigma^2)` (Kingma & Welling, 2014, appendix B).

    Args:
        z_mean: float `(batch, latent_dim)`.
        z_log_var: float `(batch, latent_dim)`, the log-variance.

    Returns:
        float32 `(batch,)`, non-negative.
    """
    z_mean = ops.cast(z_mean, "float32")
    z_log_var = ops.cast(z_log_var, "float32")
    terms = 1.0 + z_log_var - ops.square(z_mean) - ops.exp(z_log_var)
    return -0.5 * ops.sum(terms, axis=-1)


def reconstruction_loss(images, reconstructions, kind="bce"):
    """Per-image reconstruction loss summed over every pixel and channel.

    Args:
        images: float `(batch, H, W, C)` targets in [0, 1].
        reconstructions: float `(batch, H, W, C)` decoder outputs in [0, 1].
        kind: `"bce"` (binary cross-entropy, the paper's loss) or `"mse"` (squared error).

    Returns:
        float32 `(batch,)`.
    """
    if kind not in RECONSTRUCTIONS:
        raise ValueError(f"`kind` must be one of {RECONSTRUCTIONS}. Received: kind={kind!r}")
    images = ops.cast(images, "float32")
    reconstructions = ops.cast(reconstructions, "float32")
    if kind == "bce":
        # Clipped like keras.losses.binary_crossentropy so a saturated sigmoid gives no log(0).
        eps = keras.config.epsilon()
        probs = ops.clip(reconstructions, eps, 1.0 - eps)
        per_pixel = -(images * ops.log(probs) + (1.0 - images) * ops.log(1.0 - probs))
    else:
        per_pixel = ops.square(images - reconstructions)
    return ops.sum(per_pixel, axis=(1, 2, 3))


@keras.saving.register_keras_serializable(package="lungkit")
class Sampling(keras.layers.Layer):
    """Reparameterisation trick: `z = z_mean + exp(0.5 * z_log_var) * epsilon`.

    Call on `[z_mean, z_log_var]`, each `(batch, latent_dim)`; returns float32
    `(batch, latent_dim)`. Its noise comes from its own `SeedGenerator`.
    """

    def __init__(self, seed=None, **kwargs):
        kwargs.setdefault("dtype", "float32")  # stays float32 under mixed precision
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs):
        z_mean, z_log_var = inputs
        epsilon = keras.random.normal(ops.shape(z_mean), dtype=z_mean.dtype,
                                      seed=ReplicaSeeds(self.seed_generator))
        return z_mean + ops.exp(0.5 * z_log_var) * epsilon

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


def build_encoder(image_size, channels, latent_dim, widths=DEFAULT_WIDTHS,
                  dense_units=DEFAULT_DENSE_UNITS, name="encoder"):
    """Strided-convolution encoder: images -> `(z_mean, z_log_var)`.

    Each width adds a 3x3 convolution with stride 2 and ReLU, as the Keras example VAE the
    paper trains; then flatten, a ReLU dense layer and two linear float32 heads. It never
    sees a label: a conditional VAE puts its class into the prior and the decoder instead
    (see `lungkit.models.vae`).

    Args:
        image_size: side of the square input, divisible by `2 ** len(widths)`.
        channels: 1 or 3.
        latent_dim: size of z.
        widths: filters per downsampling convolution.
        dense_units: size of the hidden dense layer (0 skips it).

    Returns:
        `keras.Model` mapping float32 `(batch, image_size, image_size, channels)` in [0, 1]
        to two float32 `(batch, latent_dim)` tensors.
    """
    images = keras.Input((image_size, image_size, channels), name="images")
    x = images
    for i, width in enumerate(widths):
        x = keras.layers.Conv2D(width, 3, strides=2, padding="same", activation="relu",
                                name=f"down_{i}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    if dense_units:
        x = keras.layers.Dense(dense_units, activation="relu", name="dense")(x)
    z_mean = keras.layers.Dense(latent_dim, dtype="float32", name="z_mean")(x)
    z_log_var = keras.layers.Dense(latent_dim, dtype="float32", name="z_log_var")(x)
    return keras.Model(images, [z_mean, z_log_var], name=name)


def build_decoder(image_size, channels, latent_dim, widths=DEFAULT_WIDTHS, num_classes=None,
                  upsampling="transpose", name="decoder"):
    """Mirror of `build_encoder`: z (and labels) -> images.

    Dense to a `(image_size / 2**depth)`-sided feature map of `widths[-1]` channels, one
    upsampling step with ReLU per width (in reverse; `upsampling` in `DECODERS`: the paper's
    3x3 transposed convolution with stride 2, or nearest resize + 3x3 convolution), then a
    3x3 convolution with a float32 sigmoid. With `num_classes`, a class embedding is
    concatenated to z.

    Returns:
        `keras.Model` mapping float32 `(batch, latent_dim)` (and, with `num_classes`, int32
        labels `(batch,)` in [0, num_classes]) to float32
        `(batch, image_size, image_size, channels)` in [0, 1].
    """
    side = image_size // 2 ** len(widths)
    z = keras.Input((latent_dim,), name="z")
    x, inputs = z, z
    if num_classes is not None:
        # num_classes + 1 rows: the last is "no label", which label dropout trains.
        labels = keras.Input((), dtype="int32", name="labels")
        embedding = keras.layers.Embedding(num_classes + 1, LABEL_EMBEDDING_DIMS,
                                           name="class_embedding")(labels)
        x = keras.layers.Concatenate(name="with_label")([z, embedding])
        inputs = [z, labels]
    x = keras.layers.Dense(side * side * widths[-1], activation="relu", name="dense")(x)
    x = keras.layers.Reshape((side, side, widths[-1]), name="reshape")(x)
    for i, width in enumerate(reversed(widths)):
        if upsampling == "transpose":
            x = keras.layers.Conv2DTranspose(width, 3, strides=2, padding="same",
                                             activation="relu", name=f"up_{i}")(x)
        else:
            x = keras.layers.UpSampling2D(2, interpolation="nearest", name=f"resize_{i}")(x)
            x = keras.layers.Conv2D(width, 3, padding="same", activation="relu",
                                    name=f"up_{i}")(x)
    images = keras.layers.Conv2D(channels, 3, padding="same", activation="sigmoid",
                                 dtype="float32", name="images")(x)
    return keras.Model(inputs, images, name=name)


def fit_class_gaussians(z_mean, labels, num_classes, jitter):
    """Per-class Gaussians of encodings, for a conditional VAE's ex-post prior.

    Args:
        z_mean: float `(n, latent_dim)` encodings; labels: int `(n,)` in [0, num_classes).
        jitter: added to each covariance's diagonal (keeps it positive definite when a class
            has fewer images than latent dimensions).

    Returns:
        `(locs, scales, counts)`: float32 `(num_classes + 1, latent_dim)` means and
        `(num_classes + 1, latent_dim, latent_dim)` Cholesky factors (the last row, "no
        label", fitted to every encoding), and `{class: count}`.

    Raises:
        ValueError: a class has fewer than 2 encodings.
    """
    counts = {c: int(np.sum(labels == c)) for c in range(num_classes)}
    if min(counts.values()) < 2:
        raise ValueError(f"`fit_class_prior` needs at least 2 images of every class. "
                         f"Received counts per class: {counts}")
    z_mean, dim = np.asarray(z_mean, "float64"), z_mean.shape[1]
    locs, scales = [], []
    for rows in [labels == c for c in range(num_classes)] + [slice(None)]:
        cov = np.cov(z_mean[rows], rowvar=False).reshape(dim, dim)
        locs.append(z_mean[rows].mean(axis=0))
        scales.append(np.linalg.cholesky(cov + jitter * np.eye(dim)))
    return np.asarray(locs, "float32"), np.asarray(scales, "float32"), counts


def sample_class_gaussians(epsilon, labels, locs, scales):
    """`z = m_y + L_y epsilon` for each row's label `y` (float `(n, latent_dim)`, numpy)."""
    z = np.array(epsilon, dtype="float32")
    for label in np.unique(labels):  # one class at a time: no (n, dim, dim) gather
        rows = labels == label
        z[rows] = locs[label] + z[rows] @ scales[label].T
    return z
