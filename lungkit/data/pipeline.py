"""`tf.data` input pipelines: from in-memory arrays, or streamed from image files.

Every dataset yields float32 NHWC batches in [0, 1] (and int32 labels with `with_labels`).
Streaming decodes files in parallel with `tf.io` (JPG, PNG, BMP, GIF), so a dataset larger
than memory never becomes a Python list of arrays. DICOM and TIFF cannot be decoded by
`tf.io`: a file list that holds any of them is decoded for all files by `load_image` inside
`tf.numpy_function` (Pillow and pydicom, same pixels as `load_data`, parallel threads but
bound by Python). This module must not import `lungkit.models`.

Shuffling is a pure function of `(seed, epoch)`: pass `epoch` visits the images in the order
`tf.random.experimental.index_shuffle(range(n), seed=[seed, epoch])`, a stateless permutation,
so a run resumed at epoch `k` in a new process sees the order an uninterrupted run saw. The
epoch comes from an int64 `tf.Variable` read when a pass starts (`dataset.epoch_variable`);
`lungkit.training.fit` sets it at the start of every epoch (`set_shuffle_epoch`).
"""

import hashlib
import logging
from pathlib import Path

import numpy as np
import tensorflow as tf

from lungkit.checks import check_finite, check_int
from lungkit.data.images import list_image_files, load_image
from lungkit.files import data_hash, files_fingerprint

logger = logging.getLogger(__name__)

TF_DECODABLE = (".jpg", ".jpeg", ".png", ".bmp", ".gif")  # what tf.io.decode_image reads
AUTOTUNE = tf.data.AUTOTUNE
JPEG_DCT_RATIOS = (1, 2, 4, 8)  # the scales libjpeg can decode at directly


def files_and_labels(data_dir, classes=None):
    """Image files of a dataset folder and their labels, in `list_image_files` order.

    Returns:
        `(files, labels)`: list of str paths and int64 array `(N,)` with values 0..2.
    """
    items = list_image_files(data_dir, classes=classes)
    return [str(path) for path, _ in items], np.array([lab for _, lab in items], dtype=np.int64)


def _resize_uint8(images, image_size):
    """Antialiased Lanczos resize of uint8 `(..., H, W, C)` to `image_size`, back to uint8."""
    resized = tf.image.resize(images, (image_size, image_size), method="lanczos3", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)


def _decode_jpeg_scaled(contents, image_size):
    """Decodes a JPEG at the smallest DCT scale (1, 1/2, 1/4, 1/8) that keeps both sides
    >= image_size, as Pillow's `draft` does in `load_image`: several times faster."""
    shape = tf.io.extract_jpeg_shape(contents)
    smaller_side = tf.reduce_min(shape[:2])
    ratios = JPEG_DCT_RATIOS
    index = tf.reduce_sum(tf.cast(smaller_side // ratios[1:] >= image_size, tf.int32))
    branches = [lambda r=r: tf.io.decode_jpeg(contents, channels=3, ratio=r) for r in ratios]
    return tf.switch_case(index, branches)


def _decode_file_tf(path, image_size):
    """Reads one JPG/PNG/BMP/GIF file as uint8 `(image_size, image_size, 3)`."""
    contents = tf.io.read_file(path)
    image = tf.cond(
        tf.io.is_jpeg(contents),
        lambda: _decode_jpeg_scaled(contents, image_size),
        lambda: tf.io.decode_image(contents, channels=3, dtype=tf.uint8, expand_animations=False))
    # JPEG DCT scaling often lands on image_size exactly (512 / 8 = 64, 512 / 4 = 128): then
    # the Lanczos pass would only copy the pixels, at about half the decode's CPU time.
    shape = tf.shape(image)
    image = tf.cond(tf.logical_and(shape[0] == image_size, shape[1] == image_size),
                    lambda: image, lambda: _resize_uint8(image, image_size))
    image.set_shape((image_size, image_size, 3))
    return image


def _decode_file_numpy(path, image_size):
    """Reads any `load_image` format (DICOM, TIFF, ...) through `tf.numpy_function`."""
    image = tf.numpy_function(lambda p: load_image(p.decode(), size=image_size), [path],
                              tf.uint8, stateful=False)
    image.set_shape((image_size, image_size, 3))
    return image


def _finish_batch(images, channels, image_size):
    """uint8 or float `(B, H, W, C)` -> float32 [0, 1] `(B, image_size, image_size, channels)`."""
    if images.shape[1] != image_size or images.shape[2] != image_size:
        if images.dtype == tf.uint8:
            images = _resize_uint8(images, image_size)
        else:
            images = tf.clip_by_value(tf.image.resize(
                images, (image_size, image_size), method="lanczos3", antialias=True), 0.0, 1.0)
    if images.dtype == tf.uint8:
        images = tf.cast(images, tf.float32) / 255.0
    images = tf.cast(images, tf.float32)
    if images.shape[-1] == 3 and channels == 1:
        images = tf.reduce_mean(images, axis=-1, keepdims=True)
    elif images.shape[-1] == 1 and channels == 3:
        images = tf.repeat(images, 3, axis=-1)
    return images


def _cache_path(cache, files, image_size, channels):
    """A cache file name that changes with the file list and decode settings."""
    digest = hashlib.sha1("\n".join(files).encode()).hexdigest()[:12]
    base = Path(cache)
    if base.is_dir():
        base = base / "lungkit-cache"
    base.parent.mkdir(parents=True, exist_ok=True)
    return f"{base}-{image_size}px-{channels}ch-{digest}"


def _split_files(files, labels):
    """`files` as str paths and labels (from `(path, label)` tuples or `labels`)."""
    files = list(files)
    if files and isinstance(files[0], (tuple, list)):
        if labels is not None:
            raise ValueError("Pass labels either inside `files` as (path, label) tuples or as "
                             "`labels`, not both.")
        files, labels = [str(p) for p, _ in files], [lab for _, lab in files]
    else:
        files = [str(p) for p in files]
    if not files:
        raise ValueError("`files` is empty: no image files to stream.")
    return files, labels


def _epoch_variables(epoch_variable):
    """`(epoch, step)`: the variable a pass reads its epoch from, and the int64 0/1 variable it
    then adds to it (None for a caller's variable, which is only read)."""
    if epoch_variable is not None:
        if (not isinstance(epoch_variable, tf.Variable) or epoch_variable.shape.rank != 0
                or not epoch_variable.dtype.is_integer):
            raise TypeError(f"`epoch_variable` must be a scalar integer tf.Variable. Received: "
                            f"epoch_variable={epoch_variable!r}")
        return epoch_variable, None
    with tf.device("/cpu:0"):  # tf.data reads it on the host, also when GPUs are present
        epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="shuffle_epoch")
        step = tf.Variable(1, dtype=tf.int64, trainable=False, name="shuffle_epoch_step")
    return epoch, step


def _pass_epochs(epoch, step, repeat):
    """int64 epoch number of each pass of one iteration: read from `epoch` (and advanced by
    `step`) once, when the iteration starts; with `repeat`, counting up from there."""

    def start(_):
        if step is None:
            return tf.cast(epoch.read_value(), tf.int64)
        advance = step.read_value()
        return epoch.assign_add(advance) - advance

    first = tf.data.Dataset.range(1).map(start)
    return first.flat_map(tf.data.Dataset.counter) if repeat else first


def _permutation(size, seed, epoch):
    """int64 `(size,)`: the stateless permutation of `range(size)` for `(seed, epoch)`."""
    size = tf.cast(size, tf.int64)
    return tf.random.experimental.index_shuffle(
        tf.range(size), seed=tf.stack([tf.constant(seed, tf.int64), epoch]),
        max_index=tf.maximum(size - 1, 0))


def _shuffled_indices(count, seed, epoch, step, repeat):
    """Dataset of int64 indices into `count` items, each pass permuted by its epoch."""
    return _pass_epochs(epoch, step, repeat).flat_map(
        lambda e: tf.data.Dataset.from_tensor_slices(_permutation(count, seed, e)))


def _shuffled_cache(cached, count, seed, epoch, step, repeat):
    """Each pass of `cached` (decoded tuples, file order) permuted by its epoch.

    A pass loads the whole cached set as one batch (the memory a full shuffle buffer needs)
    and permutes it, so files dropped as unreadable change only the permutation's size.
    """

    def one_pass(pass_epoch):
        def permute(*parts):
            order = _permutation(tf.shape(parts[0])[0], seed, pass_epoch)
            return tuple(tf.gather(part, order) for part in parts)

        return cached.batch(count).map(permute).unbatch()

    return _pass_epochs(epoch, step, repeat).flat_map(one_pass)


def set_shuffle_epoch(dataset, epoch, advance=False):
    """Makes the next pass of a shuffled `make_dataset` dataset use the order of `epoch`.

    Args:
        dataset: a dataset from `make_dataset(shuffle=True)`; others are left alone.
        epoch: int >= 0, the epoch whose order the next pass (each new iterator) takes.
        advance: let each new pass move the epoch on by one, as plain loops need (the default
            of a new dataset); False pins it, so extra iterators (Keras' look-ahead, a
            `take(1)` peek) cannot move it; `lungkit.training.fit` pins it every epoch.

    Returns:
        True if `dataset` has a shuffle epoch (was set), else False.
    """
    variable = getattr(dataset, "epoch_variable", None)
    if variable is None:
        return False
    variable.assign(epoch)
    step = getattr(dataset, "_shuffle_epoch_step", None)  # None: the caller's own variable
    if step is not None:
        step.assign(int(bool(advance)))
    return True


def _check_arrays(images):
    images = np.asarray(images)
    if images.ndim == 3:  # (N, H, W) grayscale
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or len(images) == 0:
        raise ValueError(f"`images` must be a non-empty NHWC array with 1 or 3 channels. "
                         f"Received shape {images.shape}")
    if images.dtype == np.uint8:
        return images
    if not np.issubdtype(images.dtype, np.floating):
        raise TypeError(f"`images` must be uint8 (0..255) or float in [0, 1]. Received dtype "
                        f"{images.dtype}")
    check_finite("images", images)
    if images.min() < 0 or images.max() > 1:
        raise ValueError(f"Float `images` must be in [0, 1]. Received values in "
                         f"[{images.min():g}, {images.max():g}]")
    return images.astype(np.float32)


def make_dataset(images=None, labels=None, *, files=None, batch_size=32, image_size=128,
                 channels=3, shuffle=True, seed=0, cache=None, repeat=False,
                 drop_remainder=False, with_labels=False, epoch_variable=None):
    """Builds a batched, shuffled, prefetched `tf.data.Dataset` of images in [0, 1].

    Give either `images` (in memory) or `files` (streamed). Arrays stay uint8 inside the
    pipeline and are gathered a batch at a time. Files are decoded in parallel (see module
    docstring for DICOM/TIFF) and resized with an antialiased Lanczos filter; files that
    cannot be decoded are dropped with a logged warning (TensorFlow's); with `cache`
    the decoded uint8 images are cached once and each pass permutes the whole cached set
    in memory (as a full shuffle buffer would hold it).

    Shuffling depends on `(seed, epoch)` only (not on TensorFlow's global seed): each pass
    (each new iterator) reads its epoch from `dataset.epoch_variable` when it starts, so
    a run resumed at epoch `k` in a new process sees the order of an uninterrupted run.
    By default every pass also moves the epoch on by one, so plain loops reshuffle each
    pass; `lungkit.training.fit` instead sets the epoch number itself before every epoch
    (`set_shuffle_epoch`), and so should custom loops that resume. A transformed dataset
    (`.map`, `.take`, ...) is a new object without the attribute: give `fit` the dataset
    as returned, or keep the variable and set it yourself.

    Args:
        images: uint8 `(N, H, W, C)` or float `(N, H, W, C)` in [0, 1], C in {1, 3}.
        labels: int `(N,)` class labels, needed for `with_labels` unless `files` holds
            `(path, label)` tuples (as `list_image_files` returns).
        files: list of image paths or `(path, label)` tuples.
        batch_size: images per batch.
        image_size: output side in pixels (arrays of another size are resized).
        channels: 1 (channel mean) or 3.
        shuffle: shuffle the order each pass.
        seed: int shuffle seed; None draws one (logged).
        cache: None, "memory", or a path prefix / folder for an on-disk cache of decoded files
            (the file name includes size, channels and a hash of the file list).
        repeat: repeat forever (then pass `steps_per_epoch` to `fit`).
        drop_remainder: drop a last, smaller batch (gives a static batch dimension).
        with_labels: yield `(images, labels)` with int32 labels instead of `images` alone.
        epoch_variable: with `shuffle`, a scalar integer `tf.Variable` (on the CPU) that you
            set to the epoch number before each pass; the dataset only reads it. None: the
            dataset makes its own int64 one, starting at 0 and advanced by one per pass.
            Either way it is `dataset.epoch_variable`. With `repeat`, one iterator reads
            it once and numbers its passes on from there, so a resumed run matches an
            uninterrupted one when each epoch is one pass (`steps_per_epoch * batch_size`
            equal to the image count).

    Returns:
        `tf.data.Dataset` of float32 `(B, image_size, image_size, channels)` in [0, 1]
        (and int32 `(B,)`). With `shuffle`, it has the attribute `epoch_variable`; always
        `fingerprint`, a hash of the data (array bytes, or file names, sizes and times) and
        of the options above, by which `lungkit.training.fit` recognises a finished run,
        and `image_count`, the images per pass (for the timing of an epoch).
    """
    check_int("batch_size", batch_size, 1)
    check_int("image_size", image_size, 1)
    if channels not in (1, 3):
        raise ValueError(f"`channels` must be 1 or 3. Received: channels={channels!r}")
    if (images is None) == (files is None):
        raise ValueError("Pass exactly one of `images` (arrays) or `files` (paths to stream).")
    if cache is not None and not isinstance(cache, (str, Path)):
        raise TypeError(f"`cache` must be None, 'memory' or a path. Received: {cache!r}")
    epoch = step = None
    if shuffle:
        if seed is None:
            seed = int(np.random.default_rng().integers(2**31))
            logger.info("Shuffle seed drawn: %d (pass `seed` to repeat this order)", seed)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"`seed` must be an int or None. Received: seed={seed!r}")
        seed = int(seed)
        epoch, step = _epoch_variables(epoch_variable)
    if files is not None:
        files, labels = _split_files(files, labels)
    else:
        images = _check_arrays(images)
    count = len(files) if files is not None else len(images)
    # what, besides the data, decides the batches: part of `dataset.fingerprint`
    options = (batch_size, image_size, channels, shuffle, seed, repeat, drop_remainder,
               with_labels, cache is not None)
    if with_labels:
        if labels is None:
            raise ValueError("`with_labels=True` needs `labels` (or (path, label) tuples in "
                             "`files`).")
        labels = np.asarray(labels).astype(np.int32)
        if labels.shape != (count,):
            raise ValueError(f"`labels` must have shape ({count},), one per image. Received "
                             f"shape {labels.shape}")

    def finish(batch, batch_labels=None):
        batch = _finish_batch(batch, channels, image_size)
        return batch if batch_labels is None else (batch, batch_labels)

    if files is None:
        if cache is not None:
            logger.info("`cache`=%r ignored: in-memory arrays need no cache.", cache)
        images_t = tf.convert_to_tensor(images)
        labels_t = tf.convert_to_tensor(labels) if with_labels else None
        if shuffle:
            dataset = _shuffled_indices(count, seed, epoch, step, repeat)
        else:
            dataset = tf.data.Dataset.range(count)
            dataset = dataset.repeat() if repeat else dataset
        dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
        dataset = dataset.map(
            lambda index: finish(tf.gather(images_t, index),
                                 None if labels_t is None else tf.gather(labels_t, index)),
            num_parallel_calls=AUTOTUNE, deterministic=True)
        batches = (tf.data.INFINITE_CARDINALITY if repeat else count // batch_size
                   if drop_remainder else -(-count // batch_size))
        # flat_map hides the length; Keras uses it for progress bars and epoch ends
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(batches))
        dataset = _with_epoch(dataset.prefetch(AUTOTUNE), epoch, step)
        dataset.fingerprint = data_hash(images, np.asarray(labels if with_labels else []),
                                        np.frombuffer(repr(options).encode(), "uint8"))
        dataset.image_count = count
        return dataset

    native = all(Path(f).suffix.lower() in TF_DECODABLE for f in files)
    decode_file = _decode_file_tf if native else _decode_file_numpy
    if not native:
        logger.info("Decoding %d files with load_image via tf.numpy_function (DICOM/TIFF "
                    "present; tf.io cannot read them).", count)
    slices = (files, labels) if with_labels else (files,)
    dataset = tf.data.Dataset.from_tensor_slices(slices)

    def decode(path, label=None):
        image = decode_file(path, image_size)
        return (image,) if label is None else (image, label)

    if cache is None:
        if shuffle:
            items = tuple(tf.constant(part) for part in slices)
            dataset = _shuffled_indices(count, seed, epoch, step, repeat).map(
                lambda index: tuple(tf.gather(part, index) for part in items))
        # Unreadable files are dropped with a logged warning, as load_data skips them.
        dataset = dataset.map(decode, num_parallel_calls=AUTOTUNE, deterministic=True)
        dataset = dataset.ignore_errors(log_warning=True)
    else:
        dataset = dataset.map(decode, num_parallel_calls=AUTOTUNE, deterministic=True)
        dataset = dataset.ignore_errors(log_warning=True).cache("" if cache == "memory"
                                else _cache_path(cache, files, image_size, channels))
        if shuffle:
            dataset = _shuffled_cache(dataset, count, seed, epoch, step, repeat)
    if repeat and not shuffle:  # shuffled passes repeat by themselves
        dataset = dataset.repeat()
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    dataset = dataset.map(finish, num_parallel_calls=AUTOTUNE, deterministic=True)
    dataset = _with_epoch(dataset.prefetch(AUTOTUNE), epoch, step)
    dataset.fingerprint = data_hash(np.frombuffer(files_fingerprint(files).encode(), "uint8"),
                                    np.asarray(labels if with_labels else []),
                                    np.frombuffer(repr(options).encode(), "uint8"))
    dataset.image_count = count  # files that fail to decode are dropped from the batches
    return dataset


def _with_epoch(dataset, epoch, step):
    """Exposes the shuffle epoch variables on the returned dataset (for `set_shuffle_epoch`)."""
    if epoch is not None:
        dataset.epoch_variable, dataset._shuffle_epoch_step = epoch, step
    return dataset
