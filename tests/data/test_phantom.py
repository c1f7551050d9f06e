"""Tests for lungkit.data.phantom: layout, determinism, anatomy sanity, lesions, errors."""

import hashlib

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from lungkit.data.labels import DATASET_FOLDER
from lungkit.data.phantom import (
    CLASS_LAYOUT,
    KINDS,
    make_phantom_dataset,
    make_phantom_slice,
    phantom_hu,
    slice_rng,
    window_hu,
)

EXPECTED_FILES = {
    "Normal cases": ["Normal case (1).jpg", "Normal case (2).jpg"],
    "Bengin cases": ["Bengin case (1).jpg", "Bengin case (2).jpg"],
    "Malignant cases": ["Malignant case (1).jpg", "Malignant case (2).jpg"],
}


def digests(dataset_dir):
    """{relative path: sha256} of every file under the dataset folder."""
    return {str(p.relative_to(dataset_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(dataset_dir.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantom")
    return make_phantom_dataset(root, per_class=2, size=64, seed=3, progress=False), root


def test_layout_and_naming_follow_iq_othnccd(small_set):
    dataset_dir, root = small_set
    assert dataset_dir == root / DATASET_FOLDER
    assert sorted(p.name for p in dataset_dir.iterdir()) == sorted(EXPECTED_FILES)
    for folder, names in EXPECTED_FILES.items():
        assert sorted(p.name for p in (dataset_dir / folder).iterdir()) == names
        for name in names:
            with Image.open(dataset_dir / folder / name) as image:
                assert image.format == "JPEG" and image.size == (64, 64) and image.mode == "L"


def test_same_seed_gives_byte_identical_files(small_set, tmp_path):
    dataset_dir, _ = small_set
    again = make_phantom_dataset(tmp_path, per_class=2, size=64, seed=3, progress=False)
    assert digests(again) == digests(dataset_dir)


def test_other_seed_gives_other_slices(small_set, tmp_path):
    dataset_dir, _ = small_set
    other = digests(make_phantom_dataset(tmp_path, per_class=2, size=64, seed=4, progress=False))
    mine = digests(dataset_dir)
    assert other.keys() == mine.keys()
    assert all(other[key] != mine[key] for key in mine)


def test_slices_within_a_set_differ(small_set):
    dataset_dir, _ = small_set
    assert len(set(digests(dataset_dir).values())) == 6


def test_slice_does_not_depend_on_per_class(small_set, tmp_path):
    dataset_dir, _ = small_set
    one = digests(make_phantom_dataset(tmp_path, per_class=1, size=64, seed=3, progress=False))
    assert one == {key: value for key, value in digests(dataset_dir).items() if "(1)" in key}


def test_rerun_with_fewer_slices_removes_stale_files(tmp_path):
    make_phantom_dataset(tmp_path, per_class=3, size=32, progress=False)
    dataset_dir = make_phantom_dataset(tmp_path, per_class=1, size=32, progress=False)
    (dataset_dir / "Normal cases" / "notes.txt").write_text("mine")
    make_phantom_dataset(tmp_path, per_class=1, size=32, progress=False)
    counts = {folder: sorted(p.name for p in (dataset_dir / folder).iterdir())
              for folder, _ in CLASS_LAYOUT.values()}
    assert counts["Bengin cases"] == ["Bengin case (1).jpg"]
    assert counts["Normal cases"] == ["Normal case (1).jpg", "notes.txt"]  # not ours: kept


@pytest.mark.parametrize("size", [32, 100, 300])
def test_slice_shape_and_dtype(size):
    pixels = make_phantom_slice(np.random.default_rng(0), size=size, kind="benign")
    assert pixels.shape == (size, size) and pixels.dtype == np.uint8


def test_same_generator_state_gives_same_slice():
    first = make_phantom_slice(slice_rng(5, "malignant", 7), size=128, kind="malignant")
    again = make_phantom_slice(slice_rng(5, "malignant", 7), size=128, kind="malignant")
    np.testing.assert_array_equal(first, again)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_intensities_look_like_a_chest_ct(seed):
    image_hu, _, window = phantom_hu(slice_rng(seed, "normal", 1), size=128, kind="normal")
    half = image_hu.shape[1] // 2
    for side in (image_hu[:, :half], image_hu[:, half:]):  # a dark lung on each side
        assert np.mean(side < -700) > 0.04
    assert np.abs(image_hu[:6, :6] - (-1000)).max() < 60  # air in the corners
    body = image_hu[image_hu > -400]
    assert -150 < np.median(body) < 100  # fat and muscle
    assert np.percentile(image_hu, 99.7) > 250  # bone
    pixels = window_hu(image_hu, window)
    assert pixels[:6, :6].mean() < 15  # air shows black
    soft_tissue = (image_hu > -150) & (image_hu < 150)
    assert pixels[image_hu < -750].mean() + 60 < pixels[soft_tissue].mean()


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_lesions_only_where_the_class_says(seed):
    normal_hu, normal_mask, _ = phantom_hu(slice_rng(seed, "normal", 1), size=256, kind="normal")
    assert not normal_mask.any()
    areas = {}
    for kind in ("benign", "malignant"):
        # the same generator gives the same anatomy and noise: only the lesion differs
        image_hu, mask, _ = phantom_hu(slice_rng(seed, "normal", 1), size=256, kind=kind)
        assert mask.any(), kind
        near = ndimage.binary_dilation(mask, iterations=3)
        np.testing.assert_allclose(image_hu[~near], normal_hu[~near], atol=1.0)  # HU
        assert (image_hu - normal_hu)[mask].mean() > 150, kind  # soft tissue replaced lung
        areas[kind] = mask.sum()
    px_mm2 = (360 / 256) ** 2
    assert areas["benign"] * px_mm2 < 2 * np.pi * 7**2  # at most two nodules of <= 6 mm radius
    assert areas["malignant"] * px_mm2 > np.pi * 7**2  # a mass of >= 8 mm radius


def test_window_hu_maps_range_to_uint8():
    image_hu = np.array([[-2000.0, -1000.0, -750.0, 0.0, 1000.0]], dtype=np.float32)
    np.testing.assert_array_equal(window_hu(image_hu, (-500.0, 1000.0)), [[0, 0, 64, 255, 255]])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"per_class": 0}, ValueError, "per_class.*>= 1.*per_class=0"),
        ({"per_class": 2.5}, ValueError, "per_class"),
        ({"size": 16}, ValueError, "size.*>= 32.*size=16"),
        ({"size": "512"}, ValueError, "size"),
        ({"seed": -1}, ValueError, "seed.*>= 0"),
    ],
)
def test_dataset_rejects_bad_arguments(tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        make_phantom_dataset(tmp_path, **{"progress": False, **kwargs})
    assert not (tmp_path / DATASET_FOLDER).exists()


def test_slice_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="kind.*normal.*Received: kind='cancer'"):
        make_phantom_slice(np.random.default_rng(0), size=64, kind="cancer")
    with pytest.raises(TypeError, match="rng.*Generator.*int"):
        make_phantom_slice(0, size=64)
    with pytest.raises(TypeError, match="root"):
        make_phantom_dataset(42)
    with pytest.raises(ValueError, match="width must be > 0"):
        window_hu(np.zeros((2, 2)), (0.0, 0.0))


def test_load_data_reads_the_phantom_set(small_set):
    images_module = pytest.importorskip("lungkit.data.images")
    dataset_dir, root = small_set
    for path in (dataset_dir, root):
        images, labels = images_module.load_data(path, size=32, progress=False)
        assert images.shape == (6, 32, 32, 3) and images.dtype == np.uint8
        np.testing.assert_array_equal(np.bincount(labels), [2, 2, 2])
    assert KINDS == ("normal", "benign", "malignant")  # label order of CLASS_NAMES
