"""Synthetic axial chest-CT slices in the IQ-OTH/NCCD layout: lungkit's built-in dataset.

Each slice is drawn in Hounsfield units (HU) on a millimetre grid, then windowed to a grey JPEG
the way IQ-OTH/NCCD slices look (lung-ish window: black air, dark lungs with bright vessels,
grey soft tissue, white bone). Anatomy, front (image top) to back: skin, subcutaneous fat,
chest-wall muscle with ribs and costal cartilage, sternum, two lungs with branching vessels,
the mediastinum (heart and pericardial fat, aorta, pulmonary trunk, vena cava, trachea or main
bronchi, oesophagus), the vertebra with its spinal canal and processes, paraspinal muscles,
scapulae, and the patient table below. A random level from apex to base decides which
mediastinal structures are cut. CT-like noise is white noise blurred with the system's
point-spread function; pose, size and window vary slightly per slice.

Classes follow IQ-OTH/NCCD (Alyasriy et al., Data in Brief 2020): "normal" slices have no
lesion, "benign" ones one or two small smooth round nodules (5-12 mm, some calcified), and
"malignant" ones a larger lobulated mass with spiculations (16-50 mm). Anatomy, lesion and
noise use separate random streams, so a slice of each class drawn with the same generator
shares its anatomy and noise and differs only where the lesion is.

Coordinates: millimetres from the image centre, x towards the patient's left (image right,
radiological convention), y posterior (image down).
"""

import logging
import math
import os
import re
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from lungkit.checks import check_int
from lungkit.data import _phantom_anatomy as anatomy
from lungkit.data._phantom_canvas import Canvas
from lungkit.data.labels import CLASS_NAMES, DATASET_FOLDER, DATASET_SPELLING
from lungkit.files import atomic_path, is_empty_folder, marker_path, read_marker, write_marker

logger = logging.getLogger(__name__)


# kind -> (class folder, file stem), in the dataset's own spelling ("Bengin", sic)
CLASS_LAYOUT = {name.lower(): DATASET_SPELLING[label] for label, name in enumerate(CLASS_NAMES)}
KINDS = tuple(CLASS_LAYOUT)
PHANTOM_VERSION = 1  # in the folder marker: raise it when the drawing changes
MIN_SIZE = 32  # below this the anatomy is no longer recognisable
RENDER_MIN_SIZE = 256  # smaller slices are drawn at this size, then downsampled (antialiasing)
FIELD_OF_VIEW_MM = 360.0  # typical adult chest display field of view
JPEG_QUALITY = 92  # fixed: PIL's encoder is deterministic for fixed settings
# Display window drawn per slice: a lung-ish window whose bottom sits near air, so air is black,
# lungs dark and soft tissue grey, as IQ-OTH/NCCD slices look (cf. the standard lung window,
# level -600 HU and width 1500 HU, which would show air as dark grey).
WINDOW_LOW_RANGE_HU = (-1060.0, -990.0)  # window bottom: air just black
WINDOW_WIDTH_RANGE_HU = (1250.0, 1550.0)
NOISE_STD_RANGE_HU = (45.0, 85.0)  # white noise before the blur (about a third remains after)
BLUR_SIGMA_MM_RANGE = (0.35, 0.5)  # Gaussian point-spread function of a soft/standard kernel
LESION_MASK_COVER = 0.2  # a pixel belongs to the lesion mask above this partial cover
ROTATION_DEG, SCALE_RANGE, SHIFT_MM = 3.0, (0.94, 1.06), 8.0  # per-slice pose jitter


def _check_kind(kind):
    if kind not in CLASS_LAYOUT:
        raise ValueError(f"`kind` must be one of {KINDS}. Received: kind={kind!r}")


def _check_size(size):
    return check_int("size", size, low=MIN_SIZE)


def phantom_hu(rng, size=512, kind="normal"):
    """Draws one synthetic axial chest-CT slice in Hounsfield units, before windowing.

    Args:
        rng: `np.random.Generator`; it is advanced once (three child streams are spawned from it
            for anatomy, lesion and noise).
        size: output side in pixels, >= 32.
        kind: "normal", "benign" or "malignant".

    Returns:
        `(image_hu, lesion_mask, window)`: float32 `(size, size)` HU (about -1000 in air, -860
        in lung, +40 in soft tissue, up to +900 in bone), bool `(size, size)` marking the pixels a
        lesion covers by more than `LESION_MASK_COVER` (all False for "normal"), and the
        display window `(center, width)` in HU drawn for the slice.
    """
    _check_size(size)
    _check_kind(kind)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"`rng` must be a numpy Generator. Received: {type(rng).__name__}")
    anatomy_rng, lesion_rng, noise_rng = rng.spawn(3)
    render_size = max(size, RENDER_MIN_SIZE)
    scale = anatomy_rng.uniform(*SCALE_RANGE)
    canvas = Canvas(
        render_size,
        px_mm=FIELD_OF_VIEW_MM / render_size / scale,
        rotation=math.radians(anatomy_rng.uniform(-ROTATION_DEG, ROTATION_DEG)),
        shift_mm=anatomy_rng.uniform(-SHIFT_MM, SHIFT_MM, size=2),
    )
    low, width = anatomy_rng.uniform(*WINDOW_LOW_RANGE_HU), anatomy_rng.uniform(*WINDOW_WIDTH_RANGE_HU)
    window = (float(low + width / 2), float(width))
    body = anatomy.paint_anatomy(canvas, anatomy_rng)
    lesion = anatomy.paint_lesions(canvas, lesion_rng, body, kind)

    # CT noise: white noise blurred by the point-spread function. Uniform noise is cheaper to
    # draw than normal noise and the blur makes it Gaussian. The lung mask's memory is reused.
    noise = noise_rng.random(dtype=np.float32, out=canvas.lung)
    noise -= np.float32(0.5)
    noise *= canvas.fov
    noise *= np.float32(noise_rng.uniform(*NOISE_STD_RANGE_HU) * math.sqrt(12))
    canvas.hu += noise
    sigma_px = noise_rng.uniform(*BLUR_SIGMA_MM_RANGE) / canvas.px_mm
    # truncate at 2 sigma: 3 taps at 512 px (the tail beyond holds < 2 % of the weight)
    image_hu = ndimage.gaussian_filter(canvas.hu, sigma_px, truncate=2.0, output=noise)
    if render_size != size:
        factor = render_size / size
        image_hu = _downsample(image_hu, size, factor)
        lesion = _downsample(lesion, size, factor)
    lesion_mask = lesion > LESION_MASK_COVER
    return image_hu, lesion_mask, window


def _downsample(image, size, factor):
    """Antialiased resize of a float image: Gaussian prefilter, then bilinear sampling."""
    smooth = ndimage.gaussian_filter(image, 0.45 * factor, truncate=2.0)
    centres = (np.arange(size) + 0.5) * factor - 0.5
    rows, cols = np.meshgrid(centres, centres, indexing="ij")
    return ndimage.map_coordinates(smooth, [rows, cols], order=1, mode="nearest")


def window_hu(image_hu, window):
    """Windows a HU slice to uint8 grey levels.

    Args:
        image_hu: float array `(H, W)` in HU.
        window: `(center, width)` in HU, width > 0.

    Returns:
        uint8 array `(H, W)`: 0 at or below `center - width / 2`, 255 at or above the top.
    """
    center, width = window
    if width <= 0:
        raise ValueError(f"`window` width must be > 0. Received: window={window}")
    scaled = image_hu - np.float32(center - width / 2 - 0.5 * width / 255)  # + 0.5: rounding
    scaled *= np.float32(255.0 / width)
    return np.clip(scaled, 0.0, 255.0, out=scaled).astype(np.uint8)


def make_phantom_slice(rng, size=512, kind="normal"):
    """Draws one windowed synthetic chest-CT slice, as written to the dataset's JPEGs.

    Args:
        rng: `np.random.Generator` (see `phantom_hu`).
        size: side in pixels, >= 32.
        kind: "normal", "benign" or "malignant".

    Returns:
        uint8 array `(size, size)`, grey levels 0 (air) to 255 (bone).
    """
    image_hu, _, window = phantom_hu(rng, size=size, kind=kind)
    return window_hu(image_hu, window)


def slice_rng(seed, kind, index):
    """The generator for slice `index` (1-based) of class `kind`: independent of `per_class`."""
    return np.random.default_rng(np.random.SeedSequence([seed, KINDS.index(kind), index]))


def make_phantom_dataset(root, per_class=40, size=512, seed=0, progress=True):
    """Writes a synthetic chest-CT dataset in the IQ-OTH/NCCD folder layout and file naming.

    Files: `root/"The IQ-OTHNCCD lung cancer dataset"/"Normal cases"/"Normal case (1).jpg"`,
    likewise "Bengin cases"/"Bengin case (i).jpg" (the dataset's own spelling) and
    "Malignant cases"/"Malignant case (i).jpg", for i = 1..per_class: grayscale JPEGs of
    `size` x `size` pixels. The same `seed` gives byte-identical files, and slice i of a class
    is the same whatever `per_class` is. `root` carries a marker (`lungkit.files`) naming the
    settings: called again with the same settings it returns at once; with others it rewrites
    the slices and removes generated files numbered above `per_class`, so the folder holds
    exactly this dataset's slices. A non-empty `root` without the marker (a real dataset, say)
    is refused and left untouched.

    Args:
        root: directory to write into (created if missing).
        per_class: slices per class, >= 1.
        size: image side in pixels, >= 32 (IQ-OTH/NCCD slices are mostly 512).
        seed: non-negative integer.
        progress: show a tqdm progress bar.

    Returns:
        Path of the dataset folder, `root/"The IQ-OTHNCCD lung cancer dataset"` (the folder
        that holds the class folders; `load_data` accepts it or `root`).

    Raises:
        ValueError: bad arguments, or `root` holds files lungkit did not write.
    """
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"`root` must be a str or os.PathLike. Received: {type(root).__name__}")
    settings = {"per_class": check_int("per_class", per_class), "size": _check_size(size),
                "seed": check_int("seed", seed, low=0), "version": PHANTOM_VERSION}
    from tqdm.auto import tqdm

    root = Path(root)
    dataset_dir = root / DATASET_FOLDER
    marker = read_marker(root, "phantom")
    if marker == {**settings, "complete": True} and dataset_dir.is_dir():
        logger.info("Phantom set already in %s (%s)", dataset_dir, settings)
        return dataset_dir
    if marker is None and not is_empty_folder(root):
        raise ValueError(f"`root` {str(root)!r} already holds files that lungkit did not write "
                         f"(no {marker_path(root, 'phantom').name} marker), e.g. a real dataset; "
                         f"nothing was changed. Choose an empty or new folder for the phantom set.")
    write_marker(root, "phantom", {**settings, "complete": False})  # ours from now on
    logger.info("Writing %d phantom slices per class (%d px, seed %d) to %s",
                per_class, size, seed, dataset_dir)
    bar = tqdm(total=per_class * len(KINDS), desc="phantom slices", unit="slice",
               disable=not progress)
    for kind, (folder, stem) in CLASS_LAYOUT.items():
        class_dir = dataset_dir / folder
        class_dir.mkdir(parents=True, exist_ok=True)
        _remove_stale(class_dir, stem, per_class)
        for index in range(1, per_class + 1):
            pixels = make_phantom_slice(slice_rng(seed, kind, index), size=size, kind=kind)
            path = class_dir / f"{stem} ({index}).jpg"
            with atomic_path(path) as partial:  # a kill never leaves a half-written JPEG
                Image.fromarray(pixels).save(partial, format="JPEG", quality=JPEG_QUALITY)
            bar.update()
    bar.close()
    write_marker(root, "phantom", {**settings, "complete": True})
    return dataset_dir


def _remove_stale(class_dir, stem, per_class):
    """Removes slices numbered above `per_class` and the temporary files of a killed run
    (called only in a folder with lungkit's phantom marker, or an empty one)."""
    pattern = re.compile(re.escape(stem) + r" \((\d+)\)\.jpg")
    partial = re.compile(r"\." + re.escape(stem) + r" \(\d+\)\.jpg\..*\.part\.jpg")
    for path in class_dir.iterdir():
        match = pattern.fullmatch(path.name)
        if partial.fullmatch(path.name) or (match and int(match.group(1)) > per_class):
            logger.info("Removing %s left by an earlier phantom run", path)
            path.unlink()
