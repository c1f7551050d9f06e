"""The paper's "diffusion model": a U-Net trained to remove Gaussian noise (Chen, 2024).

Chen (2024) trains a U-Net with MSE on (noised, clean) pairs of CT slices scaled to [0, 1]
for 10 epochs (Figure 5: "Average Loss for Epoch" 0.0106 -> 0.0024) and "generates" by
noising real slices and denoising them, which is why its samples "almost perfectly imitate"
the originals. `UNetDenoiser` reproduces exactly that, and `generate(n)` without source
images starts from pure noise instead, which shows that such a model is a denoiser, not a
generative model (compare `lungkit.models.diffusion.DiffusionModel`).

Inside, the network sees images in [-1, 1] and predicts a correction that is added to its
input (a residual denoiser: with a zero-initialised last layer it starts as the identity);
the loss is the MSE between the prediction and the clean image in [0, 1] units, the same
units as the paper's Figure 5.
"""

import logging
import math

import keras
import numpy as np
import tensorflow as tf
from keras import ops
from tqdm.auto import tqdm

from lungkit.checks import (
    check_channels,
    check_choice,
    check_images,
    check_int,
    check_int_tuple,
    check_seed,
)
from lungkit.models.base import GenerativeModel, ReplicaSeeds
from lungkit.models.unet import BLOCKS, DEFAULT_BLOCK, LEGACY_BLOCK, build_unet

logger = logging.getLogger(__name__)

# Inferred, not stated in the paper: with noise std 0.1 the identity map already has MSE
# ~0.01, which matches the first-epoch loss 0.0106 in its Figure 5.
PAPER_NOISE_STD = 0.1
# generate() without source images starts from N(0.5, 0.5**2) clipped to [0, 1]: noise that
# covers the whole intensity range, as an image-free starting point.
PURE_NOISE_MEAN = 0.5
PURE_NOISE_STD = 0.5


def _check_noise_std(noise_std, name="noise_std"):
    """Returns `noise_std` as a float > 0 or a `(low, high)` tuple with 0 <= low <= high."""
    if isinstance(noise_std, (list, tuple)):
        if len(noise_std) != 2 or not 0 <= noise_std[0] <= noise_std[1] or noise_std[1] <= 0:
            raise ValueError(f"`{name}` as a range must be `(low, high)` with 0 <= low <= high "
                             f"and high > 0. Received: {name}={noise_std!r}")
        return (float(noise_std[0]), float(noise_std[1]))
    if isinstance(noise_std, bool) or not isinstance(noise_std, (int, float)) or noise_std <= 0:
        raise ValueError(f"`{name}` must be a number > 0 or a `(low, high)` range. "
                         f"Received: {name}={noise_std!r}")
    return float(noise_std)


@keras.saving.register_keras_serializable(package="lungkit")
class UNetDenoiser(GenerativeModel):
    """U-Net denoiser for CT slices `(batch, H, W, C)` in [0, 1], trained with MSE.

    Args:
        image_size: height and width of the slices; divisible by `2 ** (len(widths) - 1)`.
        channels: 1 (grayscale) or 3 (RGB, as the paper).
        noise_std: std of the Gaussian noise added to the [0, 1] images in training: a number,
            or a `(low, high)` range sampled uniformly per image. The noised image is clipped
            to [0, 1], the same domain `restore` accepts.
        widths, blocks_per_level, attention_levels, groups, block: the U-Net (see
            `build_unet`); `block` "fast" (default) or "classic" (configs saved without it).
        seed: seed of the training noise; None for a fresh one.
    """

    loss_names = ("loss",)

    def __init__(self, image_size=128, channels=3, noise_std=PAPER_NOISE_STD,
                 widths=(32, 64, 128), blocks_per_level=1, attention_levels=(), groups=8,
                 seed=None, block=DEFAULT_BLOCK, **kwargs):
        image_size = check_int("image_size", image_size)
        channels = check_channels(channels)
        noise_std = _check_noise_std(noise_std)
        widths = check_int_tuple("widths", widths)
        seed = check_seed("seed", seed)
        check_choice("block", block, BLOCKS)
        super().__init__(**kwargs)
        self.image_size, self.channels, self.noise_std = image_size, channels, noise_std
        self.widths, self.attention_levels = widths, tuple(attention_levels)
        self.blocks_per_level, self.groups, self.seed = blocks_per_level, groups, seed
        self.block = block
        self.unet = build_unet(image_size, channels, widths=self.widths,
                               blocks_per_level=blocks_per_level,
                               attention_levels=self.attention_levels, groups=groups,
                               block=block, name="denoiser_unet")
        self.seed_generator = keras.random.SeedGenerator(seed, name="noise_seed")
        self._step_function = None

    def call(self, noisy, training=False):
        """Predicts clean images `(batch, H, W, C)` (float32, unclipped) from noisy ones in [0, 1]."""
        noisy = ops.cast(noisy, "float32")
        scaled = noisy * 2.0 - 1.0
        correction = ops.cast(self.unet(scaled, training=training), "float32")
        return (scaled + correction + 1.0) / 2.0

    def add_noise(self, images, noise_std=None, seed=None):
        """Adds Gaussian noise to images in [0, 1] and clips the result to [0, 1].

        Args:
            images: float `(batch, H, W, C)` in [0, 1].
            noise_std: a number or a `(low, high)` range (one std per image); default the
                model's `noise_std`.
            seed: an int, a `keras.random.SeedGenerator`, or None for the model's generator.

        Returns:
            float32 `(batch, H, W, C)` in [0, 1].
        """
        images = ops.cast(images, "float32")
        noise_std = self.noise_std if noise_std is None else noise_std
        if seed is None:
            seed = self.seed_generator
        elif not isinstance(seed, keras.random.SeedGenerator):
            seed = keras.random.SeedGenerator(seed)  # one generator: std and noise differ
        if isinstance(noise_std, tuple):
            stds = keras.random.uniform((ops.shape(images)[0], 1, 1, 1), noise_std[0],
                                        noise_std[1], seed=seed)
        else:
            stds = noise_std
        noise = keras.random.normal(ops.shape(images), seed=seed)
        return ops.clip(images + stds * noise, 0.0, 1.0)

    def compute_losses(self, images, labels=None, training=False):
        images = ops.cast(images, "float32")
        noisy = self.add_noise(images, seed=ReplicaSeeds(self.seed_generator))  # per replica
        predictions = self(noisy, training=training)
        return (ops.mean(ops.square(predictions - images)),)

    def _restore_step(self, images):
        """One denoising pass, clipped to [0, 1]; a compiled function built on first use."""
        if self._step_function is None:
            spec = tf.TensorSpec((None, self.image_size, self.image_size, self.channels),
                                 "float32")
            self._step_function = tf.function(
                lambda x: ops.clip(self(x, training=False), 0.0, 1.0), input_signature=[spec])
        return self._step_function(images)

    def restore(self, noisy, steps=1, batch_size=64):
        """Denoises images by applying the network `steps` times.

        Args:
            noisy: float `(n, H, W, C)` in [0, 1].
            steps: passes through the network; each output is clipped to [0, 1].
            batch_size: images per network call.

        Returns:
            float32 numpy array `(n, H, W, C)` in [0, 1].
        """
        noisy = check_images(noisy, "noisy", self.image_size, self.channels)
        steps = check_int("steps", steps)
        batch_size = check_int("batch_size", batch_size)
        restored = []
        for start in range(0, len(noisy), batch_size):
            batch = ops.convert_to_tensor(noisy[start:start + batch_size])
            for _ in range(steps):
                batch = self._restore_step(batch)
            restored.append(ops.convert_to_numpy(batch))
        return np.concatenate(restored).astype("float32")

    def generate(self, n, *, source_images=None, noise_std=None, seed=None, steps=1,
                 batch_size=64, progress=True):
        """Generates `n` images the paper's way (from real images) or from pure noise.

        With `source_images` (the paper's procedure) image `i` is `source_images[i % m]`
        noised with `noise_std` and then restored, so it reproduces its source. Without them
        each image starts as `N(PURE_NOISE_MEAN, PURE_NOISE_STD**2)` noise clipped to [0, 1]
        and is restored `steps` times; a denoiser has no model of the data to go to, so these
        samples show that it is not a generative model.

        Args:
            n: number of images.
            source_images: optional float `(m, H, W, C)` in [0, 1], cycled when `m < n`.
            noise_std: noise added to the source images; default the model's `noise_std`
                (a range draws one std per image). Ignored without `source_images`.
            seed: int for reproducible samples; None draws from the model's generator.
            steps: denoising passes per image.
            batch_size: images per network call.
            progress: show a progress bar over batches.

        Returns:
            float32 numpy array `(n, H, W, C)` in [0, 1].
        """
        n = check_int("n", n)
        steps = check_int("steps", steps)
        batch_size = check_int("batch_size", batch_size)
        noise_std = self.noise_std if noise_std is None else _check_noise_std(noise_std)
        if source_images is not None:
            source_images = check_images(source_images, "source_images", self.image_size, self.channels)
            source_images = source_images[np.arange(n) % len(source_images)]
        seed_generator = (self.seed_generator if seed is None
                          else keras.random.SeedGenerator(seed, name="generate_seed"))
        shape = (self.image_size, self.image_size, self.channels)
        samples = []
        for start in tqdm(range(0, n, batch_size), desc="denoiser", disable=not progress,
                          total=math.ceil(n / batch_size)):
            count = min(batch_size, n - start)
            if source_images is None:
                batch = keras.random.normal((count, *shape), PURE_NOISE_MEAN, PURE_NOISE_STD,
                                            seed=seed_generator)
                batch = ops.clip(batch, 0.0, 1.0)
            else:
                batch = self.add_noise(source_images[start:start + count], noise_std,
                                       seed=seed_generator)
            for _ in range(steps):
                batch = self._restore_step(batch)
            samples.append(ops.convert_to_numpy(batch))
        return np.concatenate(samples).astype("float32")

    def get_config(self):
        noise_std = list(self.noise_std) if isinstance(self.noise_std, tuple) else self.noise_std
        return {**super().get_config(), "image_size": self.image_size,
                "channels": self.channels, "noise_std": noise_std,
                "widths": list(self.widths), "blocks_per_level": self.blocks_per_level,
                "attention_levels": list(self.attention_levels), "groups": self.groups,
                "seed": self.seed, "block": self.block}

    @classmethod
    def from_config(cls, config):
        """Configs saved before the `block` option load with the classic block they trained."""
        return cls(**{"block": LEGACY_BLOCK, **config})
