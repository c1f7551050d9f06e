"""The paper's variational autoencoder (Kingma & Welling, 2014) for CT slices.

Chen (2024) trains the Keras example VAE: 3x3 convolutions with stride 2 and ReLU, a dense
layer to the latent mean and log-variance, and the mirror image with transposed convolutions
and a sigmoid output. The loss is binary cross-entropy summed over every pixel and channel of
an image (about 37,000 at 128x128x3, the paper's Figure 4) plus the KL divergence to N(0, I).
This module owns the `VAE` model (argument checks, conditioning, training losses, encode /
decode / generate); its networks, `Sampling` layer and loss terms live in
`lungkit.models.vae_layers`.

Notation:

    code name            paper / Kingma & Welling
    z_mean, z_log_var    mu, log sigma^2 of q(z | x)
    epsilon              epsilon ~ N(0, I), the reparameterisation noise
    beta                 KL weight (beta-VAE, Higgins et al., 2017); 1.0 = the plain ELBO
    labels               y, the class of a conditional VAE: prior p(z | y) = N(mu_y, I),
                         decoder p(x | z, y), encoder q(z | x); index `num_classes` =
                         "no label"
    prior_means          mu_y, one learned row per class (and "no label"), zeros at first
    class_prior_*        the ex-post prior N(m_y, L_y L_y^T) that `fit_class_prior` fits to
                         the encodings z_mean of each class (Ghosh et al., 2020)

A conditional VAE (Sohn et al., 2015) maximises the ELBO of log p(x | y),
`E_q[log p(x | z, y)] - KL(q(z | x) || p(z | y))`. Its encoder sees only the image and the
class moves the prior, so prior samples for a class land where that class's images encode
(the textbook q(z | x, y) with an N(0, I) prior drew one lesion-free average body for every
label: docs/results.md).

After training, `fit_class_prior` replaces N(mu_y, I) by a full-covariance Gaussian fitted to
each class's encodings (an ex-post density, Ghosh et al., 2020, "From variational to
deterministic autoencoders"): the aggregate posterior of a class is not a unit Gaussian, and
N(mu_y, I) samples fall where few of its images encode. The fit uses the encodings' means
only (adding the posterior variances did worse; docs/results.md).
"""

import logging

import keras
import numpy as np
from keras import ops

from lungkit.checks import (
    check_channels,
    check_choice,
    check_int,
    check_int_tuple,
    check_number,
    check_optional_int,
    check_seed,
)
from lungkit.data.labels import resolve_labels
from lungkit.models.base import GenerativeModel, ReplicaSeeds
from lungkit.models.vae_layers import (
    DECODERS,
    DEFAULT_DENSE_UNITS,
    DEFAULT_WIDTHS,
    RECONSTRUCTIONS,
    Sampling,
    build_decoder,
    build_encoder,
    fit_class_gaussians,
    kl_divergence,
    reconstruction_loss,
    sample_class_gaussians,
)

logger = logging.getLogger(__name__)

MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 32, 256  # smallest and largest side the networks are built for
PRIOR_JITTER = 1e-3  # added to the fitted class covariances' diagonal


@keras.saving.register_keras_serializable(package="lungkit")
class VAE(GenerativeModel):
    """VAE for CT slices `(batch, H, W, C)` float32 in [0, 1]; latents `(batch, latent_dim)`.

    Args:
        image_size: side of the square images, 32 to 256, divisible by `2 ** len(widths)`.
        channels: 1 (grayscale) or 3 (RGB, the paper).
        latent_dim: size of z.
        widths: filters per stride-2 convolution of the encoder (mirrored in the decoder).
        dense_units: hidden dense layer of the encoder (0: none).
        reconstruction: `"bce"` (the paper) or `"mse"`, both summed over pixels per image.
        decoder: how the decoder upsamples, a name in `DECODERS`: `"transpose"` (the paper's
            transposed convolutions, which draw a checkerboard) or `"resize"` (nearest resize
            + convolution, free of it).
        beta: weight of the KL term (1.0: the ELBO).
        num_classes: None (the paper's unconditional VAE) or the number of classes of a
            conditional VAE: the decoder then takes int labels `(batch,)`, the prior of z
            is N(prior_means[label], I), and training batches are `(images, labels)`.
        class_dropout: probability, in training, of replacing a label by "no label" (index
            `num_classes`), so the same model also generates without a label.
        seed: seeds the reparameterisation noise, label dropout and `generate(seed=None)`.

    Classifier-free guidance (`guidance=`) belongs to the diffusion models; a conditional
    VAE decodes the requested label directly (`generate(n, label="malignant")`).
    """

    loss_names = ("loss", "reconstruction_loss", "kl_loss")

    def __init__(self, image_size=128, channels=3, latent_dim=128, widths=DEFAULT_WIDTHS,
                 dense_units=DEFAULT_DENSE_UNITS, reconstruction="bce", decoder="transpose",
                 beta=1.0,
                 num_classes=None, class_dropout=0.1, seed=None, **kwargs):
        widths = check_int_tuple("widths", widths)
        image_size = check_int("image_size", image_size, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)
        factor = 2 ** len(widths)
        if image_size % factor:
            raise ValueError(f"`image_size` must be divisible by {factor} (2 ** len(widths) for "
                             f"{len(widths)} downsamplings). Received: image_size={image_size}")
        channels = check_channels(channels)
        latent_dim = check_int("latent_dim", latent_dim)
        dense_units = check_int("dense_units", dense_units, low=0)
        check_choice("reconstruction", reconstruction, RECONSTRUCTIONS)
        check_choice("decoder", decoder, DECODERS)
        beta = check_number("beta", beta, low=0.0)
        num_classes = check_optional_int("num_classes", num_classes)
        class_dropout = check_number("class_dropout", class_dropout, 0.0, 1.0, high_open=True)
        seed = check_seed("seed", seed)
        super().__init__(**kwargs)
        self.image_size, self.channels, self.latent_dim = int(image_size), channels, int(latent_dim)
        self.widths, self.dense_units = tuple(int(w) for w in widths), int(dense_units)
        self.reconstruction, self.beta = reconstruction, float(beta)
        self.decoder_kind = decoder
        self.num_classes = None if num_classes is None else int(num_classes)
        self.class_dropout, self.seed = float(class_dropout), seed
        self.encoder = build_encoder(self.image_size, channels, self.latent_dim, self.widths,
                                     self.dense_units)
        self.decoder = build_decoder(self.image_size, channels, self.latent_dim, self.widths,
                                     self.num_classes, upsampling=decoder)
        self.sampler = Sampling(seed=seed, name="sampler")
        if self.num_classes is not None:  # only conditional models carry this state
            self.label_seeds = keras.random.SeedGenerator(
                None if seed is None else seed + 2, name="label_seeds")
            # mu_y of the prior N(mu_y, I); zeros: training starts from the paper's N(0, I).
            self.prior_means = keras.layers.Embedding(
                self.num_classes + 1, self.latent_dim, embeddings_initializer="zeros",
                dtype="float32", name="prior_means")
            self.prior_means.build((None,))
            # The ex-post prior of `fit_class_prior`: loc m_y and Cholesky factor L_y per row
            # (one per class and "no label"); `class_prior_fitted` is 1 once fitted. Weights,
            # so that a saved model keeps them.
            rows, dim = self.num_classes + 1, self.latent_dim
            self.class_prior_loc = self.add_weight(
                shape=(rows, dim), initializer="zeros", trainable=False, name="class_prior_loc")
            self.class_prior_scale = self.add_weight(
                shape=(rows, dim, dim), trainable=False, name="class_prior_scale",
                initializer=keras.initializers.Constant(np.tile(np.eye(dim), (rows, 1, 1))))
            self.class_prior_fitted = self.add_weight(
                shape=(), initializer="zeros", trainable=False, name="class_prior_fitted")
        # Separate stream for generate(seed=None), so sampling does not shift training noise.
        self.generation_seeds = keras.random.SeedGenerator(
            None if seed is None else seed + 1, name="generation_seeds")
        # Every weight exists now (functional encoder/decoder), so the model counts as built:
        # load_model then restores the optimizer state too.
        self.built = True
        logger.debug("VAE %dx%dx%d, latent %d: encoder %d, decoder %d parameters",
                     image_size, image_size, channels, latent_dim,
                     self.encoder.count_params(), self.decoder.count_params())

    @property
    def image_shape(self):
        """`(image_size, image_size, channels)`."""
        return (self.image_size, self.image_size, self.channels)

    def _as_images(self, images):
        """Public-boundary conversion: numpy float32 `(batch, *image_shape)` in [0, 1]."""
        images = np.asarray(images)
        if images.ndim == 3 and self.channels == 1 and images.shape[1:] == self.image_shape[:2]:
            images = images[..., None]  # (batch, H, W) grayscale
        self.check_images(images)
        if images.dtype == np.uint8:
            return images.astype("float32") / 255.0
        return images.astype("float32", copy=False)

    def call(self, inputs, training=False):
        """Reconstructs images: samples z while training, uses `z_mean` otherwise.

        Args:
            inputs: images `(batch, H, W, C)` in [0, 1], or `(images, labels)` with int
                labels `(batch,)` for a conditional VAE (images alone: "no label").
        """
        images, labels = inputs if isinstance(inputs, (tuple, list)) else (inputs, None)
        self.check_images(images)
        labels = self._conditioning(labels, ops.shape(images)[0], training)
        z_mean, z_log_var = self._encode(images, training)
        z = self.sampler([z_mean, z_log_var]) if training else z_mean
        return self._decode(z, labels, training)

    def _conditioning(self, labels, batch, training):
        """int32 labels `(batch,)` for a conditional VAE (None for the paper's VAE).

        Missing labels become "no label" (index `num_classes`); in training a share
        `class_dropout` of the labels is replaced by "no label" too.
        """
        if self.num_classes is None:
            return None  # labelled batches train the unconditional VAE as plain images
        null = ops.full((batch,), self.num_classes, dtype="int32")
        if labels is None:
            return null
        labels = ops.cast(ops.reshape(labels, (-1,)), "int32")
        if training and self.class_dropout > 0:
            dropped = keras.random.uniform((batch,), seed=ReplicaSeeds(self.label_seeds)) \
                < self.class_dropout
            labels = ops.where(dropped, null, labels)
        return labels

    def _encode(self, images, training=False):
        return self.encoder(images, training=training)

    def _prior_mean(self, labels):
        """mu_y `(batch, latent_dim)` of the prior p(z | y); 0 for the paper's VAE."""
        return 0.0 if labels is None else self.prior_means(labels)

    def _decode(self, z, labels, training=False):
        inputs = z if labels is None else [z, labels]
        return self.decoder(inputs, training=training)

    def compute_losses(self, images, labels=None, training=False):
        """Returns `(loss, reconstruction_loss, kl_loss)`, float32 scalars, batch means.

        `loss = reconstruction_loss + beta * kl_loss`; both terms are summed per image (over
        pixels and latent dimensions) and averaged over the batch, the paper's scale. `labels`
        (int `(batch,)`) condition a conditional VAE, whose KL is to its class prior
        N(mu_y, I), and are ignored by the paper's VAE.
        """
        self.check_images(images)
        images = ops.cast(images, "float32")
        labels = self._conditioning(labels, ops.shape(images)[0], training)
        z_mean, z_log_var = self._encode(images, training)
        z = self.sampler([z_mean, z_log_var])
        reconstructions = self._decode(z, labels, training)
        recon = ops.mean(reconstruction_loss(images, reconstructions, self.reconstruction))
        # KL(N(m, s) || N(mu, I)) = KL(N(m - mu, s) || N(0, I))
        kl = ops.mean(kl_divergence(z_mean - self._prior_mean(labels), z_log_var))
        return recon + self.beta * kl, recon, kl

    def _label_array(self, label, n):
        """Public-boundary labels: int32 `(n,)` for a conditional VAE, None for the paper's.

        `label` is None ("no label"), a class index, a class name ("Normal", "Benign",
        "Malignant"; case-insensitive, "bengin" accepted) or one label per image.
        """
        if self.num_classes is None:
            if label is not None:
                raise ValueError(f"`label` needs a VAE built with `num_classes`. "
                                 f"Received: label={label!r}, num_classes=None")
            return None
        if label is None:
            return np.full(n, self.num_classes, dtype=np.int32)
        return resolve_labels(label, n, self.num_classes)

    def encode(self, images, batch_size=256):
        """Encodes images into the parameters of q(z | x); the encoder takes no label.

        Args:
            images: `(n, H, W, C)` float in [0, 1] (uint8 is divided by 255).

        Returns:
            `(z_mean, z_log_var)`, float32 numpy arrays `(n, latent_dim)`.
        """
        images = self._as_images(images)
        check_int("batch_size", batch_size)
        return self._encode_batches(images, batch_size)

    def _encode_batches(self, images, batch_size):
        outputs = [self._encode(images[i:i + batch_size])
                   for i in range(0, len(images), batch_size)]
        z_mean = np.concatenate([ops.convert_to_numpy(m) for m, _ in outputs]) if outputs else \
            np.zeros((0, self.latent_dim), "float32")
        z_log_var = np.concatenate([ops.convert_to_numpy(v) for _, v in outputs]) if outputs \
            else np.zeros((0, self.latent_dim), "float32")
        return z_mean.astype("float32"), z_log_var.astype("float32")

    def decode(self, z, labels=None, batch_size=256):
        """Decodes latents `(n, latent_dim)` to float32 images `(n, H, W, C)` in [0, 1].

        `labels` (conditional VAE only): one label or one per latent; None means "no label".
        """
        z = np.asarray(z, dtype="float32")
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"`z` must have shape (n, {self.latent_dim}). "
                             f"Received: shape={z.shape}")
        check_int("batch_size", batch_size)
        return self._decode_batches(z, self._label_array(labels, len(z)), batch_size)

    def _decode_batches(self, z, labels, batch_size):
        # One eager forward pass per batch: a single decoder call, no per-step loop to compile.
        batches = [ops.convert_to_numpy(self._decode(
            z[i:i + batch_size], None if labels is None else labels[i:i + batch_size]))
            for i in range(0, len(z), batch_size)]
        images = np.concatenate(batches) if batches else np.zeros((0, *self.image_shape))
        return np.clip(images.astype("float32"), 0.0, 1.0)

    def reconstruct(self, images, labels=None, batch_size=256):
        """Deterministic reconstructions (decoded `z_mean`), float32 `(n, H, W, C)` in [0, 1].

        `labels` (conditional VAE only): the decoder's label, one or one per image; None
        means "no label".
        """
        images = self._as_images(images)
        check_int("batch_size", batch_size)
        labels = self._label_array(labels, len(images))
        z_mean, _ = self._encode_batches(images, batch_size)
        return self._decode_batches(z_mean, labels, batch_size)

    @property
    def has_fitted_prior(self):
        """True once `fit_class_prior` has run (a conditional VAE; saved with the model)."""
        return self.num_classes is not None and float(
            ops.convert_to_numpy(self.class_prior_fitted)) > 0.5

    def after_training(self, dataset):
        """A conditional VAE fits its ex-post class prior on the labelled training data
        (`fit_class_prior`) once training ends; returns True when it did (save it again)."""
        if self.num_classes is None or self.has_fitted_prior:
            return False
        self.fit_class_prior(dataset)
        return True

    def fit_class_prior(self, x, labels=None, jitter=PRIOR_JITTER, batch_size=256):
        """Fits the ex-post prior p(z | y) = N(m_y, C_y) of a trained conditional VAE.

        m_y and C_y are the mean and covariance of the encodings `z_mean` of the images of
        class y (plus `jitter * I`, which keeps C_y positive definite when a class has fewer
        images than latent dimensions); the "no label" row is fitted to every image.
        `generate` then samples these Gaussians (`prior="fitted"`, its default once fitted).

        Args:
            x: images `(n, H, W, C)` in [0, 1] with int `labels` `(n,)`, or an iterable of
                `(images, labels)` batches (a `tf.data.Dataset` from `make_dataset`).
            labels: class indices or names, one per image; None when `x` yields batches.
            jitter: added to the diagonal of each covariance, >= 0.
            batch_size: images encoded per batch (arrays only).

        Returns:
            The number of images fitted per class, `{class index: count}`.
        """
        if self.num_classes is None:
            raise ValueError("`fit_class_prior` needs a conditional VAE (built with "
                             "`num_classes`); the paper's VAE samples N(0, I).")
        jitter = check_number("jitter", jitter, low=0.0)
        z_mean, labels = self._encodings(x, labels, batch_size)
        locs, scales, counts = fit_class_gaussians(z_mean, labels, self.num_classes, jitter)
        self.class_prior_loc.assign(locs)
        self.class_prior_scale.assign(scales)
        self.class_prior_fitted.assign(1.0)
        logger.info("Fitted the class prior to %d encodings %s", len(z_mean), counts)
        return counts

    def _encodings(self, x, labels, batch_size):
        """`(z_mean (n, latent_dim), int32 labels (n,))` of images with labels, or of the
        `(images, labels)` batches of an iterable when `labels` is None."""
        if labels is not None:
            images = self._as_images(x)
            return (self._encode_batches(images, check_int("batch_size", batch_size))[0],
                    self._label_array(labels, len(images)))
        if isinstance(x, np.ndarray) or hasattr(x, "shape"):
            raise ValueError("`labels` is required when `x` is an array of images.")
        means, all_labels = [], []
        for batch in x:
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise ValueError("`x` must yield `(images, labels)` batches when `labels` "
                                 "is None.")
            images = self._as_images(ops.convert_to_numpy(batch[0]))
            means.append(self._encode_batches(images, len(images))[0])
            all_labels.append(self._label_array(
                ops.convert_to_numpy(batch[1]).reshape(-1).tolist(), len(images)))
        if not means:
            return np.zeros((0, self.latent_dim), "float32"), np.zeros(0, np.int32)
        return np.concatenate(means), np.concatenate(all_labels)

    def generate(self, n, *, seed=None, batch_size=256, label=None, guidance=None, prior=None):
        """Samples `n` new images by decoding z ~ N(0, I) (the class prior when conditional).

        Args:
            n: number of images.
            seed: int for reproducible samples (same seed, same images); None draws from the
                model's own generator (different images every call).
            batch_size: images decoded per batch.
            label: conditional VAE only: the class to generate, as an index, a class name
                ("malignant"; case-insensitive) or one label per image. None decodes with
                "no label" (the unconditional model that label dropout trains).
            guidance: not supported: classifier-free guidance is for the diffusion models.
                Must be None.
            prior: conditional VAE only: `"learned"` (N(mu_y, I), the prior of training),
                `"fitted"` (the ex-post N(m_y, C_y) of `fit_class_prior`) or None (fitted
                when fitted, else learned).

        Returns:
            float32 numpy array `(n, H, W, C)` in [0, 1].
        """
        check_int("n", n)
        check_int("batch_size", batch_size)
        seed = check_seed("seed", seed)
        if guidance is not None:
            raise ValueError(
                "`guidance` (classifier-free guidance) applies to the diffusion models; the "
                "VAE decodes the requested `label` directly. Pass guidance=None. "
                f"Received: guidance={guidance!r}")
        check_choice("prior", prior, (None, "learned", "fitted"))
        if prior is not None and self.num_classes is None:
            raise ValueError(f"`prior` applies to a conditional VAE; the paper's VAE samples "
                             f"N(0, I). Received: prior={prior!r}")
        if prior == "fitted" and not self.has_fitted_prior:
            raise ValueError("prior='fitted' needs `fit_class_prior` first (this VAE has none).")
        labels = self._label_array(label, int(n))
        generator = self.generation_seeds if seed is None else keras.random.SeedGenerator(int(seed))
        z = keras.random.normal((int(n), self.latent_dim), dtype="float32", seed=generator)
        if self.num_classes is not None and prior != "learned" and self.has_fitted_prior:
            z = sample_class_gaussians(ops.convert_to_numpy(z), labels,
                                       ops.convert_to_numpy(self.class_prior_loc),
                                       ops.convert_to_numpy(self.class_prior_scale))
        else:
            z = ops.convert_to_numpy(z + self._prior_mean(labels))
        return self._decode_batches(z, labels, batch_size)

    def get_config(self):
        return {**super().get_config(), "image_size": self.image_size,
                "channels": self.channels, "latent_dim": self.latent_dim,
                "widths": list(self.widths), "dense_units": self.dense_units,
                "reconstruction": self.reconstruction, "decoder": self.decoder_kind,
                "beta": self.beta,
                "num_classes": self.num_classes, "class_dropout": self.class_dropout,
                "seed": self.seed}
