"""`tf.data` input pipelines: from in-memory arrays, or streamed from image files.

Every dataset yields float32 NHWC batches in [0, 1] (and int32 labels with `with_labels`).
Both transports share one decoding path: a streamed file is read by `load_image` (Pillow or
pydicom, inside `tf.numpy_function` on parallel threads), the function `load_data` reads it
with, so EXIF orientation, alpha compositing, 16-bit and palette images, DICOM windowing and
Pillow's pixel-count limit are the same, and so are the pixels. Before streaming, every
file is checked once (`readable_files`): the ones `load_data` would skip are named in one
warning and left out, so a streamed dataset has a known length (steps per epoch) equal to the
in-memory one. A dataset larger than memory never becomes a Python list of arrays. This
module must not import `lungkit.models`.

Shuffling is a pure function of `(seed, epoch)`: pass `epoch` visits the images in the order
`tf.random.experimental.index_shuffle(range(n), seed=[seed, epoch])`, a stateless permutation,
so a run resumed at epoch `k` in a new process sees the order an uninterrupted run saw. The
epoch comes from an int64 `tf.Variable` read when a pass starts (`dataset.epoch_variable`);
`lungkit.training.fit` sets it at the start of every epoch (`set_shuffle_epoch`).
"""

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import tensorflow as tf

from lungkit.checks import check_int
from lungkit.data.images import list_image_files, load_image, normalize, readable_files
from lungkit.files import data_hash, files_fingerprint

logger = logging.getLogger(__name__)

AUTOTUNE = tf.data.AUTOTUNE
AUTOTUNE_MIN_CORES = 8  # below this, tf.data's autotuner competes with training for the cores


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


def _decode_file(path, image_size):
    """Reads one file (bytes path, `os.fsencode`d) as uint8 `(image_size, image_size, 3)`
    with `load_image`; a file that became unreadable after the check raises naming it."""

    def read(encoded):
        return load_image(os.fsdecode(encoded), size=image_size)

    image = tf.numpy_function(read, [path], tf.uint8, stateful=False)
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
    digest = hashlib.sha1(b"\n".join(os.fsencode(f) for f in files)).hexdigest()[:12]
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
    return normalize(images)  # refuses NaN, infinity and values outside [0, 1]


def make_dataset(images=None, labels=None, *, files=None, batch_size=32, image_size=128,
                 channels=3, shuffle=True, seed=0, cache=None, repeat=False,
                 drop_remainder=False, with_labels=False, epoch_variable=None):
    """Builds a batched, shuffled, prefetched `tf.data.Dataset` of images in [0, 1].

    Give either `images` (in memory) or `files` (streamed). Arrays stay uint8 inside the
    pipeline and are gathered a batch at a time. Files are decoded in parallel by `load_image`
    (the decoder of `load_data`, so the pixels are the same); they are checked once first,
    and those that cannot be read are left out with one warning naming each (see
    `readable_files`), so the dataset's length is known. With `cache` the decoded uint8
    images are cached once and each pass permutes the whole cached set in memory (as a full
    shuffle buffer would hold it).

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
        and `image_count`, the images per pass (for the timing of an epoch). Its
        cardinality is the number of batches per pass (infinite with `repeat`).

    Raises:
        FileNotFoundError: when none of `files` can be read.
    """
    _check_options(images, files, batch_size, image_size, channels, cache)
    seed, epoch, step = _shuffle_state(shuffle, seed, epoch_variable)
    if files is not None:
        files, labels = _split_files(files, labels)
        labels = _check_labels(labels, len(files)) if with_labels else None
        files, labels = _drop_unreadable(files, labels)
        count = len(files)
    else:
        images = _check_arrays(images)
        count = len(images)
        labels = _check_labels(labels, count) if with_labels else None
        if cache is not None:
            logger.info("`cache`=%r ignored: in-memory arrays need no cache.", cache)
    passes = (count, seed, epoch, step, repeat) if shuffle else (count, None, None, None, repeat)
    batch = dict(batch_size=batch_size, drop_remainder=drop_remainder)
    finish = _finisher(channels, image_size)
    if files is None:
        dataset = _array_batches(images, labels, _index_passes(*passes), batch, finish)
        data = images
    else:
        dataset = _file_batches(files, labels, passes, batch, finish, image_size, channels, cache)
        data = np.frombuffer(files_fingerprint(files).encode(), "uint8")
    batches = (tf.data.INFINITE_CARDINALITY if repeat else count // batch_size
               if drop_remainder else -(-count // batch_size))
    # flat_map hides the length; Keras uses it for steps per epoch and progress bars
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(batches))
    dataset = _with_epoch(_bounded(dataset.prefetch(prefetch_depth())), epoch, step)
    # what, besides the data, decides the batches
    options = (batch_size, image_size, channels, shuffle, seed, repeat, drop_remainder,
               with_labels, cache is not None)
    dataset.fingerprint = data_hash(data, np.asarray(labels if with_labels else []),
                                    np.frombuffer(repr(options).encode(), "uint8"))
    dataset.image_count = count
    return dataset


def _check_options(images, files, batch_size, image_size, channels, cache):
    check_int("batch_size", batch_size, 1)
    check_int("image_size", image_size, 1)
    if channels not in (1, 3):
        raise ValueError(f"`channels` must be 1 or 3. Received: channels={channels!r}")
    if (images is None) == (files is None):
        raise ValueError("Pass exactly one of `images` (arrays) or `files` (paths to stream).")
    if cache is not None and not isinstance(cache, (str, Path)):
        raise TypeError(f"`cache` must be None, 'memory' or a path. Received: {cache!r}")


def _shuffle_state(shuffle, seed, epoch_variable):
    """`(seed, epoch, step)` of a shuffled dataset (see `_epoch_variables`); Nones without."""
    if not shuffle:
        return seed, None, None
    if seed is None:
        seed = int(np.random.default_rng().integers(2**31))
        logger.info("Shuffle seed drawn: %d (pass `seed` to repeat this order)", seed)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"`seed` must be an int or None. Received: seed={seed!r}")
    return int(seed), *_epoch_variables(epoch_variable)


def _check_labels(labels, count):
    """int32 `(count,)` labels, for `with_labels`."""
    if labels is None:
        raise ValueError("`with_labels=True` needs `labels` (or (path, label) tuples in "
                         "`files`).")
    labels = np.asarray(labels).astype(np.int32)
    if labels.shape != (count,):
        raise ValueError(f"`labels` must have shape ({count},), one per image. Received "
                         f"shape {labels.shape}")
    return labels


def _drop_unreadable(files, labels):
    """`files` (and `labels`) without the files `load_image` cannot read (one warning)."""
    keep = readable_files(files)
    if not keep.any():
        raise FileNotFoundError(f"None of the {len(files)} files in `files` can be read as an "
                                f"image (each is named in the warning above).")
    files = [path for path, readable in zip(files, keep, strict=True) if readable]
    return files, None if labels is None else labels[keep]


def _index_passes(count, seed, epoch, step, repeat):
    """int64 indices into `count` items, pass after pass: permuted by each pass's epoch
    when `epoch` is given (shuffled), else in order."""
    if epoch is not None:
        return _shuffled_indices(count, seed, epoch, step, repeat)
    indices = tf.data.Dataset.range(count)
    return indices.repeat() if repeat else indices


def _finisher(channels, image_size):
    """The map from a batch (and its labels) to the float32 batch the dataset yields."""

    def finish(batch, batch_labels=None):
        batch = _finish_batch(batch, channels, image_size)
        return batch if batch_labels is None else (batch, batch_labels)

    return finish


def _array_batches(images, labels, indices, batch, finish):
    """Batches of in-memory arrays: a batch of indices, then one gather per batch."""
    images_t = tf.convert_to_tensor(images)
    labels_t = None if labels is None else tf.convert_to_tensor(labels)
    return indices.batch(**batch).map(
        lambda index: finish(tf.gather(images_t, index),
                             None if labels_t is None else tf.gather(labels_t, index)),
        num_parallel_calls=parallelism(), deterministic=True)


def _file_batches(files, labels, passes, batch, finish, image_size, channels, cache):
    """Batches of streamed files, decoded by `load_image`; with `cache`, decoded once."""
    # bytes, not str: a file name that is not valid UTF-8 still reaches load_image intact
    slices = tuple(tf.constant(part) for part in
                   ([os.fsencode(f) for f in files], *([] if labels is None else [labels])))

    def decode(path, *label):
        return (_decode_file(path, image_size), *label)

    if cache is None:
        dataset = _index_passes(*passes).map(
            lambda index: tuple(tf.gather(part, index) for part in slices))
        dataset = dataset.map(decode, num_parallel_calls=parallelism(), deterministic=True)
    else:
        dataset = tf.data.Dataset.from_tensor_slices(slices).map(
            decode, num_parallel_calls=parallelism(), deterministic=True)
        dataset = dataset.cache("" if cache == "memory"
                                else _cache_path(cache, files, image_size, channels))
        count, seed, epoch, step, repeat = passes
        if epoch is not None:
            dataset = _shuffled_cache(dataset, count, seed, epoch, step, repeat)
        elif repeat:
            dataset = dataset.repeat()
    return dataset.batch(**batch).map(finish, num_parallel_calls=parallelism(),
                                      deterministic=True)


def _cores():
    return os.cpu_count() or 1


def parallelism():
    """`num_parallel_calls` of the pipeline's maps: one per core below `AUTOTUNE_MIN_CORES`
    cores, tf.data's AUTOTUNE from there on.

    On small machines the autotuner's own threads compete with training for the cores and
    stall later epochs; a fixed parallelism keeps epoch times flat (docs/results.md).
    """
    return AUTOTUNE if _cores() >= AUTOTUNE_MIN_CORES else _cores()


def prefetch_depth():
    """Batches prefetched: AUTOTUNE on large machines, 2 (one in use, one ready) below."""
    return AUTOTUNE if _cores() >= AUTOTUNE_MIN_CORES else 2


def _bounded(dataset):
    """Turns tf.data's autotuner off below `AUTOTUNE_MIN_CORES` cores (see `parallelism`)."""
    if _cores() >= AUTOTUNE_MIN_CORES:
        return dataset
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


def _with_epoch(dataset, epoch, step):
    """Exposes the shuffle epoch variables on the returned dataset (for `set_shuffle_epoch`)."""
    if epoch is not None:
        dataset.epoch_variable, dataset._shuffle_epoch_step = epoch, step
    return dataset
