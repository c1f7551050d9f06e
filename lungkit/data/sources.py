"""Where a run's images come from: a folder, a fetched source, or the built-in phantom set.

The one home of "no data given means the phantom set", used by the CLI, `compare` and the
notebooks, and of Google Colab and Drive (`in_colab`, `mount_drive`).

`resolve_data_dir(data_dir, source, root)` returns the folder to pass to `load_data`:

- `data_dir`, an existing dataset folder, as is;
- else `source` (anything `lungkit.data.fetch.fetch_dataset` accepts: a Drive link, a Kaggle
  handle, a URL, a local zip), fetched once into a folder of `root` named after the source,
  so that changing the source (a Colab user trying another `DATA_SOURCE`) fetches into a new
  folder instead of failing on the old one;
- else the phantom set, written once into a folder of `root` named after its settings.
"""

import hashlib
import logging
import re
from pathlib import Path

from lungkit.data.fetch import fetch_dataset
from lungkit.data.phantom import make_phantom_dataset

logger = logging.getLogger(__name__)

DEFAULT_ROOT = Path("data")  # where fetched and generated datasets go without another root
PHANTOM_PER_CLASS = 40  # phantom slices per class without other settings
PHANTOM_SIZE = 512  # px: IQ-OTH/NCCD slices are mostly 512 x 512
DRIVE_MOUNT = "/content/drive"  # Colab's usual mount point


def phantom_dir(root=DEFAULT_ROOT, per_class=PHANTOM_PER_CLASS, size=PHANTOM_SIZE, seed=0):
    """The folder of `root` that holds the phantom set with these settings."""
    return Path(root).expanduser() / f"phantom-{per_class}x{size}px-seed{seed}"


def source_dir(source, root=DEFAULT_ROOT):
    """The folder of `root` that a fetched `source` goes to: a readable slug plus a hash."""
    text = str(source).strip()
    slug = re.sub(r"[^A-Za-z0-9]+", "-", Path(text).stem if text.endswith(".zip") else text)
    slug = slug.strip("-")[-40:] or "dataset"
    digest = hashlib.sha1(text.encode()).hexdigest()[:8]
    return Path(root).expanduser() / f"{slug}-{digest}"


def resolve_data_dir(data_dir=None, source=None, root=DEFAULT_ROOT, phantom_per_class=None,
                     phantom_size=None, seed=0, progress=True):
    """The dataset folder a run should load: given, fetched, or the phantom set.

    Args:
        data_dir: an existing dataset folder (IQ-OTH/NCCD layout); returned as is.
        source: used when `data_dir` is None: a Drive file id or link, `"kaggle:owner/name"`,
            a URL or a local zip (e.g. one on a mounted Drive), fetched once into
            `source_dir(source, root)`.
        root: folder for fetched and generated data.
        phantom_per_class, phantom_size, seed: the phantom set written to
            `phantom_dir(root, ...)` when neither `data_dir` nor `source` is given (defaults
            `PHANTOM_PER_CLASS` slices per class of `PHANTOM_SIZE` px).
        progress: show progress bars.

    Returns:
        `Path` of a folder to pass to `load_data`.

    Raises:
        FileNotFoundError: `data_dir` is not a folder.
    """
    if data_dir is not None:
        data_dir = Path(data_dir).expanduser()
        if not data_dir.is_dir():
            raise FileNotFoundError(f"`data_dir` does not exist or is not a directory: "
                                    f"{str(data_dir)!r}")
        return data_dir
    if source:
        return fetch_dataset(source, source_dir(source, root), progress=progress)
    phantom_per_class = phantom_per_class or PHANTOM_PER_CLASS
    phantom_size = phantom_size or PHANTOM_SIZE
    folder = phantom_dir(root, phantom_per_class, phantom_size, seed)
    logger.info("No data given: using the synthetic phantom set in %s", folder)
    return make_phantom_dataset(folder, per_class=phantom_per_class, size=phantom_size,
                                seed=seed, progress=progress)


def in_colab():
    """True when running inside Google Colab."""
    try:
        import google.colab  # noqa: F401
    except ImportError:
        return False
    return True


def mount_drive(path=DRIVE_MOUNT, required=True):
    """Mounts Google Drive at `path` in Colab and returns `Path(path) / "MyDrive"`.

    Outside Colab there is nothing to mount: with `required=True` this raises a RuntimeError
    that says what to do instead; with `required=False` it logs that and returns None.
    """
    if not in_colab():
        message = ("mount_drive() works only in Google Colab (google.colab cannot be imported "
                   "here). Elsewhere, download the file with fetch_dataset('<Drive file id or "
                   "share link>', dest) or `lungkit data fetch`, or pass a local folder (e.g. "
                   "one synced by Google Drive for desktop) to load_data.")
        if required:
            raise RuntimeError(message)
        logger.info("%s", message)
        return None
    from google.colab import drive

    drive.mount(str(path))
    return Path(path) / "MyDrive"
