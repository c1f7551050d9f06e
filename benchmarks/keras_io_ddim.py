"""A re-implementation of the keras-io DDIM example's network and training step, for timing.

The reference: András Béres, "Denoising Diffusion Implicit Models", keras-io
`examples/generative/ddim.py` (2022, Apache-2.0), https://keras.io/examples/generative/ddim/.
Rewritten here in Keras 3 with the same architecture and training maths, so that
`benchmarks/unet_speed.py` can time lungkit's `DiffusionModel` against the canonical public
Keras diffusion network on the same machine, with the same step function:

- network (`build_network`): the noise variance `(batch, 1, 1, 1)` -> 32 sinusoidal features
  (frequencies 1..1000, geometric), upsampled to the image and concatenated after a 1x1 stem;
  down blocks at `widths[:-1]` (`block_depth` residual blocks, each kept as a skip, then 2x2
  average pooling), `block_depth` residual blocks at `widths[-1]`, up blocks (bilinear 2x,
  then per block: concatenate a skip, residual block), a zero-initialised 1x1 head;
- residual block: a 1x1 shortcut when the width changes, BatchNormalization(center=False,
  scale=False), 3x3 conv with swish, 3x3 conv, add;
- training (`compute_losses`): images normalised to zero mean and unit variance (a fixed
  per-channel mean/std here, where keras-io adapts a `Normalization` layer on the data),
  uniform diffusion times, the continuous cosine schedule between signal rates 0.02 and 0.95,
  mean absolute error on the predicted noise; EMA 0.999 over all network weights
  (`after_train_step`).

Only the network and the loss maths are taken; the data pipeline, KID and plotting are not.
The model has the `compute_losses` / `after_train_step` hooks of lungkit's models, so
`benchmarks._common.make_bare_step` drives both sides alike.
"""

import math

import keras
from keras import layers, ops

DEFAULT_WIDTHS = (32, 64, 96, 128)  # keras-io ddim.py's `widths`
DEFAULT_BLOCK_DEPTH = 2  # keras-io ddim.py's `block_depth`
EMBEDDING_DIMS = 32
EMBEDDING_MAX_FREQUENCY = 1000.0
MIN_SIGNAL_RATE, MAX_SIGNAL_RATE = 0.02, 0.95
EMA = 0.999


class NoiseEmbedding(layers.Layer):
    """`(batch, 1, 1, 1)` noise variances -> `(batch, size, size, dims)` sin/cos features."""

    def __init__(self, size, dims=EMBEDDING_DIMS, **kwargs):
        super().__init__(**kwargs)
        self.size, self.dims = size, dims
        log_low, log_high = math.log(1.0), math.log(EMBEDDING_MAX_FREQUENCY)
        self.angular_speeds = [2.0 * math.pi * math.exp(log_low + i * (log_high - log_low)
                                                        / (dims // 2 - 1))
                               for i in range(dims // 2)]

    def call(self, variances):
        angles = variances * ops.convert_to_tensor(self.angular_speeds, dtype=variances.dtype)
        features = ops.concatenate([ops.sin(angles), ops.cos(angles)], axis=-1)
        return ops.tile(features, (1, self.size, self.size, 1))  # = nearest upsampling of 1x1


def residual_block(x, width):
    """keras-io's ResidualBlock: BN (no affine) -> conv3x3 swish -> conv3x3, plus shortcut."""
    shortcut = x if x.shape[-1] == width else layers.Conv2D(width, 1)(x)
    x = layers.BatchNormalization(center=False, scale=False)(x)
    x = layers.Conv2D(width, 3, padding="same", activation="swish")(x)
    x = layers.Conv2D(width, 3, padding="same")(x)
    return layers.Add()([x, shortcut])


def build_network(image_size, channels=3, widths=DEFAULT_WIDTHS, block_depth=DEFAULT_BLOCK_DEPTH,
                  name="residual_unet"):
    """keras-io's `get_network`: inputs `[noisy_images, noise_variances (B, 1, 1, 1)]`."""
    noisy_images = keras.Input((image_size, image_size, channels))
    noise_variances = keras.Input((1, 1, 1))
    embedding = NoiseEmbedding(image_size)(noise_variances)
    x = layers.Conv2D(widths[0], 1)(noisy_images)
    x = layers.Concatenate()([x, embedding])
    skips = []
    for width in widths[:-1]:
        for _ in range(block_depth):
            x = residual_block(x, width)
            skips.append(x)
        x = layers.AveragePooling2D(2)(x)
    for _ in range(block_depth):
        x = residual_block(x, widths[-1])
    for width in reversed(widths[:-1]):
        x = layers.UpSampling2D(2, interpolation="bilinear")(x)
        for _ in range(block_depth):
            x = layers.Concatenate()([x, skips.pop()])
            x = residual_block(x, width)
    outputs = layers.Conv2D(channels, 1, kernel_initializer="zeros")(x)
    return keras.Model([noisy_images, noise_variances], outputs, name=name)


class KerasIODDIM(keras.Model):
    """keras-io's DiffusionModel training maths around `build_network`, with EMA weights.

    Args:
        image_size, channels, widths, block_depth: the network (`build_network`).
        mean, std: per-channel statistics of the training images in [0, 1], for the
            normalisation (keras-io adapts a `Normalization` layer to them).
        seed: seed of the training noise and times.
    """

    def __init__(self, image_size=64, channels=3, widths=DEFAULT_WIDTHS,
                 block_depth=DEFAULT_BLOCK_DEPTH, mean=0.5, std=0.25, seed=0, **kwargs):
        super().__init__(**kwargs)
        self.image_size, self.channels = image_size, channels
        self.mean, self.std = mean, std
        self.network = build_network(image_size, channels, widths, block_depth)
        self.ema_network = build_network(image_size, channels, widths, block_depth,
                                         name="ema_residual_unet")
        self.ema_network.set_weights(self.network.get_weights())
        self.ema_network.trainable = False
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.built = True

    def diffusion_schedule(self, diffusion_times):
        """Times in [0, 1] -> `(noise_rates, signal_rates)`, squared sum 1 (cosine angles)."""
        start_angle, end_angle = math.acos(MAX_SIGNAL_RATE), math.acos(MIN_SIGNAL_RATE)
        angles = start_angle + diffusion_times * (end_angle - start_angle)
        return ops.sin(angles), ops.cos(angles)

    def denoise(self, noisy_images, noise_rates, signal_rates, training):
        network = self.network if training else self.ema_network
        pred_noises = network([noisy_images, noise_rates**2], training=training)
        pred_images = (noisy_images - noise_rates * pred_noises) / signal_rates
        return pred_noises, pred_images

    def compute_losses(self, images, labels=None, training=False):
        """keras-io's `train_step` loss: `(noise MAE, image MAE)`; the first is trained on."""
        images = (ops.cast(images, "float32") - self.mean) / self.std
        batch = ops.shape(images)[0]
        noises = keras.random.normal(ops.shape(images), seed=self.seed_generator)
        diffusion_times = keras.random.uniform((batch, 1, 1, 1), seed=self.seed_generator)
        noise_rates, signal_rates = self.diffusion_schedule(diffusion_times)
        noisy_images = signal_rates * images + noise_rates * noises
        pred_noises, pred_images = self.denoise(noisy_images, noise_rates, signal_rates,
                                                training=training)
        noise_loss = ops.mean(ops.abs(noises - pred_noises))
        image_loss = ops.mean(ops.abs(images - pred_images))  # a metric only, as in keras-io
        return noise_loss, image_loss

    def after_train_step(self):
        """keras-io's EMA: every network weight (BN statistics too), decay 0.999."""
        for weight, ema_weight in zip(self.network.weights, self.ema_network.weights,
                                      strict=True):
            ema_weight.assign(EMA * ema_weight + (1.0 - EMA) * weight)
