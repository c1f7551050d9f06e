"""`LatentAutoencoder`: a KL-regularised autoencoder with a spatial latent, for latent diffusion.

The first stage of Rombach et al. (2022), "High-Resolution Image Synthesis with Latent
Diffusion Models": an encoder maps a CT slice `(H, W, C)` to the mean and log-variance of a
small feature map `(H / f, W / f, latent_channels)`, f = 2**downsamplings (128 px -> 16x16x4
with the defaults, 48x fewer numbers); a decoder maps it back. A very small KL weight keeps the
latent close to a Gaussian without blurring the reconstructions (their "KL-reg", weight 1e-6),
and the latents are standardised by a measured `scale_factor` (Stable Diffusion's 0.18215, but
computed on our data) so that the diffusion model of `lungkit.models.latent` sees unit variance.

The network is built from the U-Net's `ResidualBlock` (`lungkit.models.unet`), without skip
connections (everything must pass through the latent); the losses reuse
`lungkit.models.vae_layers.kl_divergence` and `reconstruction_loss`, the posterior sample its
`Sampling` layer. Rombach et al. add a perceptual (LPIPS) and an adversarial loss; we use a
pixel L1 loss only (no pretrained network, no GAN), so reconstructions are somewhat smoother.

Notation:

    code name                 paper (Rombach et al. 2022)
    z_mean, z_log_var         mean and log-variance of the posterior q(z | x), maps (h, w, c)
    latents                   (z - shift_factor) * scale_factor, what the diffusion sees
    scale_factor              1 / std(z) over the training set (their section 4.3 / app. G)
    shift_factor              mean(z) over the training set (as Stable Diffusion 3's VAE)
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
    check_seed,
)
from lungkit.models.base import GenerativeModel, unpack_batch
from lungkit.models.unet import ResidualBlock
from lungkit.models.vae_layers import Sampling, kl_divergence, reconstruction_loss

logger = logging.getLogger(__name__)

# Rombach et al. (2022), configs/autoencoder/autoencoder_kl_*.yaml: kl_weight 1e-6 against a
# reconstruction loss summed over the pixels of each image (as ours).
DEFAULT_KL_WEIGHT = 1e-6
# One width per resolution level (len - 1 = downsamplings): 128 px -> 16x16 with these.
DEFAULT_AUTOENCODER_WIDTHS = (32, 64, 128, 128)
DEFAULT_LATENT_CHANNELS = 4  # Stable Diffusion's 4-channel latent (Rombach et al., 2022)
RECONSTRUCTIONS = ("l1", "mse")  # per-pixel error, summed over each image


def build_latent_encoder(image_size, channels, latent_channels, widths, blocks_per_level=1,
                         groups=8, name="encoder"):
    """Images -> posterior maps `(z_mean, z_log_var)`.

    Level `i` runs `blocks_per_level` `ResidualBlock`s of `widths[i]` channels at
    `image_size / 2**i`; a stride-2 3x3 convolution goes down a level; two linear float32
    3x3 convolutions give the mean and log-variance.

    Returns:
        `keras.Model`: float `(B, image_size, image_size, channels)` in [0, 1] -> two float32
        `(B, s, s, latent_channels)`, `s = image_size / 2**(len(widths) - 1)`.
    """
    images = keras.Input((image_size, image_size, channels), name="images")
    x = keras.layers.Conv2D(widths[0], 3, padding="same", name="stem")(images)
    for level, width in enumerate(widths):
        for block in range(blocks_per_level):
            x = ResidualBlock(width, groups, name=f"down{level}_res{block}")(x)
        if level < len(widths) - 1:
            x = keras.layers.Conv2D(width, 3, strides=2, padding="same",
                                    name=f"down{level}_downsample")(x)
    x = ResidualBlock(widths[-1], groups, name="middle_res")(x)
    x = keras.layers.GroupNormalization(groups, name="head_norm")(x)
    x = keras.layers.Activation("swish", name="head_swish")(x)
    z_mean = keras.layers.Conv2D(latent_channels, 3, padding="same", dtype="float32",
                                 name="z_mean")(x)
    z_log_var = keras.layers.Conv2D(latent_channels, 3, padding="same", dtype="float32",
                                    name="z_log_var")(x)
    return keras.Model(images, [z_mean, z_log_var], name=name)


def build_latent_decoder(image_size, channels, latent_channels, widths, blocks_per_level=1,
                         groups=8, name="decoder"):
    """Mirror of `build_latent_encoder`: latent maps -> images (nearest upsampling + conv).

    Returns:
        `keras.Model`: float `(B, s, s, latent_channels)` -> float32
        `(B, image_size, image_size, channels)`, linear (about [0, 1]; `decode` clips).
    """
    side = image_size // 2 ** (len(widths) - 1)
    z = keras.Input((side, side, latent_channels), name="z")
    x = keras.layers.Conv2D(widths[-1], 3, padding="same", name="stem")(z)
    x = ResidualBlock(widths[-1], groups, name="middle_res")(x)
    for level in reversed(range(len(widths))):
        for block in range(blocks_per_level):
            x = ResidualBlock(widths[level], groups, name=f"up{level}_res{block}")(x)
        if level > 0:
            x = keras.layers.UpSampling2D(2, interpolation="nearest", name=f"up{level}_upsample")(x)
            x = keras.layers.Conv2D(widths[level - 1], 3, padding="same", name=f"up{level}_conv")(x)
    x = keras.layers.GroupNormalization(groups, name="head_norm")(x)
    x = keras.layers.Activation("swish", name="head_swish")(x)
    outputs = keras.layers.Conv2D(channels, 3, padding="same", dtype="float32", name="images")(x)
    return keras.Model(z, outputs, name=name)


@keras.saving.register_keras_serializable(package="lungkit")
class LatentAutoencoder(GenerativeModel):
    """KL-regularised autoencoder: images `(B, H, W, C)` in [0, 1] <-> latents `(B, h, w, c)`.

    Args:
        image_size: side of the square images, divisible by `2 ** (len(widths) - 1)`.
        channels: 1 or 3.
        latent_channels: channels of the latent map.
        widths: channels per resolution level; `len(widths) - 1` stride-2 downsamplings.
        blocks_per_level: residual blocks per level in the encoder and in the decoder.
        groups: groups of every `GroupNormalization`; must divide every width.
        reconstruction: "l1" (Rombach et al.'s pixel loss) or "mse", summed over each image.
        kl_weight: weight of the KL term, >= 0.
        scale_factor: 1 / std of the training latents; None until `compute_scale_factor`.
        shift_factor: mean of the training latents (0.0 until measured).
        seed: seeds the posterior sampling noise.
    """

    loss_names = ("loss", "reconstruction_loss", "kl_loss")

    def __init__(self, image_size=128, channels=3, latent_channels=DEFAULT_LATENT_CHANNELS,
                 widths=DEFAULT_AUTOENCODER_WIDTHS, blocks_per_level=1, groups=8,
                 reconstruction="l1", kl_weight=DEFAULT_KL_WEIGHT, scale_factor=None,
                 shift_factor=0.0, seed=None, **kwargs):
        widths = check_int_tuple("widths", widths, min_length=2)  # >= 1 downsampling
        groups = check_int("groups", groups)
        if any(w % groups for w in widths):
            raise ValueError(f"`groups` must divide every width. Received: groups={groups}, "
                             f"widths={widths}")
        factor = 2 ** (len(widths) - 1)
        if check_int("image_size", image_size) % factor:
            raise ValueError(f"`image_size` must be divisible by {factor} ({len(widths) - 1} "
                             f"downsamplings). Received: image_size={image_size}")
        channels = check_channels(channels)
        check_choice("reconstruction", reconstruction, RECONSTRUCTIONS)
        kl_weight = check_number("kl_weight", kl_weight, low=0.0)
        if scale_factor is not None:
            scale_factor = check_number("scale_factor", scale_factor, low=0.0, low_open=True)
        blocks_per_level = check_int("blocks_per_level", blocks_per_level)
        seed = check_seed("seed", seed)
        super().__init__(**kwargs)
        self.image_size, self.channels = int(image_size), channels
        self.latent_channels = check_int("latent_channels", latent_channels)
        self.widths, self.blocks_per_level, self.groups = widths, int(blocks_per_level), groups
        self.reconstruction, self.kl_weight, self.seed = reconstruction, float(kl_weight), seed
        self.latent_size = self.image_size // factor
        args = (self.image_size, channels, self.latent_channels, widths, self.blocks_per_level,
                groups)
        self.encoder = build_latent_encoder(*args)
        self.decoder = build_latent_decoder(*args)
        self.sampler = Sampling(seed=seed, name="sampler")
        # Saved with the weights; also in get_config once measured (`calibrated`).
        self.calibrated = scale_factor is not None
        self.scale_variable = self.add_weight(
            shape=(), initializer=keras.initializers.Constant(scale_factor or 1.0),
            trainable=False, name="scale_factor")
        self.shift_variable = self.add_weight(
            shape=(), initializer=keras.initializers.Constant(float(shift_factor)),
            trainable=False, name="shift_factor")
        self.built = True
        logger.debug("LatentAutoencoder %d px -> %dx%dx%d: %d parameters", image_size,
                     self.latent_size, self.latent_size, latent_channels, self.count_params())

    @property
    def scale_factor(self):
        """1 / std of the training latents (1.0 before `compute_scale_factor`)."""
        return float(ops.convert_to_numpy(self.scale_variable))

    @property
    def shift_factor(self):
        """Mean of the training latents (0.0 before `compute_scale_factor`)."""
        return float(ops.convert_to_numpy(self.shift_variable))

    @property
    def latent_shape(self):
        """`(latent_size, latent_size, latent_channels)`."""
        return (self.latent_size, self.latent_size, self.latent_channels)

    # -- tensor maths (used inside compiled steps) ---------------------------------------
    def call(self, images, training=False):
        """Reconstructions: decodes a posterior sample while training, the mean otherwise."""
        z_mean, z_log_var = self.encoder(images, training=training)
        z = self.sampler([z_mean, z_log_var]) if training else z_mean
        return self.decoder(z, training=training)

    def compute_losses(self, images, labels=None, training=False):
        """`(loss, reconstruction_loss, kl_loss)`, float32 batch means of per-image sums.

        `loss = reconstruction_loss + kl_weight * kl_loss`; the KL is summed over every
        latent element, the reconstruction error over every pixel and channel.
        """
        images = ops.cast(images, "float32")
        z_mean, z_log_var = self.encoder(images, training=training)
        reconstructions = ops.cast(
            self.decoder(self.sampler([z_mean, z_log_var]), training=training), "float32")
        if self.reconstruction == "l1":
            errors = ops.sum(ops.abs(images - reconstructions), axis=(1, 2, 3))
        else:
            errors = reconstruction_loss(images, reconstructions, "mse")
        batch = ops.shape(z_mean)[0]
        kl = kl_divergence(ops.reshape(z_mean, (batch, -1)), ops.reshape(z_log_var, (batch, -1)))
        recon, kl = ops.mean(errors), ops.mean(kl)
        return recon + self.kl_weight * kl, recon, kl

    def to_latents(self, images, sample=True):
        """Images float `(B, H, W, C)` in [0, 1] -> standardised latents `(B, h, w, c)` (tensor).

        `sample=True` draws from the posterior (what the diffusion is trained on, as in
        Rombach et al.); False uses its mean. Returns `(z - shift_factor) * scale_factor`.
        """
        z_mean, z_log_var = self.encoder(ops.cast(images, "float32"), training=False)
        z = self.sampler([z_mean, z_log_var]) if sample else z_mean
        return (ops.cast(z, "float32") - self.shift_variable) * self.scale_variable

    def from_latents(self, latents):
        """Standardised latents `(B, h, w, c)` -> decoder output `(B, H, W, C)` (tensor, unclipped)."""
        z = ops.cast(latents, "float32") / self.scale_variable + self.shift_variable
        return ops.cast(self.decoder(z, training=False), "float32")

    # -- numpy API ----------------------------------------------------------------------
    def _batches(self, data, batch_size):
        """Yields float32 image batches from an array `(n, H, W, C)` or a `tf.data.Dataset`."""
        check_int("batch_size", batch_size)
        if hasattr(data, "element_spec"):
            for batch in data:
                yield ops.cast(unpack_batch(batch)[0], "float32")
            return
        images = np.asarray(data)
        if images.ndim != 4 or images.shape[1:] != (self.image_size, self.image_size,
                                                    self.channels):
            raise ValueError(f"`images` must have shape (n, {self.image_size}, {self.image_size}, "
                             f"{self.channels}). Received: shape={images.shape}")
        images = images.astype("float32") / 255.0 if images.dtype == np.uint8 else \
            images.astype("float32", copy=False)
        for start in range(0, len(images), batch_size):
            yield images[start:start + batch_size]

    def encode(self, images, batch_size=64):
        """Posterior parameters of `images` (n, H, W, C) in [0, 1] (uint8 / 255).

        Returns:
            `(z_mean, z_log_var)`, float32 numpy `(n, latent_size, latent_size, latent_channels)`
            each (raw latents, before `scale_factor`).
        """
        outputs = [self.encoder(batch, training=False) for batch in self._batches(images, batch_size)]
        if not outputs:
            empty = np.zeros((0, *self.latent_shape), "float32")
            return empty, empty.copy()
        return tuple(np.concatenate([ops.convert_to_numpy(o[i]) for o in outputs]).astype("float32")
                     for i in range(2))

    def decode(self, z, batch_size=64):
        """Raw latents `(n, latent_size, latent_size, latent_channels)` -> float32 images in [0, 1]."""
        z = np.asarray(z, dtype="float32")
        if z.ndim != 4 or z.shape[1:] != self.latent_shape:
            raise ValueError(f"`z` must have shape (n, {', '.join(map(str, self.latent_shape))}). "
                             f"Received: shape={z.shape}")
        check_int("batch_size", batch_size)
        images = [ops.convert_to_numpy(self.decoder(z[i:i + batch_size], training=False))
                  for i in range(0, len(z), batch_size)]
        images = np.concatenate(images) if images else \
            np.zeros((0, self.image_size, self.image_size, self.channels))
        return np.clip(images, 0.0, 1.0).astype("float32")

    def reconstruct(self, images, batch_size=64):
        """Deterministic reconstructions (decoded posterior means), float32 in [0, 1]."""
        return self.decode(self.encode(images, batch_size)[0], batch_size)

    def compute_scale_factor(self, images, batch_size=64):
        """Measures `shift_factor` and `scale_factor` on posterior samples of `images`.

        Stable Diffusion fixes 0.18215 (1 / std of its VAE's latents on a batch of its data);
        we measure ours on the whole given set: shift = mean, scale = 1 / std over every
        element of posterior samples, so `to_latents` has mean 0 and variance 1 there.

        Args:
            images: array `(n, H, W, C)` in [0, 1] (uint8 / 255) or a `tf.data.Dataset` of
                images or `(images, labels)`; the autoencoder's training set.

        Returns:
            The new `scale_factor` (float); both values are stored in the model's weights.
        """
        count, total, total_sq = 0, 0.0, 0.0
        # Its own seeded noise, not the sampler's stream: the same weights and images give
        # the same factors (a reloaded autoencoder recalibrates to the very same values).
        noise = keras.random.SeedGenerator(0 if self.seed is None else self.seed)
        for batch in self._batches(images, batch_size):
            z_mean, z_log_var = self.encoder(batch, training=False)
            epsilon = keras.random.normal(ops.shape(z_mean), seed=noise)
            z = ops.convert_to_numpy(z_mean + ops.exp(0.5 * z_log_var) * epsilon)
            z = z.astype("float64")
            count, total, total_sq = count + z.size, total + z.sum(), total_sq + np.square(z).sum()
        if count == 0:
            raise ValueError("`images` must hold at least one image. Received: an empty set")
        mean = total / count
        std = float(np.sqrt(max(total_sq / count - mean**2, 0.0)))
        if not std > 0:
            raise ValueError(f"The latents of `images` have zero variance (std={std}); "
                             "train the autoencoder first.")
        self.shift_variable.assign(mean)
        self.scale_variable.assign(1.0 / std)
        self.calibrated = True
        logger.info("Latent statistics over %d values: mean %.4g, std %.4g -> scale_factor %.4g",
                    count, mean, std, 1.0 / std)
        return 1.0 / std

    def get_config(self):
        return {**super().get_config(), "image_size": self.image_size, "channels": self.channels,
                "latent_channels": self.latent_channels, "widths": list(self.widths),
                "blocks_per_level": self.blocks_per_level, "groups": self.groups,
                "reconstruction": self.reconstruction, "kl_weight": self.kl_weight,
                "scale_factor": self.scale_factor if self.calibrated else None,
                "shift_factor": self.shift_factor, "seed": self.seed}
