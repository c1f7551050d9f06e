"""lungkit.data.pipeline: arrays and streamed files give the same float32 [0, 1] batches."""

import ast
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from pydicom.data import get_testdata_file

import lungkit.data.pipeline as pipeline_module
from lungkit.data.images import load_data, load_image
from lungkit.data.pipeline import files_and_labels, make_dataset


def _arrays(count=10, size=8):
    """uint8 images whose pixel value is 10 * index, so batches can be traced back."""
    images = (np.arange(count, dtype=np.uint8) * 10)[:, None, None, None]
    images = np.broadcast_to(images, (count, size, size, 3)).copy()
    return images, np.arange(count) % 3


def _order(dataset):
    """The image indices (pixel value / 10) in iteration order."""
    return [int(round(v * 25.5)) for batch in dataset for v in
            (batch[0] if isinstance(batch, tuple) else batch).numpy()[:, 0, 0, 0]]


def test_arrays_to_float_batches_with_labels():
    images, labels = _arrays()
    dataset = make_dataset(images, labels, batch_size=4, image_size=8, shuffle=False,
                           with_labels=True)
    batches = list(dataset)
    assert [b[0].shape[0] for b in batches] == [4, 4, 2]
    first, first_labels = batches[0]
    assert first.dtype == tf.float32 and first_labels.dtype == tf.int32
    np.testing.assert_allclose(first.numpy(), images[:4] / 255.0, rtol=1e-6)
    assert first_labels.numpy().tolist() == [0, 1, 2, 0]


def test_channels_resize_and_float_input():
    images, _ = _arrays(size=16)
    gray = next(iter(make_dataset(images, batch_size=10, image_size=8, channels=1,
                                  shuffle=False)))
    assert gray.shape == (10, 8, 8, 1)
    np.testing.assert_allclose(gray.numpy()[:, 4, 4, 0], np.arange(10) * 10 / 255.0, atol=1e-6)
    floats = images[..., :1].astype(np.float64) / 255.0
    rgb = next(iter(make_dataset(floats, batch_size=10, image_size=16, channels=3,
                                 shuffle=False)))
    assert rgb.shape == (10, 16, 16, 3) and rgb.dtype == tf.float32
    np.testing.assert_allclose(rgb.numpy(), np.repeat(floats, 3, axis=-1), atol=1e-6)


def test_shuffle_is_seeded_complete_and_reshuffles():
    images, _ = _arrays(count=20)
    order_a = make_dataset(images, batch_size=6, image_size=8, seed=1)
    order_b = make_dataset(images, batch_size=6, image_size=8, seed=1)
    first, second = _order(order_a), _order(order_a)
    assert sorted(first) == list(range(20))  # each image exactly once per pass
    assert first != list(range(20)) and first != second  # shuffled, anew each pass
    assert _order(order_b) == first  # same seed, same order
    assert _order(make_dataset(images, batch_size=6, image_size=8, seed=2)) != first


def test_repeat_and_drop_remainder():
    images, _ = _arrays(count=5)
    dataset = make_dataset(images, batch_size=2, image_size=8, drop_remainder=True)
    assert dataset.element_spec.shape.as_list() == [2, 8, 8, 3]
    assert len(list(dataset)) == 2
    endless = make_dataset(images, batch_size=2, image_size=8, repeat=True, shuffle=False)
    assert _order(endless.take(4)) == [0, 1, 2, 3, 4, 0, 1, 2]


@pytest.fixture
def mixed_dir(make_iq_dir):
    """A dataset with JPGs of distinct values plus a 16-bit PNG and a palette PNG."""
    root = make_iq_dir(per_class=3, size=24)
    folder = root / "The IQ-OTHNCCD lung cancer dataset" / "Normal cases"
    ramp = np.tile(np.linspace(0, 65535, 24).astype(np.uint16), (24, 1))
    Image.fromarray(ramp).save(folder / "Normal case (4).png")
    Image.fromarray((ramp // 257).astype(np.uint8)).convert("P").save(folder / "Normal case (5).png")
    return root


def test_streamed_files_match_load_data(mixed_dir):
    arrays, labels = load_data(mixed_dir, size=16)
    files, file_labels = files_and_labels(mixed_dir)
    assert file_labels.tolist() == labels.tolist() and len(files) == len(arrays) == 11
    dataset = make_dataset(files=files, labels=file_labels, batch_size=4, image_size=16,
                           shuffle=False, with_labels=True)
    streamed = np.concatenate([b.numpy() for b, _ in dataset])
    streamed_labels = np.concatenate([lab.numpy() for _, lab in dataset])
    assert streamed.shape == (11, 16, 16, 3) and streamed_labels.tolist() == labels.tolist()
    np.testing.assert_allclose(streamed, arrays / 255.0, atol=1e-6)  # one decoder: equal


def test_streamed_tuples_shuffle_and_channels(mixed_dir):
    items = [(path, label) for path, label in zip(*files_and_labels(mixed_dir), strict=True)]
    dataset = make_dataset(files=items, batch_size=11, image_size=8, channels=1, seed=3,
                           with_labels=True)
    images, labels = next(iter(dataset))
    assert images.shape == (11, 8, 8, 1)
    assert sorted(labels.numpy().tolist()) == [0] * 5 + [1] * 3 + [2] * 3
    again_images, again_labels = next(iter(make_dataset(
        files=items, batch_size=11, image_size=8, channels=1, seed=3, with_labels=True)))
    np.testing.assert_array_equal(labels, again_labels)
    np.testing.assert_array_equal(images, again_images)


@pytest.mark.parametrize("cache", ["memory", "disk"])
def test_cache(mixed_dir, tmp_path, cache):
    files, labels = files_and_labels(mixed_dir)
    cache_arg = "memory" if cache == "memory" else tmp_path / "cache"
    if cache == "disk":
        cache_arg.mkdir()
    dataset = make_dataset(files=files, labels=labels, batch_size=4, image_size=8, seed=0,
                           cache=cache_arg, with_labels=True)
    passes = [sorted(np.concatenate([lab.numpy() for _, lab in dataset]).tolist())
              for _ in range(2)]
    assert passes[0] == passes[1] == sorted(labels.tolist())
    if cache == "disk":
        written = [p.name for p in cache_arg.iterdir()]
        assert any(name.startswith("lungkit-cache-8px-3ch-") for name in written), written


def test_dicom_and_tiff_files_go_through_load_image(tmp_path):
    ct = get_testdata_file("CT_small.dcm")
    shutil.copy(ct, tmp_path / "slice.dcm")
    Image.new("L", (20, 20), 99).save(tmp_path / "plain.tif")
    files = [tmp_path / "slice.dcm", tmp_path / "plain.tif"]
    batch = next(iter(make_dataset(files=files, batch_size=2, image_size=32, shuffle=False)))
    np.testing.assert_allclose(batch[0].numpy(), load_image(ct, size=32) / 255.0, atol=1e-6)
    np.testing.assert_allclose(batch[1].numpy(), 99 / 255.0, atol=1e-6)


def test_argument_errors():
    images, labels = _arrays()
    with pytest.raises(ValueError, match="exactly one of `images`"):
        make_dataset(images, files=["a.jpg"])
    with pytest.raises(ValueError, match="exactly one of `images`"):
        make_dataset()
    with pytest.raises(ValueError, match="`channels` must be 1 or 3"):
        make_dataset(images, channels=2)
    with pytest.raises(ValueError, match="`batch_size` must be an integer >= 1"):
        make_dataset(images, batch_size=0)
    with pytest.raises(ValueError, match="needs `labels`"):
        make_dataset(images, with_labels=True)
    with pytest.raises(ValueError, match=r"`labels` must have shape \(10,\)"):
        make_dataset(images, labels[:3], with_labels=True)
    with pytest.raises(ValueError, match=r"Float `images` must already be in \[0, 1\]"):
        make_dataset(images.astype(np.float32))
    with pytest.raises(TypeError, match="uint8 .* or float"):
        make_dataset(images.astype(np.int64))
    with pytest.raises(ValueError, match="NHWC array with 1 or 3 channels"):
        make_dataset(np.zeros((2, 4, 4, 2), np.uint8))
    with pytest.raises(ValueError, match="`files` is empty"):
        make_dataset(files=[])
    with pytest.raises(TypeError, match="`cache` must be None"):
        make_dataset(images, cache=True)


def test_data_layer_imports_stay_upstream():
    """pipeline never imports lungkit.models; images/fetch never import TensorFlow."""
    data_dir = Path(pipeline_module.__file__).parent

    def imported(name):
        tree = ast.parse((data_dir / name).read_text())
        return {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names} | {node.module for node in ast.walk(tree)
                                             if isinstance(node, ast.ImportFrom)}

    assert not any(m.startswith(("lungkit.models", "keras")) for m in imported("pipeline.py"))
    for name in ("images.py", "fetch.py"):
        assert not any(m.startswith(("tensorflow", "keras", "lungkit.models"))
                       for m in imported(name))
    assert not any(m.startswith(("urllib", "gdown", "kagglehub", "http"))
                   for name in ("images.py", "pipeline.py") for m in imported(name))


def test_unreadable_streamed_files_are_dropped(make_iq_dir, tmp_path):
    root = make_iq_dir(per_class=2, size=16)
    files, labels = files_and_labels(root)
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "broken.dcm").write_bytes(b"not a dicom")
    for extra in ("broken.jpg", "broken.dcm"):
        dataset = make_dataset(files=[*files, str(tmp_path / extra)], labels=[*labels, 2],
                               batch_size=8, image_size=8, with_labels=True)
        seen = np.concatenate([lab.numpy() for _, lab in dataset])
        assert sorted(seen.tolist()) == sorted(labels.tolist())


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_arrays_refused_by_name(bad):
    images = np.full((2, 8, 8, 1), 0.5, np.float32)
    make_dataset(images, batch_size=2, image_size=8, shuffle=False)  # finite: accepted
    images[1, 3, 3, 0] = bad
    with pytest.raises(ValueError, match=r"`images` must be finite: 1 value\(s\) are NaN"):
        make_dataset(images, batch_size=2, image_size=8, shuffle=False)


@pytest.mark.parametrize("cores, expected", [(2, 2), (7, 7), (8, tf.data.AUTOTUNE)])
def test_parallelism_is_one_map_per_core_and_autotune_only_on_large_machines(
        monkeypatch, cores, expected):
    monkeypatch.setattr(pipeline_module.os, "cpu_count", lambda: cores)
    assert pipeline_module.parallelism() == expected
    dataset = make_dataset(np.zeros((4, 8, 8, 1), "float32"), batch_size=2, image_size=8,
                           channels=1, seed=0)
    assert dataset.options().autotune.enabled is (None if cores >= 8 else False)  # default: on
    assert dataset.fingerprint and len(list(dataset)) == 2  # still the same batches


def _write_zoo(folder):
    """Odd images the loader accepts, each with a left/right or top/bottom pattern."""
    folder.mkdir(parents=True)
    ramp = np.tile(np.linspace(0, 255, 40).astype(np.uint8), (24, 1))  # 24 x 40, not square
    rgb = np.stack([ramp, ramp[::-1], np.full_like(ramp, 90)], axis=-1)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    Image.fromarray(rgb).save(folder / "exif.jpg", exif=exif.tobytes(), quality=95)
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    la = np.stack([ramp, np.where(np.arange(40) < 20, 255, 60).astype(np.uint8)[None]
                   .repeat(24, 0)], axis=-1)
    Image.fromarray(la, "LA").save(folder / "la.png")
    palette = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.save(folder / "palette.png", transparency=0)
    Image.fromarray(ramp.astype(np.uint16) * 257).save(folder / "deep16.png")
    Image.fromarray(ramp, "L").save(folder / "grey.png")
    Image.fromarray(rgb).save(folder / "UPPER.PNG")
    Image.fromarray(rgb).save(folder / "UPPER.JPG", quality=90)
    Image.fromarray(ramp, "L").save(folder / "grey.bmp")
    return sorted(folder.iterdir())


@pytest.mark.parametrize("channels", [1, 3])
def test_streamed_pixels_equal_load_image_over_a_zoo_of_odd_images(tmp_path, channels, caplog):
    files = _write_zoo(tmp_path / "zoo")
    assert Image.open(tmp_path / "zoo" / "cmyk.jpg").mode == "CMYK"
    assert "transparency" in Image.open(tmp_path / "zoo" / "palette.png").info
    dataset = make_dataset(files=files, batch_size=4, image_size=16, channels=channels,
                           shuffle=False)
    streamed = np.concatenate([batch.numpy() for batch in dataset])
    in_memory = np.stack([load_image(path, size=16) for path in files]) / 255.0
    if channels == 1:
        in_memory = in_memory.mean(axis=-1, keepdims=True)
    np.testing.assert_allclose(streamed, in_memory, atol=1e-6)
    assert "Skipped" not in caplog.text
    # EXIF orientation applied (the ramp runs top to bottom once rotated), alpha composited
    exif = load_image(tmp_path / "zoo" / "exif.jpg", size=None)
    assert exif.shape == (40, 24, 3) and int(exif[-1, 0, 0]) > int(exif[0, 0, 0]) + 200
    la = load_image(tmp_path / "zoo" / "la.png", size=None)
    opaque, faded = int(np.linspace(0, 255, 40).astype(np.uint8)[30]), la[0, 30, 0]
    assert abs(int(faded) - round(opaque * 60 / 255)) <= 1  # alpha 60 on black


def test_streamed_and_in_memory_skip_the_same_files_in_one_warning(make_iq_dir, monkeypatch,
                                                                  caplog):
    root = make_iq_dir(per_class=2, size=16)
    folder = root / "The IQ-OTHNCCD lung cancer dataset" / "Normal cases"
    good = (folder / "Normal case (1).jpg").read_bytes()
    (folder / "Normal case (3).jpg").write_bytes(good[: len(good) // 2])  # truncated JPEG
    (folder / "Normal case (4).png").write_bytes(b"not a png")
    Image.new("L", (64, 64), 7).save(folder / "Normal case (5).png")  # over the pixel limit
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4096 px > 2 x limit: refused
    bad = ["Normal case (3).jpg", "Normal case (4).png", "Normal case (5).png"]
    for transport in ("in memory", "streamed"):
        caplog.clear()
        if transport == "in memory":
            images, labels = load_data(root, size=8)
        else:
            files, file_labels = files_and_labels(root)
            dataset = make_dataset(files=files, labels=file_labels, batch_size=2,
                                   image_size=8, with_labels=True, shuffle=False)
            labels = np.concatenate([lab.numpy() for _, lab in dataset])
            assert dataset.cardinality().numpy() == 3 and dataset.image_count == 6
        warnings = [r for r in caplog.records if r.levelname == "WARNING"]
        assert len(warnings) == 1, transport
        assert all(name in warnings[0].getMessage() for name in bad), transport
        assert "DecompressionBomb" in warnings[0].getMessage()
        assert sorted(labels.tolist()) == [0, 0, 1, 1, 2, 2], transport


def test_non_utf8_file_name_streams(tmp_path):
    name = os.fsdecode(b"caf\xe9 case (1).png")  # Latin-1 bytes: not valid UTF-8
    Image.new("L", (8, 8), 120).save(tmp_path / name)
    dataset = make_dataset(files=[tmp_path / name], batch_size=1, image_size=8, shuffle=False,
                           cache="memory")
    np.testing.assert_allclose(next(iter(dataset)).numpy(), 120 / 255, atol=1e-6)
    shuffled = make_dataset(files=[tmp_path / name], batch_size=1, image_size=8, seed=0)
    np.testing.assert_allclose(next(iter(shuffled)).numpy(), 120 / 255, atol=1e-6)


def test_no_readable_file_is_an_error(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"junk")
    with pytest.raises(FileNotFoundError, match="None of the 1 files in `files` can be read"):
        make_dataset(files=[tmp_path / "a.jpg"], batch_size=1, image_size=8)
