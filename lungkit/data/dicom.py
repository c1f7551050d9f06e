"""DICOM CT slices: reading Hounsfield units with pydicom and windowing them for display.

Owns the lung window and the HU -> uint8 mapping that `lungkit.data.images.load_image` applies
to `.dcm` files (Chen, 2024 works on already-windowed JPEGs; DICOM is for users' own scans).
pydicom is imported inside the functions, so only DICOM users pay for it.
"""

import logging
from pathlib import Path

import numpy as np

# Lung window (center, width) in HU: level -600, width 1500, the usual chest-CT lung window
# (Radiopaedia, "Windowing (CT)"); it spans -1350..150 HU.
LUNG_WINDOW = (-600.0, 1500.0)

logger = logging.getLogger(__name__)


def is_dicom(path):
    """Whether `path` names a DICOM file (by its `.dcm` extension)."""
    return Path(path).suffix.lower() == ".dcm"


def check_window(window):
    """Returns `window` as floats `(center, width)`; ValueError unless `width > 0`."""
    try:
        center, width = (float(v) for v in window)
    except (TypeError, ValueError):
        center, width = 0.0, 0.0
    if not width > 0:
        raise ValueError(f"`window` must be (center, width) in HU with width > 0. "
                         f"Received: window={window!r}")
    return center, width


def window_to_uint8(image_hu, window=LUNG_WINDOW):
    """Clips a CT slice in Hounsfield units to a window and scales it to uint8.

    Args:
        image_hu: float array `(H, W)` in HU.
        window: `(center, width)` in HU, `width > 0`.

    Returns:
        uint8 array `(H, W)`: 0 at `center - width/2` and below, 255 at `center + width/2`.
    """
    center, width = check_window(window)
    scaled = (np.asarray(image_hu, dtype=np.float64) - (center - width / 2)) / width
    return np.round(np.clip(scaled, 0.0, 1.0) * 255).astype(np.uint8)


def read_dicom_hu(path):
    """Reads a single-frame CT slice as float32 `(H, W)` Hounsfield units.

    Goes through pydicom's `apply_modality_lut` (RescaleSlope/Intercept or a Modality LUT).
    Refuses, naming the file and the tag, a modality other than CT (its values are not HU, so
    the lung window would mean nothing) and colour photometric interpretations; warns when a
    CT has no RescaleSlope/RescaleIntercept (stored values are then taken as HU).
    """
    import pydicom  # imported here: only DICOM users pay for it
    from pydicom.pixels import apply_modality_lut

    dataset = pydicom.dcmread(str(path))
    modality = str(getattr(dataset, "Modality", "") or "")
    if modality and modality.upper() != "CT":
        raise ValueError(f"{str(path)!r} is a DICOM with Modality {modality!r}; lungkit reads "
                         f"CT slices (Hounsfield units) only.")
    photometric = str(getattr(dataset, "PhotometricInterpretation", "") or "")
    if photometric and not photometric.upper().startswith("MONOCHROME"):
        raise ValueError(f"{str(path)!r} has PhotometricInterpretation {photometric!r}; "
                         f"lungkit reads grayscale (MONOCHROME1/2) CT slices only.")
    missing = [tag for tag in ("RescaleSlope", "RescaleIntercept") if tag not in dataset]
    if missing and "ModalityLUTSequence" not in dataset:
        logger.warning("%s has no %s; its stored values are taken as Hounsfield units.",
                       path, " or ".join(missing))
    pixels = dataset.pixel_array
    if pixels.ndim != 2:
        raise ValueError(f"Only single-frame grayscale DICOM is supported; {str(path)!r} has "
                         f"pixel array shape {pixels.shape}.")
    # HU are HU whatever PhotometricInterpretation says, so MONOCHROME1 needs no inversion.
    return np.asarray(apply_modality_lut(pixels, dataset), dtype=np.float32)


def describe_dicom(path):
    """`("WxH", "DICOM <dtype>")` of a DICOM file, decoding its pixel data to check it.

    Raises whatever pydicom raises for an unreadable file.
    """
    import pydicom

    dataset = pydicom.dcmread(str(path))
    dataset.pixel_array  # noqa: B018 - decode to check the pixel data
    return f"{dataset.Columns}x{dataset.Rows}", f"DICOM {dataset.pixel_array.dtype}"
