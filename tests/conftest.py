"""Shared fixtures: tiny CT-like batches and quiet, seeded TensorFlow."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same global seeds (numpy, python, keras/tf if loaded)."""
    import random

    random.seed(0)
    np.random.seed(0)
    import sys

    if "keras" in sys.modules:
        sys.modules["keras"].utils.set_random_seed(0)


@pytest.fixture
def tiny_ct_batch():
    """Four 32x32x3 CT-like images in [0, 1]: a dark disc (lung) in a grey body."""
    size = 32
    yy, xx = np.mgrid[:size, :size]
    images = []
    for shift in range(4):
        body = ((yy - 16) ** 2 / 14**2 + (xx - 16) ** 2 / 12**2) < 1
        lung = ((yy - 15) ** 2 + (xx - 10 - shift) ** 2) < 16
        image = np.where(body, 0.6, 0.05) - 0.5 * lung
        images.append(np.repeat(image[..., None], 3, axis=-1))
    return np.clip(np.asarray(images, dtype="float32"), 0, 1)


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory):
    """A small phantom dataset (4 slices per class, 64 px), built once per session."""
    from lungkit.data.phantom import make_phantom_dataset

    return make_phantom_dataset(tmp_path_factory.mktemp("phantom"), per_class=4, size=64, seed=0)


@pytest.fixture
def make_iq_dir(tmp_path):
    """Factory writing a tiny IQ-OTH/NCCD-style folder of grey JPGs with PIL.

    `make_iq_dir(per_class=3, size=24, benign="Bengin cases", top=("The IQ-OTHNCCD lung
    cancer dataset",), ext=".jpg")` returns the dataset root; pixel values differ per file
    (value = 20 * label + 5 * index) so order and labels can be checked.
    """
    from PIL import Image

    def make(per_class=3, size=24, benign="Bengin cases", top=("The IQ-OTHNCCD lung cancer dataset",),
             ext=".jpg", root=None):
        root = tmp_path / "dataset" if root is None else root
        base = root.joinpath(*top)
        folders = ("Normal cases", benign, "Malignant cases")
        for label, folder in enumerate(folders):
            (base / folder).mkdir(parents=True, exist_ok=True)
            stem = folder[:-1]  # "Normal case"
            for index in range(1, per_class + 1):
                value = 20 * label + 5 * index
                Image.fromarray(np.full((size, size), value, np.uint8)).save(
                    base / folder / f"{stem} ({index}){ext}", quality=95)
        return root

    return make


@pytest.fixture
def dataset_zip(make_iq_dir, tmp_path):
    """A zip of a 2-per-class dataset, with the Kaggle-style top folder."""
    import zipfile

    root = make_iq_dir(per_class=2, size=16)
    archive = tmp_path / "iq.zip"
    with zipfile.ZipFile(archive, "w") as out:
        for path in sorted(root.rglob("*")):
            out.write(path, path.relative_to(root).as_posix())
    return archive
