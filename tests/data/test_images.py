"""lungkit.data.images: layouts, file order, image modes, DICOM windowing, load_data, info."""

import logging
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from lungkit.data import images as images_module
from lungkit.data.images import (
    CLASS_NAMES,
    LUNG_WINDOW,
    dataset_info,
    find_class_dirs,
    list_image_files,
    load_data,
    load_image,
    normalize,
    read_dicom_hu,
    to_channels,
)

CT_SMALL = get_testdata_file("CT_small.dcm")


def test_class_names_and_labels():
    assert CLASS_NAMES == ("Normal", "Benign", "Malignant")


@pytest.mark.parametrize("top", [(), ("The IQ-OTHNCCD lung cancer dataset",),
                                 ("archive", "The IQ-OTHNCCD lung cancer dataset",
                                  "The IQ-OTHNCCD lung cancer dataset")])
@pytest.mark.parametrize("benign", ["Bengin cases", "Benign cases", "BENIGN CASES"])
def test_layouts_and_spellings(make_iq_dir, top, benign):
    root = make_iq_dir(per_class=2, benign=benign, top=top)
    class_dirs = find_class_dirs(root)
    assert sorted(class_dirs) == [0, 1, 2]
    assert class_dirs[1].name == benign
    images, labels = load_data(root, size=16)
    assert images.shape == (6, 16, 16, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and labels.tolist() == [0, 0, 1, 1, 2, 2]
    # Pixel values identify each file: value = 20 * label + 5 * index (JPEG rounding aside).
    np.testing.assert_allclose(images[:, 8, 8, 0], [5, 10, 25, 30, 45, 50], atol=2)


def test_both_benign_spellings_is_an_error(make_iq_dir):
    root = make_iq_dir(per_class=1)
    (root / "The IQ-OTHNCCD lung cancer dataset" / "Benign cases").mkdir()
    with pytest.raises(ValueError, match="Benign has several folders"):
        find_class_dirs(root)


def test_natural_deterministic_order_and_upper_case_extensions(tmp_path):
    folder = tmp_path / "Normal cases"
    folder.mkdir()
    names = ["Normal case (10).JPG", "Normal case (2).PNG", "Normal case (1).jpeg",
             "normal case (3).Tif", "Normal case (11).BMP"]
    for name in reversed(names):
        Image.new("L", (8, 8), 7).save(folder / name)
    listed = [path.name for path, label in list_image_files(tmp_path)]
    assert listed == ["Normal case (1).jpeg", "Normal case (2).PNG", "normal case (3).Tif",
                      "Normal case (10).JPG", "Normal case (11).BMP"]
    assert list_image_files(tmp_path) == list_image_files(tmp_path)
    images, labels = load_data(tmp_path, size=8)
    assert len(images) == 5 and set(labels.tolist()) == {0}


def test_unreadable_files_skipped_with_one_warning(make_iq_dir, caplog):
    root = make_iq_dir(per_class=2)
    normal = root / "The IQ-OTHNCCD lung cancer dataset" / "Normal cases"
    good = (normal / "Normal case (1).jpg").read_bytes()
    (normal / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (normal / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (normal / "notes.txt").write_text("stray file")
    (normal / ".DS_Store").write_bytes(b"hidden files are ignored silently")
    with caplog.at_level(logging.WARNING, logger="lungkit.data.images"):
        images, labels = load_data(root, size=16)
    assert len(images) == 6 and labels.tolist() == [0, 0, 1, 1, 2, 2]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    for name in ("corrupt.jpg", "truncated.jpg", "notes.txt"):
        assert name in message
    assert ".DS_Store" not in message


def test_missing_and_empty_folders_explain_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*'Bengin cases'"):
        load_data(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="No class folders.*'Normal cases'"):
        load_data(tmp_path)
    (tmp_path / "Normal cases").mkdir()
    with pytest.raises(FileNotFoundError, match="No image files"):
        load_data(tmp_path)


def test_all_files_unreadable_is_an_error(tmp_path):
    (tmp_path / "Normal cases").mkdir()
    (tmp_path / "Normal cases" / "a.jpg").write_bytes(b"junk")
    with pytest.raises(FileNotFoundError, match="None of the 1 image files"):
        load_data(tmp_path)


@pytest.mark.parametrize("classes, expected", [(["benign"], [1, 1, 1]), (["Bengin"], [1, 1, 1]),
                                               (["MALIGNANT", 0], [0, 0, 0, 2, 2, 2]),
                                               ([2], [2, 2, 2])])
def test_classes_by_name_or_label(make_iq_dir, classes, expected):
    root = make_iq_dir(per_class=3)
    assert load_data(root, size=8, classes=classes)[1].tolist() == expected
    assert [label for _, label in list_image_files(root, classes=classes)] == expected


def test_bad_classes_and_limit(make_iq_dir):
    root = make_iq_dir(per_class=3)
    with pytest.raises(ValueError, match="`classes` must be one of .*Received: classes=.cancer."):
        load_data(root, classes=["cancer"])
    with pytest.raises(ValueError, match="`limit` must be an integer >= 1"):
        load_data(root, limit=0)
    images, labels = load_data(root, size=8, limit=2)  # limit is per class
    assert labels.tolist() == [0, 0, 1, 1, 2, 2]
    np.testing.assert_allclose(images[:, 4, 4, 0], [5, 10, 25, 30, 45, 50], atol=2)


def test_missing_requested_class(tmp_path):
    (tmp_path / "Normal cases").mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "Normal cases" / "a.png")
    with pytest.raises(FileNotFoundError, match="No folder for class"):
        load_data(tmp_path, classes=["malignant"])


def test_progress_bar_only_past_threshold(make_iq_dir, monkeypatch):
    root = make_iq_dir(per_class=1)
    calls = []

    def fake_tqdm(iterable, **kwargs):
        calls.append(kwargs["disable"])
        return iterable

    monkeypatch.setattr(images_module, "tqdm", fake_tqdm)
    load_data(root, size=8)
    monkeypatch.setattr(images_module, "PROGRESS_MIN_FILES", 2)
    load_data(root, size=8)
    load_data(root, size=8, progress=False)
    assert calls == [True, False, True]


def test_image_modes_become_rgb_uint8(tmp_path):
    gray = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (16, 1))
    Image.fromarray(gray, "L").save(tmp_path / "gray.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "deep.png")  # 16-bit
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    palette = Image.fromarray(gray, "L").convert("P")
    palette.save(tmp_path / "palette.png")
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., :3], rgba[..., 3] = 200, 255
    rgba[:, :8, 3] = 0  # left half fully transparent -> black
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")

    for name in ("gray.png", "deep.png", "palette.png"):
        image = load_image(tmp_path / name, size=None)
        assert image.shape == (16, 16, 3) and image.dtype == np.uint8
        np.testing.assert_array_equal(image[..., 0], image[..., 2])
        np.testing.assert_allclose(image[0, :, 0], gray[0], atol=1, err_msg=name)
    image = load_image(tmp_path / "rgba.png", size=None)
    assert (image[:, :8] == 0).all() and (image[:, 8:] == 200).all()


def test_resize_is_antialiased(tmp_path):
    checker = (np.indices((64, 64)).sum(axis=0) % 2 * 255).astype(np.uint8)  # 1-px checkerboard
    Image.fromarray(checker).save(tmp_path / "checker.png")
    image = load_image(tmp_path / "checker.png", size=16)
    assert image.shape == (16, 16, 3)
    # Nearest-neighbour would give pure 0/255; a proper low-pass filter gives mid grey.
    assert np.abs(image[2:-2, 2:-2].astype(int) - 127).max() <= 4


def test_load_image_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="`path` is not a file"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="Cannot read image .*bad.png"):
        load_image(tmp_path / "bad.png")
    with pytest.raises(ValueError, match="`size` must be an integer >= 1"):
        load_image(CT_SMALL, size=0)


def test_dicom_hounsfield_units_and_window():
    image_hu = read_dicom_hu(CT_SMALL)
    raw = pydicom.dcmread(CT_SMALL)
    np.testing.assert_allclose(
        image_hu, raw.pixel_array * float(raw.RescaleSlope) + float(raw.RescaleIntercept))
    # A chest CT slice: air outside the body and in the lungs near -1000 HU, tissue near 0.
    assert -1100 < image_hu.min() < -800 and image_hu.max() > 100
    assert np.median(image_hu) > -200  # this slice is mostly soft tissue

    lung = load_image(CT_SMALL, size=None)
    assert lung.shape == (128, 128, 3) and lung.dtype == np.uint8
    center, width = LUNG_WINDOW
    expected = np.clip((image_hu - (center - width / 2)) / width, 0, 1) * 255
    np.testing.assert_allclose(lung[..., 0], np.round(expected), atol=1)
    soft = load_image(CT_SMALL, size=None, window=(40, 400))  # mediastinal window
    assert not np.array_equal(soft, lung)
    # Below -160 HU the soft-tissue window is black; the lung window still shows detail there.
    dark = image_hu < -160
    assert (soft[..., 0][dark] == 0).all() and lung[..., 0][dark].std() > 0
    assert load_image(CT_SMALL, size=32).shape == (32, 32, 3)
    with pytest.raises(ValueError, match="width > 0"):
        load_image(CT_SMALL, window=(0, 0))
    with pytest.raises(ValueError, match="width > 0"):
        load_data(Path(CT_SMALL).parent, window=(-600,))


def test_load_data_reads_a_dicom_folder(tmp_path):
    for folder in ("Normal cases", "Malignant cases"):
        (tmp_path / folder).mkdir()
        shutil.copy(CT_SMALL, tmp_path / folder / "slice (1).DCM")
    images, labels = load_data(tmp_path, size=64, window=(40, 400))
    assert images.shape == (2, 64, 64, 3) and labels.tolist() == [0, 2]
    np.testing.assert_array_equal(images[0], load_image(CT_SMALL, size=64, window=(40, 400)))


def test_normalize_and_to_channels():
    uint8 = np.array([[[[0], [255]]]], np.uint8)
    np.testing.assert_allclose(normalize(uint8), [[[[0.0], [1.0]]]])
    assert normalize(uint8).dtype == np.float32
    assert normalize(np.array([0, 65535], np.uint16)).tolist() == [0.0, 1.0]
    assert normalize(np.array([0.25])).dtype == np.float32
    with pytest.raises(ValueError, match=r"must already be in \[0, 1\]"):
        normalize(np.array([0.0, 255.0]))
    with pytest.raises(TypeError, match="dtype int64"):
        normalize(np.array([1, 2]))

    rgb = np.zeros((2, 4, 4, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 10, 20, 31
    gray = to_channels(rgb, 1)
    assert gray.shape == (2, 4, 4, 1) and gray.dtype == np.uint8 and (gray == 20).all()
    tiled = to_channels(gray, 3)
    assert tiled.shape == (2, 4, 4, 3) and (tiled == 20).all()
    assert to_channels(rgb, 3) is rgb
    with pytest.raises(ValueError, match="`channels` must be 1 or 3"):
        to_channels(rgb, 2)
    with pytest.raises(ValueError, match="last \\(channel\\) axis"):
        to_channels(np.zeros((4, 4, 5)), 1)


def test_dataset_info(make_iq_dir):
    root = make_iq_dir(per_class=2, size=20)
    folder = root / "The IQ-OTHNCCD lung cancer dataset" / "Malignant cases"
    Image.new("RGB", (30, 10)).save(folder / "Malignant case (3).png")
    (folder / "Malignant case (4).jpg").write_bytes(b"broken")
    (folder / "readme.txt").write_text("x")
    info = dataset_info(root)
    assert info["counts"] == {"Normal": 2, "Benign": 2, "Malignant": 3}
    assert info["total"] == 7 and info["files"] == 8
    assert info["sizes"] == {"20x20": 6, "30x10": 1}
    assert info["modes"] == {"L": 6, "RGB": 1}
    assert [p.endswith("Malignant case (4).jpg") for p, _ in info["unreadable"]] == [True]
    assert info["ignored"][0].endswith("readme.txt")
    assert info["copy"] == "unknown/other"


@pytest.mark.parametrize("total, words", [(1190, "original"), (1097, "most papers")])
def test_dataset_info_names_the_copy(tmp_path, total, words):
    # Empty files: cheap to make, counted as image files, reported as unreadable.
    for label, folder in enumerate(("Normal cases", "Bengin cases", "Malignant cases")):
        (tmp_path / folder).mkdir()
        for index in range(label, total, 3):
            (tmp_path / folder / f"case ({index}).jpg").touch()
    info = dataset_info(tmp_path)
    assert info["files"] == total and words in info["copy"]
    assert len(info["unreadable"]) == total


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_normalize_refuses_non_finite_by_name(bad):
    values = np.array([0.0, 0.5, 1.0], np.float32)
    assert normalize(values).tolist() == [0.0, 0.5, 1.0]
    values[1] = bad
    with pytest.raises(ValueError, match=r"`images` must be finite: 1 value\(s\) are NaN"):
        normalize(values)


def test_dicom_non_ct_colour_and_missing_rescale(tmp_path, caplog):
    with pytest.raises(ValueError, match="MR_small.dcm.*Modality 'MR'; lungkit reads CT"):
        read_dicom_hu(get_testdata_file("MR_small.dcm"))
    colour = pydicom.dcmread(CT_SMALL)
    colour.PhotometricInterpretation = "PALETTE COLOR"
    colour.save_as(tmp_path / "colour.dcm")
    with pytest.raises(ValueError, match="PhotometricInterpretation 'PALETTE COLOR'"):
        read_dicom_hu(tmp_path / "colour.dcm")
    bare = pydicom.dcmread(CT_SMALL)
    del bare.RescaleSlope, bare.RescaleIntercept
    bare.save_as(tmp_path / "bare.dcm")
    with caplog.at_level("WARNING", logger="lungkit.data.dicom"):
        image = read_dicom_hu(tmp_path / "bare.dcm")
    assert "bare.dcm has no RescaleSlope or RescaleIntercept" in caplog.text
    np.testing.assert_array_equal(image, bare.pixel_array.astype(np.float32))
    caplog.clear()
    with caplog.at_level("WARNING", logger="lungkit.data.dicom"):
        read_dicom_hu(CT_SMALL)  # a complete CT: no warning
    assert caplog.text == ""
