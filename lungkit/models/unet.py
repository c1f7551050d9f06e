"""One configurable U-Net, shared by the paper's denoiser and the true diffusion model.

`build_unet` returns a functional `keras.Model` mapping images `(batch, H, W, C)` (plus,
optionally, diffusion times and class labels) to an image-shaped output. Its pieces are small
registered layers, so a saved model reloads with `safe_mode=True`:

- `SinusoidalEmbedding`: diffusion time `t` in [0, 1] -> sin/cos features, as in the keras-io
  DDIM example (`examples/generative/ddim.py`, `sinusoidal_embedding`) and the Transformer
  position encoding (Vaswani et al., 2017).
- `ResidualBlock`, in one of two `BLOCKS`:
  "fast" (the default of `build_unet`): one affine-free GroupNorm -> conv -> swish, the
  time/class embedding projected and added, conv; the shape of the keras-io DDIM block
  (one normalisation, `center=False, scale=False` since the next convolution makes the
  affine part redundant) with the DDPM embedding kept, and no running statistics, so
  outputs do not depend on the batch or on replicas.
  "classic": GroupNorm -> swish -> conv, twice, with the embedding added in between
  (Ho et al., 2020, DDPM). On CPU the normalisations are the largest cost after the
  convolutions, and "fast" has half as many; `benchmarks/unet_speed.py` measures both.
  Both add a 1x1 shortcut when the width changes.
- `AttentionBlock`: GroupNorm + multi-head self-attention over the `H * W` positions, with a
  residual connection (DDPM uses it at 16x16).

Levels: level `i` works at resolution `image_size / 2**i` with `widths[i]` channels; the
encoder downsamples by average pooling, the decoder upsamples (nearest) and convolves, and
each decoder block concatenates the matching encoder activation (skip connection).
"""

import logging
import math

import keras
from keras import ops

from lungkit.checks import check_choice, check_int

logger = logging.getLogger(__name__)

# keras-io ddim.py: embedding frequencies spread geometrically from 1 to 1000.
EMBEDDING_MIN_FREQUENCY = 1.0
EMBEDDING_MAX_FREQUENCY = 1000.0
# DDPM / improved-diffusion: the embedding MLP is 4x wider than the sinusoidal features.
EMBEDDING_MLP_FACTOR = 4
# The residual block variants (see the module docstring); configs saved before the choice
# existed have no "block" and rebuild "classic", the only block of that time.
BLOCKS = ("fast", "classic")
DEFAULT_BLOCK = "fast"
LEGACY_BLOCK = "classic"


@keras.saving.register_keras_serializable(package="lungkit")
class SinusoidalEmbedding(keras.layers.Layer):
    """Maps scalars (diffusion times in [0, 1]) to `dims` sine and cosine features.

    Args:
        dims: even number of output features; half sines, half cosines.
        max_frequency: the highest frequency (cycles per unit of `t`); the lowest is 1.

    Call:
        times: float `(batch,)` or `(batch, 1)`.

    Returns:
        float `(batch, dims)` with values in [-1, 1].
    """

    def __init__(self, dims=32, max_frequency=EMBEDDING_MAX_FREQUENCY, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(dims, int) or dims < 2 or dims % 2:
            raise ValueError(f"`dims` must be an even integer >= 2. Received: dims={dims}")
        if max_frequency <= EMBEDDING_MIN_FREQUENCY:
            raise ValueError(f"`max_frequency` must be > {EMBEDDING_MIN_FREQUENCY}. "
                             f"Received: max_frequency={max_frequency}")
        self.dims, self.max_frequency = dims, float(max_frequency)
        frequencies = [math.exp(math.log(EMBEDDING_MIN_FREQUENCY) + i / max(dims // 2 - 1, 1)
                                * (math.log(self.max_frequency) - math.log(EMBEDDING_MIN_FREQUENCY)))
                       for i in range(dims // 2)]
        self.angular_speeds = [2.0 * math.pi * f for f in frequencies]

    def call(self, times):
        times = ops.reshape(ops.cast(times, self.compute_dtype), (-1, 1))
        angles = times * ops.convert_to_tensor([self.angular_speeds], dtype=self.compute_dtype)
        return ops.concatenate([ops.sin(angles), ops.cos(angles)], axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.dims)

    def get_config(self):
        return {**super().get_config(), "dims": self.dims, "max_frequency": self.max_frequency}


@keras.saving.register_keras_serializable(package="lungkit")
class ResidualBlock(keras.layers.Layer):
    """Residual block with an optional additive embedding, "fast" or "classic" (`BLOCKS`).

    Args:
        width: output channels.
        groups: number of groups for `GroupNormalization`; must divide the input and `width`.
        variant: "classic" (GroupNorm -> swish -> conv, twice) or "fast" (one affine-free
            GroupNorm -> conv -> swish -> conv). The layer's default is "classic", so a layer
            config saved before the argument existed rebuilds the block it was trained as.

    Call:
        inputs: `x` of shape `(batch, H, W, C)`, or `[x, embedding]` with `embedding` of shape
            `(batch, E)` (time and/or class), projected to `width` and added after the first
            convolution.

    Returns:
        `(batch, H, W, width)`.
    """

    def __init__(self, width, groups=8, variant=LEGACY_BLOCK, **kwargs):
        super().__init__(**kwargs)
        check_choice("variant", variant, BLOCKS)
        self.width, self.groups, self.variant = width, groups, variant
        policy = self.dtype_policy
        fast = variant == "fast"
        self.norm1 = keras.layers.GroupNormalization(groups, center=not fast, scale=not fast,
                                                     dtype=policy, name="norm1")
        self.conv1 = keras.layers.Conv2D(width, 3, padding="same", dtype=policy, name="conv1")
        self.norm2 = None if fast else keras.layers.GroupNormalization(groups, dtype=policy,
                                                                       name="norm2")
        self.conv2 = keras.layers.Conv2D(width, 3, padding="same", dtype=policy, name="conv2")
        self.embedding_projection = keras.layers.Dense(width, dtype=policy, name="embedding")
        self.shortcut = keras.layers.Conv2D(width, 1, dtype=policy, name="shortcut")

    @staticmethod
    def _split(inputs):
        """`x` or `[x, embedding]` (tensors or shapes) -> `(x, embedding or None)`."""
        nested = isinstance(inputs, (list, tuple)) and isinstance(inputs[0], (list, tuple))
        if isinstance(inputs, list) or nested:  # a list of tensors, or of shapes
            return inputs[0], (inputs[1] if len(inputs) > 1 else None)
        return inputs, None

    def build(self, input_shape):
        x_shape, embedding_shape = self._split(input_shape)
        channels = x_shape[-1]
        self.norm1.build(x_shape)
        self.conv1.build(x_shape)
        out_shape = (*x_shape[:-1], self.width)
        if self.norm2 is not None:
            self.norm2.build(out_shape)
        self.conv2.build(out_shape)
        self.has_embedding = embedding_shape is not None
        if self.has_embedding:
            self.embedding_projection.build(embedding_shape)
        self.has_shortcut = channels != self.width
        if self.has_shortcut:
            self.shortcut.build(x_shape)
        self.built = True

    def _add_embedding(self, h, embedding):
        if embedding is None:
            return h
        projected = self.embedding_projection(keras.activations.swish(embedding))
        return h + ops.expand_dims(ops.expand_dims(projected, 1), 1)

    def call(self, inputs, training=False):
        x, embedding = self._split(inputs)
        if self.variant == "fast":
            h = keras.activations.swish(self.conv1(self.norm1(x)))
            h = self.conv2(self._add_embedding(h, embedding))
        else:
            h = self._add_embedding(self.conv1(keras.activations.swish(self.norm1(x))), embedding)
            h = self.conv2(keras.activations.swish(self.norm2(h)))
        shortcut = self.shortcut(x) if self.has_shortcut else x
        return shortcut + h

    def compute_output_shape(self, input_shape):
        x_shape, _ = self._split(input_shape)
        return (*x_shape[:-1], self.width)

    def get_config(self):
        return {**super().get_config(), "width": self.width, "groups": self.groups,
                "variant": self.variant}


@keras.saving.register_keras_serializable(package="lungkit")
class AttentionBlock(keras.layers.Layer):
    """Self-attention over all `H * W` positions, with GroupNorm and a residual connection.

    Args:
        num_heads: attention heads; must divide the channel count.
        groups: number of groups for `GroupNormalization`.

    Call:
        x: `(batch, H, W, C)` with static `H`, `W`, `C`.

    Returns:
        `(batch, H, W, C)`.
    """

    def __init__(self, num_heads=1, groups=8, **kwargs):
        super().__init__(**kwargs)
        self.num_heads, self.groups = num_heads, groups
        self.norm = keras.layers.GroupNormalization(groups, dtype=self.dtype_policy, name="norm")
        self.attention = None  # key_dim depends on the channel count, known in build()

    def build(self, input_shape):
        _, height, width, channels = input_shape
        if channels % self.num_heads:
            raise ValueError(f"`num_heads` must divide the channel count {channels}. "
                             f"Received: num_heads={self.num_heads}")
        self.norm.build(input_shape)
        self.attention = keras.layers.MultiHeadAttention(
            self.num_heads, channels // self.num_heads, dtype=self.dtype_policy, name="attention")
        tokens_shape = (input_shape[0], height * width, channels)
        self.attention.build(tokens_shape, tokens_shape)
        self.built = True

    def call(self, x, training=False):
        _, height, width, channels = x.shape
        tokens = ops.reshape(self.norm(x), (-1, height * width, channels))
        attended = self.attention(tokens, tokens, training=training)
        return x + ops.reshape(attended, (-1, height, width, channels))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads, "groups": self.groups}


def _validate(image_size, channels, widths, blocks_per_level, attention_levels,
              embedding_dims, num_classes, out_channels, groups):
    check_int("image_size", image_size)
    check_int("channels", channels)
    check_int("blocks_per_level", blocks_per_level)
    check_int("groups", groups)
    check_int("embedding_dims", embedding_dims)
    if not widths:
        raise ValueError(f"`widths` must be a non-empty sequence. Received: widths={widths!r}")
    for width in widths:
        check_int("widths", width)
        if width % groups:
            raise ValueError(f"`groups` must divide every width. Received: groups={groups}, "
                             f"widths={tuple(widths)}")
    depth = len(widths) - 1
    if image_size % 2**depth:
        raise ValueError(f"`image_size` must be divisible by {2**depth} for a U-Net with "
                         f"{depth} downsamplings. Received: image_size={image_size}")
    for level in attention_levels:
        if not isinstance(level, int) or not 0 <= level < len(widths):
            raise ValueError(f"`attention_levels` must hold level indices in "
                             f"[0, {len(widths) - 1}]. Received: attention_levels="
                             f"{tuple(attention_levels)}")
    if embedding_dims % 2:
        raise ValueError(f"`embedding_dims` must be even. Received: embedding_dims={embedding_dims}")
    if num_classes is not None:
        check_int("num_classes", num_classes)
    if out_channels is not None:
        check_int("out_channels", out_channels)


def build_unet(image_size, channels, widths=(32, 64, 96, 128), blocks_per_level=2,
               attention_levels=(), time_embedding=False, embedding_dims=32, num_classes=None,
               out_channels=None, groups=8, block=DEFAULT_BLOCK, name="unet"):
    """Builds a U-Net, optionally conditioned on diffusion time and class label.

    Args:
        image_size: height and width; divisible by `2 ** (len(widths) - 1)`.
        channels: input channels (1 or 3 for CT slices).
        widths: channels per level, from full resolution down.
        blocks_per_level: `ResidualBlock`s per level on each side of the U.
        attention_levels: level indices (0 = full resolution) that get an `AttentionBlock`
            after each residual block; attention costs `(H * W) ** 2`, so use low resolutions.
        time_embedding: adds a `times` input `(batch,)` float32 in [0, 1].
        embedding_dims: sinusoidal features for the time embedding (even).
        num_classes: adds a `labels` input `(batch,)` int32 in [0, num_classes]; the index
            `num_classes` is the "null" class used for classifier-free guidance.
        out_channels: output channels; default `channels`.
        groups: groups of every `GroupNormalization`; must divide every width.
        block: the `ResidualBlock` variant, one of `BLOCKS`: "fast" (default, one
            normalisation per block) or "classic" (two, the DDPM block).
        name: model name.

    Returns:
        A `keras.Model` with inputs `[images, times?, labels?]` (a single tensor when there is
        only `images`): images `(batch, image_size, image_size, channels)`. Output
        `(batch, image_size, image_size, out_channels or channels)`, float32, linear; the last
        convolution starts at zero, so the untrained network outputs zeros.
    """
    widths, attention_levels = tuple(widths), tuple(attention_levels)
    _validate(image_size, channels, widths, blocks_per_level, attention_levels,
              embedding_dims, num_classes, out_channels, groups)
    check_choice("block", block, BLOCKS)
    images = keras.Input((image_size, image_size, channels), name="images")
    inputs, embedding = _conditioning(images, time_embedding, embedding_dims, num_classes)

    def residual(x, width, block_name):
        layer = ResidualBlock(width, groups, variant=block, name=block_name)
        return layer([x, embedding]) if embedding is not None else layer(x)

    def attention(x, level, block_name):
        return AttentionBlock(groups=groups, name=block_name)(x) if level in attention_levels else x

    x = keras.layers.Conv2D(widths[0], 3, padding="same", name="stem")(images)
    x, skips = _encoder(x, widths, blocks_per_level, residual, attention)
    x = residual(x, widths[-1], "middle_res0")
    x = attention(x, len(widths) - 1, "middle_attn")
    x = residual(x, widths[-1], "middle_res1")
    x = _decoder(x, skips, widths, blocks_per_level, residual, attention)
    outputs = _head(x, out_channels or channels, groups)
    model = keras.Model(inputs if len(inputs) > 1 else images, outputs, name=name)
    logger.info("Built %s: %d px, widths %s, %s block, %s parameters", name, image_size, widths,
                block, f"{model.count_params():,}")
    return model


def _conditioning(images, time_embedding, embedding_dims, num_classes):
    """The model inputs and the summed time/class embedding `(batch, 4 * embedding_dims)`.

    Returns `(inputs, embedding)`: `inputs` is `[images, times?, labels?]`, `embedding` None
    for an unconditional network.
    """
    inputs, embeddings = [images], []
    embedding_width = embedding_dims * EMBEDDING_MLP_FACTOR
    if time_embedding:
        times = keras.Input((), dtype="float32", name="times")
        inputs.append(times)
        t = SinusoidalEmbedding(embedding_dims, name="time_sinusoid")(times)
        t = keras.layers.Dense(embedding_width, activation="swish", name="time_dense1")(t)
        embeddings.append(keras.layers.Dense(embedding_width, name="time_dense2")(t))
    if num_classes is not None:
        labels = keras.Input((), dtype="int32", name="labels")
        inputs.append(labels)
        # num_classes + 1 rows: the last row is the learned "no label" embedding.
        embeddings.append(keras.layers.Embedding(num_classes + 1, embedding_width,
                                                 name="class_embedding")(labels))
    if len(embeddings) == 2:
        return inputs, keras.layers.Add(name="embedding")(embeddings)
    return inputs, (embeddings[0] if embeddings else None)


def _encoder(x, widths, blocks_per_level, residual, attention):
    """The down path: residual (+ attention) blocks per level, average pooling between levels.

    Returns `(x, skips)`, `skips` holding every block's output, deepest last.
    """
    skips = []
    for level, width in enumerate(widths):
        for index in range(blocks_per_level):
            x = residual(x, width, f"down{level}_res{index}")
            x = attention(x, level, f"down{level}_attn{index}")
            skips.append(x)
        if level < len(widths) - 1:
            x = keras.layers.AveragePooling2D(2, name=f"down{level}_pool")(x)
    return x, skips


def _decoder(x, skips, widths, blocks_per_level, residual, attention):
    """The up path: each block concatenates its encoder skip; nearest upsampling + conv."""
    for level in reversed(range(len(widths))):
        for index in range(blocks_per_level):
            x = keras.layers.Concatenate(name=f"up{level}_concat{index}")([x, skips.pop()])
            x = residual(x, widths[level], f"up{level}_res{index}")
            x = attention(x, level, f"up{level}_attn{index}")
        if level > 0:
            x = keras.layers.UpSampling2D(2, interpolation="nearest", name=f"up{level}_upsample")(x)
            x = keras.layers.Conv2D(widths[level - 1], 3, padding="same",
                                    name=f"up{level}_conv")(x)
    return x


def _head(x, out_channels, groups):
    """GroupNorm -> swish -> a zero-initialised float32 conv: a linear output that starts at 0."""
    x = keras.layers.GroupNormalization(groups, name="head_norm")(x)
    x = keras.layers.Activation("swish", name="head_swish")(x)
    # float32: mixed-precision-safe output.
    return keras.layers.Conv2D(out_channels, 3, padding="same", kernel_initializer="zeros",
                               dtype="float32", name="head")(x)
