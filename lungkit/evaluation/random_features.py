"""Feature spaces that need no training on lung data, so no training split can tune them.

- `RandomCNNFeatures`: a fixed, seeded random convolutional network (He-normal weights,
  never trained); features are the global mean and std of each channel at every stage.
- `TextureFeatures`: radiomics-style statistics in pure numpy: intensity histogram moments
  and GLCM-like co-occurrence statistics (contrast, homogeneity, energy, correlation) at
  offsets 1, 2 and 4 px in two directions.
"""

import keras
import numpy as np

from lungkit.evaluation.common import FeatureExtractor, resize_images

RANDOM_CNN_WIDTHS = (16, 32, 64)
GLCM_LEVELS = 16
GLCM_OFFSETS = ((0, 1), (1, 0), (0, 2), (2, 0), (0, 4), (4, 0))


class RandomCNNFeatures(FeatureExtractor):
    """Seeded random CNN: per stage, channel means and stds of its activations (untrained)."""

    def __init__(self, size, channels, seed=0, widths=RANDOM_CNN_WIDTHS, batch_size=64):
        super().__init__(batch_size)
        self.size, self.channels, self.seed = int(size), int(channels), int(seed)
        self.name = f"random_cnn_s{self.seed}"
        inputs = keras.Input((self.size, self.size, self.channels))
        x, outputs = inputs, []
        for index, width in enumerate(widths):
            init = keras.initializers.HeNormal(seed=self.seed * 100 + index)
            x = keras.layers.Conv2D(width, 3, strides=2, padding="same", activation="relu",
                                    kernel_initializer=init)(x)
            outputs.append(x)
        self.model = keras.Model(inputs, outputs)

    def embed_batch(self, images):
        images = resize_images(images, self.size, self.channels) * 2.0 - 1.0
        stages = self.model(images, training=False)
        parts = []
        for stage in stages:
            stage = keras.ops.convert_to_numpy(stage)
            parts += [stage.mean(axis=(1, 2)), stage.std(axis=(1, 2))]
        return np.concatenate(parts, axis=1)


def _glcm_stats(levels_image, dy, dx, levels=GLCM_LEVELS):
    """Contrast, homogeneity, energy, correlation of one quantized image at offset (dy, dx)."""
    a = levels_image[: levels_image.shape[0] - dy, : levels_image.shape[1] - dx].ravel()
    b = levels_image[dy:, dx:].ravel()
    glcm = np.bincount(a * levels + b, minlength=levels * levels).reshape(levels, levels)
    glcm = glcm + glcm.T
    p = glcm / max(glcm.sum(), 1)
    i, j = np.indices(p.shape)
    mu = (p * i).sum()
    var = (p * (i - mu) ** 2).sum()
    contrast = (p * (i - j) ** 2).sum()
    homogeneity = (p / (1.0 + np.abs(i - j))).sum()
    energy = (p ** 2).sum()
    correlation = ((p * (i - mu) * (j - mu)).sum() / var) if var > 1e-12 else 1.0
    return [contrast, homogeneity, energy, correlation]


class TextureFeatures(FeatureExtractor):
    """Radiomics-style texture features: histogram moments plus GLCM statistics (no weights)."""

    name = "texture"

    def __init__(self, size, levels=GLCM_LEVELS, batch_size=64):
        super().__init__(batch_size)
        self.size, self.levels = int(size), int(levels)

    def embed_batch(self, images):
        gray = resize_images(images, self.size, 1)[..., 0]
        rows = []
        for image in gray:
            mean, std = image.mean(), image.std()
            z = (image - mean) / std if std > 1e-8 else np.zeros_like(image)
            moments = [mean, std, (z ** 3).mean(), (z ** 4).mean(),
                       *np.percentile(image, [10, 50, 90])]
            quantized = np.clip((image * self.levels).astype(int), 0, self.levels - 1)
            glcm = [v for dy, dx in GLCM_OFFSETS for v in _glcm_stats(quantized, dy, dx,
                                                                      self.levels)]
            rows.append(moments + glcm)
        return np.asarray(rows, dtype="float32")
