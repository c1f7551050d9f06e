"""Toy image sets shared by the metrics and features tests."""

import numpy as np


def class_images(per_class, size=32, seed=0):
    """Separable toy classes in [0, 1]: horizontal stripes, vertical stripes, a bright disc."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images, labels = [], []
    for label in range(3):
        for _ in range(per_class):
            phase = rng.uniform(0, 2 * np.pi)
            if label == 0:
                pattern = 0.3 * np.sin(2 * np.pi * yy / 8 + phase)
            elif label == 1:
                pattern = 0.3 * np.sin(2 * np.pi * xx / 8 + phase)
            else:
                cy, cx = rng.uniform(8, size - 8, size=2)
                pattern = 0.4 * (((yy - cy) ** 2 + (xx - cx) ** 2) < 25)
            images.append(0.4 + pattern + rng.normal(0, 0.05, (size, size)))
            labels.append(label)
    images = np.clip(np.asarray(images, dtype="float32")[..., None], 0, 1)
    return images, np.asarray(labels)
