"""Reading CT slices: the IQ-OTH/NCCD folder layout, single images (JPG/PNG/.../DICOM), arrays.

Owns where a dataset's class folders are (their names: `lungkit.data.labels`), the order files are read
in, how any image file becomes an RGB uint8 array of a given size (Chen, 2024 resizes every
slice to 128x128 RGB), and `dataset_info` for `lungkit data info`. DICOM reading and HU
windowing live in `lungkit.data.dicom`; `LUNG_WINDOW`, `read_dicom_hu` and `window_to_uint8`
are re-exported here.

The IQ-OTH/NCCD dataset (Alyasriy & Al-Huseiny, 2020; Kaggle
`hamdallak/the-iqothnccd-lung-cancer-dataset`) is laid out as::

    The IQ-OTHNCCD lung cancer dataset/
        Bengin cases/      "Bengin case (1).jpg", ...   (the dataset's own spelling)
        Malignant cases/   "Malignant case (1).jpg", ...
        Normal cases/      "Normal case (1).jpg", ...
"""

import collections
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from tqdm.auto import tqdm

from lungkit.checks import check_finite, check_optional_int
from lungkit.data.dicom import (
    LUNG_WINDOW,
    check_window,
    describe_dicom,
    is_dicom,
    read_dicom_hu,
    window_to_uint8,
)
from lungkit.data.labels import CLASS_FOLDERS, CLASS_NAMES, DATASET_FOLDER, class_label

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".dcm")
PROGRESS_MIN_FILES = 200  # show a progress bar when reading more files than this
CHECK_SIZE = 8  # px `readable_files` decodes at: JPEGs then decode at 1/8 scale (DCT scaling)
MAX_SEARCH_DEPTH = 4  # dest/<kaggle link>/<top folder>/<top folder again>/<class folders>
# Known copies of IQ-OTH/NCCD by slice count: the original release (110 cases) has 1190
# slices; the Kaggle copy most papers use has 1097 (416 normal, 120 benign, 561 malignant).
KNOWN_COPIES = {1190: "original IQ-OTH/NCCD release (1190 slices)",
                1097: "IQ-OTH/NCCD copy most papers use (1097 slices)"}
EXPECTED_LAYOUT = (
    f"expected class folders 'Normal cases', 'Bengin cases' (or 'Benign cases') and "
    f"'Malignant cases' holding {'/'.join(IMAGE_EXTENSIONS)} files, either directly in the "
    f"directory or below it (e.g. in '{DATASET_FOLDER}/', nested up to {MAX_SEARCH_DEPTH} levels)"
)


def natural_key(text):
    """Sort key that orders embedded numbers by value: "case (2)" before "case (10)"."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


def _class_folders_in(directory):
    """`{label: [folders]}` for the class folders directly inside `directory`."""
    found = collections.defaultdict(list)
    for child in sorted(directory.iterdir(), key=lambda p: natural_key(p.name)):
        if child.is_dir():
            for label, names in CLASS_FOLDERS.items():
                if child.name.strip().lower() in names:
                    found[label].append(child)
    return dict(found)


def find_class_dirs(data_dir):
    """Finds the class folders of an IQ-OTH/NCCD-style dataset.

    Looks in `data_dir` itself, then breadth-first below it (skipping hidden folders and
    `__MACOSX`) up to `MAX_SEARCH_DEPTH` levels, and takes the shallowest folder that holds
    any class folder, so a zip extracted with one or two extra top folders still works.

    Returns:
        dict `{label: Path}` for the classes present.

    Raises:
        FileNotFoundError: if `data_dir` is missing or holds no class folders.
        ValueError: if one class has two folders (e.g. both "Bengin cases" and "Benign cases").
    """
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"`data_dir` does not exist or is not a directory: {str(root)!r}; "
                                f"{EXPECTED_LAYOUT}.")
    level = [root]
    for _ in range(MAX_SEARCH_DEPTH + 1):
        for directory in level:
            found = _class_folders_in(directory)
            if found:
                for label, folders in found.items():
                    if len(folders) > 1:
                        raise ValueError(f"{CLASS_NAMES[label]} has several folders in "
                                         f"{str(directory)!r}: {[f.name for f in folders]}; keep one.")
                return {label: folders[0] for label, folders in sorted(found.items())}
        level = [child for directory in level
                 for child in sorted(directory.iterdir(), key=lambda p: natural_key(p.name))
                 if child.is_dir() and not child.name.startswith(".") and child.name != "__MACOSX"]
    raise FileNotFoundError(f"No class folders found in {str(root)!r}: {EXPECTED_LAYOUT}.")


def _scan_folder(folder):
    """(image files, other files) below `folder`, each in natural order; hidden files skipped."""
    images, others = [], []
    for current, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for filename in filenames:
            if filename.startswith("."):
                continue
            path = Path(current, filename)
            (images if path.suffix.lower() in IMAGE_EXTENSIONS else others).append(path)
    key = lambda p: natural_key(p.relative_to(folder).as_posix())  # noqa: E731
    return sorted(images, key=key), sorted(others, key=key)


def _resolve_classes(class_dirs, classes):
    labels = sorted(class_dirs) if classes is None else sorted({class_label(c, "classes") for c in classes})
    missing = [CLASS_NAMES[label] for label in labels if label not in class_dirs]
    if classes is not None and missing:
        raise FileNotFoundError(f"No folder for class(es) {missing} (from `classes`={classes!r}); "
                                f"{EXPECTED_LAYOUT}.")
    if classes is None and len(labels) < len(CLASS_NAMES):
        logger.warning("Only classes %s found in the dataset.", [CLASS_NAMES[i] for i in labels])
    return labels


def _list_files(data_dir, classes=None):
    class_dirs = find_class_dirs(data_dir)
    files, others = [], []
    for label in _resolve_classes(class_dirs, classes):
        images, rest = _scan_folder(class_dirs[label])
        files.extend((path, label) for path in images)
        others.extend(rest)
    return files, others


def list_image_files(data_dir, classes=None):
    """Lists a dataset's image files with their labels, in a fixed order.

    Order: by label (0 Normal, 1 Benign, 2 Malignant), then by path in natural order
    ("case (2)" before "case (10)"). Files with other extensions and hidden files are left out.

    Args:
        data_dir: the dataset folder (see `find_class_dirs` for the layouts accepted).
        classes: optional iterable of class names (case-insensitive, "bengin" accepted) or
            labels 0..2; labels keep their global values (Malignant stays 2).

    Returns:
        list of `(Path, label)` tuples.
    """
    return _list_files(data_dir, classes)[0]


def _pil_to_gray_or_rgb(image):
    """Converts any PIL image to mode "L" (grayscale sources) or "RGB" (colour sources)."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit data (or 32-bit ints holding it): full 0..65535 range -> 0..255.
        pixels = np.asarray(image, dtype=np.float64)
        return Image.fromarray(np.round(np.clip(pixels / 257.0, 0, 255)).astype(np.uint8), "L")
    if image.mode == "F":
        pixels = np.asarray(image, dtype=np.float64)
        if pixels.min() < 0 or pixels.max() > 1:  # arbitrary floats: stretch to full range
            pixels = (pixels - pixels.min()) / max(pixels.max() - pixels.min(), 1e-12)
        return Image.fromarray(np.round(pixels * 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Transparent pixels become black, the background of a CT slice.
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float64)
        rgb = rgba[..., :3] * (rgba[..., 3:] / 255.0)
        image = Image.fromarray(np.round(rgb).astype(np.uint8), "RGB")
    if image.mode in ("1", "L"):
        return image.convert("L")
    return image.convert("RGB")


def load_image(path, size=128, window=None):
    """Reads one image file as an RGB uint8 array, resized like the paper's slices.

    JPG/PNG/BMP/TIFF go through Pillow: grayscale, palette, RGBA (composited on black) and
    16-bit images all become RGB uint8. DICOM (`.dcm`) slices are read with pydicom, rescaled
    to Hounsfield units with RescaleSlope/RescaleIntercept and windowed. The resize is
    antialiased (Lanczos) and ignores the aspect ratio, as the paper's square resize does.

    Args:
        path: image file.
        size: output side in pixels, or None to keep the file's own size.
        window: `(center, width)` in HU for DICOM files; default `LUNG_WINDOW` (-600, 1500).
            Ignored for other formats, whose pixels are already display values.

    Returns:
        uint8 array `(size, size, 3)` (or `(H, W, 3)` when `size` is None).

    Raises:
        FileNotFoundError: if `path` does not exist.
        ValueError: if the file cannot be decoded (corrupt, truncated, not an image).
    """
    path = Path(path)
    size = check_optional_int("size", size)
    if not path.is_file():
        raise FileNotFoundError(f"`path` is not a file: {str(path)!r}")
    if window is not None:
        check_window(window)
    try:
        if is_dicom(path):
            gray = window_to_uint8(read_dicom_hu(path), LUNG_WINDOW if window is None else window)
            image = Image.fromarray(gray, "L")
        else:
            with Image.open(path) as opened:
                if size is not None and opened.format == "JPEG":
                    # Decode JPEGs at 1/2, 1/4 or 1/8 scale (DCT scaling) while the result stays
                    # >= size: less work, itself low-pass; Lanczos does the rest.
                    opened.draft(opened.mode, (int(size), int(size)))
                opened.load()  # decode now: truncated files fail here, inside the try
                image = _pil_to_gray_or_rgb(opened)
        if size is not None and image.size != (size, size):
            image = image.resize((int(size), int(size)), Image.Resampling.LANCZOS)
        pixels = np.asarray(image, dtype=np.uint8)
    except Exception as error:  # PIL/pydicom raise OSError, SyntaxError, struct.error, ...
        raise ValueError(f"Cannot read image {str(path)!r}: {type(error).__name__}: {error}") \
            from error
    return np.repeat(pixels[..., None], 3, axis=-1) if pixels.ndim == 2 else pixels


def _warn_skipped(unreadable, others=()):
    if not unreadable and not others:
        return
    lines = [f"  {path}: {reason}" for path, reason in unreadable]
    lines += [f"  {path}: not an image file (extension not in {IMAGE_EXTENSIONS})"
              for path in others]
    logger.warning("Skipped %d file(s) that could not be read as images:\n%s",
                   len(lines), "\n".join(lines))


def _read_files(paths, size, window, workers, progress, desc):
    """Decodes `paths` with `load_image` on parallel threads (Pillow releases the GIL).

    Yields `(index, pixels, reason)` in file order: `pixels` is None for a file that cannot
    be read and `reason` says why (None for readable files).
    """

    def read(path):
        try:
            return load_image(path, size=size, window=window), None
        except ValueError as error:
            return None, str(error).split(": ", 1)[-1]

    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = tqdm(pool.map(read, paths), total=len(paths), desc=desc, unit="img",
                       disable=not progress or len(paths) <= PROGRESS_MIN_FILES)
        for index, (pixels, reason) in enumerate(results):
            yield index, pixels, reason


def readable_files(paths, window=None, workers=None, progress=True):
    """Which of `paths` `load_image` can read, by decoding each one (at a tiny size).

    The streamed pipeline checks its files with this before training, so it skips exactly
    the files `load_data` skips (corrupt, truncated, over Pillow's pixel-count limit, not
    an image) with the same single warning naming each, and knows its length in advance.
    JPEGs decode at 1/8 scale here, so the check costs a fraction of an epoch's decoding.

    Returns:
        bool array `(len(paths),)`, True for readable files.
    """
    if window is not None:
        check_window(window)
    readable, unreadable = np.zeros(len(paths), dtype=bool), []
    for index, pixels, reason in _read_files(paths, CHECK_SIZE, window, workers, progress,
                                             "Checking images"):
        readable[index] = pixels is not None
        if pixels is None:
            unreadable.append((paths[index], reason))
    _warn_skipped(unreadable)
    return readable


def load_data(data_dir, size=128, classes=None, limit=None, progress=True, window=None,
              workers=None):
    """Loads an IQ-OTH/NCCD-style dataset into memory.

    Files that cannot be read (corrupt, truncated, stray non-image files in a class folder)
    are skipped with one warning that names every one of them.

    Args:
        data_dir: dataset folder (see `find_class_dirs`).
        size: side of the square output images in pixels.
        classes: optional class names or labels to load (see `list_image_files`).
        limit: optional maximum number of files read **per class** (the first ones in order).
        progress: show a tqdm progress bar when more than `PROGRESS_MIN_FILES` files are read.
        window: `(center, width)` HU window for DICOM files (default `LUNG_WINDOW`).
        workers: decoding threads (default: up to 8, one per CPU).

    Returns:
        `(images, labels)`: uint8 `(N, size, size, 3)` and int64 `(N,)` with values 0..2.

    Raises:
        FileNotFoundError: missing directory, no class folders, or no readable image.
    """
    limit = check_optional_int("limit", limit)  # files per class
    if window is not None:
        check_window(window)
    files, others = _list_files(data_dir, classes)
    if limit is not None:  # the first `limit` files of each class
        files = [item for label in sorted({lab for _, lab in files})
                 for item in [f for f in files if f[1] == label][:limit]]
    if not files:
        raise FileNotFoundError(f"No image files found in the class folders of "
                                f"{str(data_dir)!r}; {EXPECTED_LAYOUT}.")
    images = np.empty((len(files), size, size, 3), dtype=np.uint8)
    keep, unreadable = np.zeros(len(files), dtype=bool), []
    for index, pixels, reason in _read_files([path for path, _ in files], size, window,
                                             workers, progress, "Loading images"):
        if pixels is None:
            unreadable.append((files[index][0], reason))
        else:
            images[index], keep[index] = pixels, True
    _warn_skipped(unreadable, others)
    if not keep.any():
        raise FileNotFoundError(f"None of the {len(files)} image files in {str(data_dir)!r} "
                                f"could be read.")
    labels = np.array([label for _, label in files], dtype=np.int64)[keep]
    logger.info("Loaded %d images of %dx%d from %s (per class: %s).", int(keep.sum()), size, size,
                data_dir, {CLASS_NAMES[k]: int(v) for k, v in
                           zip(*np.unique(labels, return_counts=True), strict=True)})
    return images[keep], labels


def normalize(images):
    """Scales images to float32 in [0, 1].

    Args:
        images: uint8 (0..255), uint16 (0..65535), bool, or float already in [0, 1].

    Returns:
        float32 array of the same shape in [0, 1].
    """
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 255.0
    if images.dtype == np.uint16:
        return images.astype(np.float32) / 65535.0
    if images.dtype == bool:
        return images.astype(np.float32)
    if np.issubdtype(images.dtype, np.floating):
        check_finite("images", images)
        if images.size and (images.min() < 0 or images.max() > 1):
            raise ValueError(f"Float `images` must already be in [0, 1]. Received values in "
                             f"[{images.min():g}, {images.max():g}]")
        return images.astype(np.float32)
    raise TypeError(f"`images` must be uint8, uint16, bool or float. Received dtype {images.dtype}")


def to_channels(images, channels):
    """Converts images `(..., H, W, C)` with C in {1, 3} to `channels` (1 or 3).

    3 -> 1 averages the channels (rounded for integer dtypes); 1 -> 3 repeats the channel.
    The dtype is kept; an array that already has `channels` is returned unchanged.
    """
    images = np.asarray(images)
    if channels not in (1, 3):
        raise ValueError(f"`channels` must be 1 or 3. Received: channels={channels!r}")
    if images.ndim < 3 or images.shape[-1] not in (1, 3):
        raise ValueError(f"`images` must have a last (channel) axis of 1 or 3. Received shape "
                         f"{images.shape}")
    if images.shape[-1] == channels:
        return images
    if channels == 3:
        return np.repeat(images, 3, axis=-1)
    mean = images.mean(axis=-1, keepdims=True, dtype=np.float64)
    if np.issubdtype(images.dtype, np.integer):
        mean = np.round(mean)
    return mean.astype(images.dtype)


def _inspect(path):
    """`(size "WxH", mode, error)` for one file, decoding it fully to catch truncation."""
    try:
        if is_dicom(path):
            return (*describe_dicom(path), None)
        with Image.open(path) as image:
            image.load()
            return f"{image.width}x{image.height}", image.mode, None
    except Exception as error:  # any decoder failure means "unreadable"
        reason = str(error).replace(repr(str(path)), "the file").replace(str(path), "the file")
        return None, None, f"{type(error).__name__}: {reason}"


def dataset_info(data_dir, workers=None):
    """Summarises a dataset folder without resizing anything (for `lungkit data info`).

    Returns:
        dict with `root` (the folder holding the class folders), `class_dirs`, `counts`
        (readable images per class name), `total`, `files` (image files found), `sizes`
        (`{"WxH": count}`), `modes` (`{"L": count, ...}`), `extensions`, `unreadable`
        (`[[path, reason], ...]`), `ignored` (non-image files in class folders) and `copy`
        (which IQ-OTH/NCCD copy the file count matches, or "unknown/other").
    """
    class_dirs = find_class_dirs(data_dir)
    files, others = _list_files(data_dir)
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(_inspect, [path for path, _ in files]))
    counts = collections.Counter({CLASS_NAMES[label]: 0 for label in class_dirs})
    sizes, modes, unreadable = collections.Counter(), collections.Counter(), []
    for (path, label), (size, mode, error) in zip(files, results, strict=True):
        if error:
            unreadable.append([str(path), error])
            continue
        counts[CLASS_NAMES[label]] += 1
        sizes[size] += 1
        modes[mode] += 1
    return {
        "root": str(next(iter(class_dirs.values())).parent),
        "class_dirs": {CLASS_NAMES[k]: str(v) for k, v in class_dirs.items()},
        "counts": dict(counts),
        "total": sum(counts.values()),
        "files": len(files),
        "sizes": dict(sizes.most_common()),
        "modes": dict(modes.most_common()),
        "extensions": dict(collections.Counter(p.suffix.lower() for p, _ in files).most_common()),
        "unreadable": unreadable,
        "ignored": [str(p) for p in others],
        "copy": KNOWN_COPIES.get(len(files), "unknown/other"),
    }
