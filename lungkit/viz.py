"""Figures: image grids, training curves and model-by-model sample comparisons.

Everything here takes images as NHWC arrays, float in [0, 1] or uint8, with 1 or 3 channels.
Files are drawn with matplotlib's Agg canvas (no display needed); the global backend is never
set, so notebooks keep their inline backend.
"""

import csv
import logging
import math
from pathlib import Path

import numpy as np

from lungkit.checks import check_int
from lungkit.files import atomic_path

logger = logging.getLogger(__name__)

PAD_VALUE = 255  # white gaps between tiles
CAPTION_HEIGHT = 12  # pixels of caption band above each tile (PIL's default bitmap font is 11)
DPI = 100  # figure pixels per inch; grids are drawn at one image pixel per screen pixel
SMALL_PNG_WIDTH = 1000  # pixels: images for the README are scaled down to this width


def to_uint8_rgb(images):
    """Converts images to uint8 RGB.

    Args:
        images: `(n, H, W)`, `(n, H, W, 1)` or `(n, H, W, 3)`; float in [0, 1] (clipped) or
            uint8. A single image `(H, W, C)` with C in (1, 3) is also accepted.

    Returns:
        uint8 array `(n, H, W, 3)`.
    """
    images = np.asarray(images)
    if images.ndim == 3 and images.shape[-1] in (1, 3):
        images = images[None]
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError("`images` must have shape (n, H, W), (n, H, W, 1) or (n, H, W, 3). "
                         f"Received: shape={images.shape}")
    if images.dtype != np.uint8:
        if not np.issubdtype(images.dtype, np.floating):
            raise TypeError("`images` must be float in [0, 1] or uint8. "
                            f"Received: dtype={images.dtype}")
        images = np.round(np.clip(np.nan_to_num(images), 0.0, 1.0) * 255).astype(np.uint8)
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    return images


def grid_shape(n, ncols=None):
    """`(nrows, ncols)` for `n` tiles; `ncols` defaults to `ceil(sqrt(n))`."""
    if n < 1:
        raise ValueError(f"Need at least one image. Received: n={n}")
    if ncols is None:
        ncols = math.ceil(math.sqrt(n))
    ncols = min(check_int("ncols", ncols), n)
    return math.ceil(n / ncols), ncols


def image_grid(images, ncols=None, labels=None, pad=2):
    """Tiles images into one uint8 RGB array.

    Args:
        images: `(n, H, W[, C])`, float in [0, 1] or uint8, 1 or 3 channels.
        ncols: tiles per row (default `ceil(sqrt(n))`).
        labels: optional sequence of `n` captions drawn above each tile.
        pad: pixels of white between tiles and around the border.

    Returns:
        uint8 array `(nrows * (H + caption) + (nrows + 1) * pad,
        ncols * W + (ncols + 1) * pad, 3)`, where `caption` is `CAPTION_HEIGHT` with labels
        and 0 without.
    """
    tiles = to_uint8_rgb(images)
    n, height, width, _ = tiles.shape
    if pad < 0:
        raise ValueError(f"`pad` must be >= 0. Received: pad={pad}")
    if labels is not None and len(labels) != n:
        raise ValueError(f"`labels` must have one entry per image ({n}). "
                         f"Received: {len(labels)} labels")
    nrows, ncols = grid_shape(n, ncols)
    caption = CAPTION_HEIGHT if labels is not None else 0
    cell_h = height + caption
    grid = np.full((nrows * cell_h + (nrows + 1) * pad, ncols * width + (ncols + 1) * pad, 3),
                   PAD_VALUE, dtype=np.uint8)
    for i, tile in enumerate(tiles):
        row, col = divmod(i, ncols)
        top = pad + row * (cell_h + pad) + caption
        left = pad + col * (width + pad)
        grid[top:top + height, left:left + width] = tile
    if labels is not None:
        from PIL import Image, ImageDraw

        canvas = Image.fromarray(grid)
        draw = ImageDraw.Draw(canvas)
        for i, label in enumerate(labels):
            row, col = divmod(i, ncols)
            draw.text((pad + col * (width + pad) + 1, pad + row * (cell_h + pad)),
                      str(label), fill=(0, 0, 0))
        grid = np.asarray(canvas, dtype=np.uint8)
    return grid


def _grid_figure(grid, title=None):
    """A matplotlib Figure showing `grid` at one image pixel per figure pixel."""
    from matplotlib.figure import Figure

    height, width = grid.shape[:2]
    title_px = 24 if title else 0
    fig = Figure(figsize=(width / DPI, (height + title_px) / DPI), dpi=DPI)
    ax = fig.add_axes((0, 0, 1, height / (height + title_px)))
    ax.imshow(grid, interpolation="nearest")
    ax.set_axis_off()
    if title:
        fig.suptitle(title, y=1 - 2 / (height + title_px), va="top", fontsize=10)
    return fig


def save_grid(images, path, ncols=None, title=None, labels=None, pad=2):
    """Saves `image_grid(images, ncols, labels, pad)` as an image file (PNG by suffix).

    Without a title the file holds the grid's exact pixels; with one, a title band on top.

    Returns:
        The `Path` written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid = image_grid(images, ncols=ncols, labels=labels, pad=pad)
    if title:
        _grid_figure(grid, title).savefig(path, dpi=DPI)
    else:
        from PIL import Image

        Image.fromarray(grid).save(path)
    logger.info("Wrote %s (%d images)", path, len(to_uint8_rgb(images)))
    return path


def show_grid(images, ncols=None, title=None, labels=None, pad=2):
    """Displays an image grid inline (Jupyter / Colab); returns the matplotlib Figure."""
    fig = _grid_figure(image_grid(images, ncols=ncols, labels=labels, pad=pad), title)
    try:
        from IPython.display import display

        display(fig)
    except ImportError:  # plain Python: the caller can still save the returned figure
        logger.debug("IPython is not installed; returning the figure without showing it")
    return fig


def _to_float(cell):
    """A CSV cell as float; empty, "NA" (Keras CSVLogger) or text cells become NaN."""
    try:
        return float(cell)
    except (TypeError, ValueError):
        return math.nan


def _finish(fig, path=None, title=None):
    """Adds the title, saves `fig` to `path` when given (PNG by suffix), returns it."""
    if title:
        fig.suptitle(title)
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
        logger.info("Wrote %s", path)
    return fig


def _read_history(history):
    """`{name: list of floats}` and epochs (1-based) from a dict, a Keras History or a CSV."""
    if hasattr(history, "history"):
        history = history.history
    if isinstance(history, (str, Path)):
        path = Path(history)
        if not path.is_file():
            raise FileNotFoundError(f"No training log at `history`={str(path)!r}")
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        if not rows:
            raise ValueError(f"The training log {str(path)!r} has no rows")
        columns = {name: [_to_float(row[name]) for row in rows] for name in rows[0]}
        # CSVLogger writes 0-based epochs; Keras prints them 1-based.
        epochs = [int(e) + 1 for e in columns.pop("epoch")] if "epoch" in columns else None
    elif isinstance(history, dict):
        columns = {name: [float(v) for v in values] for name, values in history.items()}
        epochs = None
    else:
        raise TypeError("`history` must be a dict of lists, a keras History or a CSV path. "
                        f"Received: {type(history).__name__}")
    length = max((len(v) for v in columns.values()), default=0)
    return columns, epochs or list(range(1, length + 1))


def plot_history(history, keys=None, path=None, title=None):
    """Plots training curves, one subplot per metric, against the epoch.

    Args:
        history: dict of lists, a `keras.callbacks.History`, or a CSVLogger file path.
        keys: metrics to draw (default: every metric without a `val_` prefix); a `val_<key>`
            series, when present, shares its key's subplot.
        path: if given, the figure is saved there (PNG by suffix).
        title: figure title.

    Returns:
        The matplotlib Figure.
    """
    from matplotlib.figure import Figure

    columns, epochs = _read_history(history)
    if keys is None:
        keys = [k for k in columns if not k.startswith("val_") and k not in ("learning_rate",)]
    keys = list(keys)
    missing = [k for k in keys if k not in columns]
    if missing or not keys:
        raise ValueError(f"`keys` must name logged metrics {sorted(columns)}. "
                         f"Received: keys={keys}")
    fig = Figure(figsize=(4 * len(keys), 3.2), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    for ax, key in zip(axes, keys, strict=True):
        ax.plot(epochs[:len(columns[key])], columns[key], label=key)
        if f"val_{key}" in columns:
            ax.plot(epochs[:len(columns[f"val_{key}"])], columns[f"val_{key}"],
                    label=f"val_{key}")
            ax.legend()
        ax.set_title(key)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    return _finish(fig, path, title)


def comparison_figure(rows, path=None, ncols=8, title=None):
    """One row of samples per model, the model's name at the left of its row.

    Args:
        rows: `{name: images}`; each images array `(n, H, W[, C])` as for `image_grid`
            (sizes may differ between models). The first `ncols` images of each are drawn.
        path: if given, the figure is saved there.
        ncols: images per row.
        title: figure title.

    Returns:
        The matplotlib Figure.
    """
    from matplotlib.figure import Figure

    if not rows:
        raise ValueError("`rows` must map at least one model name to images. Received: {}")
    tiles = {name: to_uint8_rgb(images)[:ncols] for name, images in rows.items()}
    ncols = max(len(t) for t in tiles.values())
    fig = Figure(figsize=(1.2 * ncols + 1.4, 1.25 * len(tiles) + (0.4 if title else 0)),
                 dpi=DPI, layout="constrained")
    axes = fig.subplots(len(tiles), ncols, squeeze=False)
    for r, (name, images) in enumerate(tiles.items()):
        for c in range(ncols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c < len(images):
                ax.imshow(images[c], interpolation="nearest")
        axes[r, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=10)
    return _finish(fig, path, title)


def bar_chart(labels, values, path=None, xlabel=None, title=None, log=False):
    """A horizontal bar chart, one bar per label, its value printed at the bar's end.

    Args:
        labels: bar names (model or sampler names).
        values: one number per label; NaN or None bars are left out.
        path: if given, the figure is saved there (PNG by suffix).
        xlabel: axis label, with units.
        title: figure title.
        log: logarithmic value axis (for speeds that span orders of magnitude).

    Returns:
        The matplotlib Figure.
    """
    from matplotlib.figure import Figure

    if len(labels) != len(values):
        raise ValueError(f"`labels` and `values` must have the same length. Received: "
                         f"{len(labels)} labels and {len(values)} values")
    pairs = [(str(k), float(v)) for k, v in zip(labels, values, strict=True)
             if v is not None and math.isfinite(float(v)) and (float(v) > 0 or not log)]
    fig = Figure(figsize=(7, 0.45 * max(len(pairs), 1) + 1.2), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    names = [k for k, _ in pairs][::-1]
    numbers = [v for _, v in pairs][::-1]
    bars = ax.barh(names, numbers, color="#4c72b0")
    ax.bar_label(bars, labels=[f"{v:.3g}" for v in numbers], padding=3, fontsize=8)
    if log:
        ax.set_xscale("log")
    ax.margins(x=0.15)
    if xlabel:
        ax.set_xlabel(xlabel)
    if title:
        ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    return _finish(fig, path)


def save_small_png(source, target, max_width=SMALL_PNG_WIDTH):
    """Copies the image `source` to `target` as a small PNG (for READMEs and docs).

    Scaled down to `max_width` if wider (Lanczos), stored as an optimised 256-colour palette
    PNG, which keeps CT grids a few hundred KB. Written atomically; returns `target`.
    """
    from PIL import Image

    max_width = check_int("max_width", max_width)
    with Image.open(source) as opened:
        image = opened.convert("RGB")
    if image.width > max_width:
        height = round(image.height * max_width / image.width)
        image = image.resize((max_width, height), Image.Resampling.LANCZOS)
    target = Path(target)
    with atomic_path(target) as temporary:
        image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(
            temporary, format="PNG", optimize=True)
    return target

