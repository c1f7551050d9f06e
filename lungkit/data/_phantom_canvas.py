"""Drawing primitives for the phantom CT slice: a HU canvas, soft ellipses and tube stamps.

Private helper of `lungkit.data.phantom`. Coordinates are millimetres from the image centre,
x to the patient's left (image right), y posterior (image down); the canvas maps them to
pixels through the slice's random pose (rotation, scale, shift). Shapes have soft edges (a
one-pixel ramp), so outlines are antialiased before the point-spread blur.

Speed: large areas are processed in row strips of at most `STRIP_PIXELS` pixels. glibc
serves bigger temporaries with fresh mmap()s whose pages fault in on every use, which cost
more than the arithmetic itself (about 1.5x the whole slice time at 512 px).
"""

import math
from functools import lru_cache

import numpy as np

AIR_HU = -1000.0
STRIP_PIXELS = 16384  # 64 KiB of float32 per temporary, below glibc's mmap threshold (128 KiB)
MAX_STAMP_PX = 16  # widest tube stamp, in pixels of radius
STAMP_STEP_PX = 0.5  # spacing of tube stamps along a centreline


@lru_cache(maxsize=64)
def _disc_offsets(half_px):
    """Integer (row, col) offsets of a disc of radius `half_px / 2` pixels (at least 1 pixel)."""
    radius = half_px / 2
    span = int(math.ceil(radius))
    rows, cols = np.mgrid[-span : span + 1, -span : span + 1]
    inside = rows**2 + cols**2 <= radius**2 + 0.25
    return rows[inside].astype(np.intp), cols[inside].astype(np.intp)


@lru_cache(maxsize=8)
def _reconstruction_circle(size):
    centred = np.arange(size, dtype=np.float32) + np.float32(0.5 - size / 2)
    circle = (centred[None, :] ** 2 + centred[:, None] ** 2 < (size / 2) ** 2).astype(np.float32)
    circle.flags.writeable = False
    return circle


class Canvas:
    """A square HU image plus the anatomical coordinates (mm) of every pixel centre.

    Attributes:
        hu: float32 `(size, size)` image being painted; starts as air.
        lung: float32 `(size, size)` soft mask of aerated lung in [0, 1].
        cavity: float32 `(size, size)` soft mask of the thoracic cavity in [0, 1].
        fov: read-only float32 `(size, size)`, 1 inside the scanner's reconstruction circle.
        x, y: float32 `(size, size)` anatomical coordinates of the pixel centres (mm).
    """

    def __init__(self, size, px_mm, rotation, shift_mm):
        self.size, self.px_mm = size, float(px_mm)
        self._cos, self._sin = math.cos(rotation), math.sin(rotation)
        self._shift = (float(shift_mm[0]), float(shift_mm[1]))
        coords = (np.arange(size, dtype=np.float32) + np.float32(0.5 - size / 2)) * np.float32(px_mm)
        u, v = coords[None, :] - self._shift[0], coords[:, None] - self._shift[1]
        cos, sin = np.float32(self._cos), np.float32(self._sin)
        self.x, self.y = cos * u + sin * v, cos * v - sin * u  # the patient turned by -rotation
        self.hu = np.full((size, size), AIR_HU, dtype=np.float32)
        self.lung = np.zeros((size, size), dtype=np.float32)
        self.cavity = np.zeros((size, size), dtype=np.float32)
        self.fov = _reconstruction_circle(size)
        self.has_lung = False  # painting cuts the lung mask only once lungs exist

    def to_pixel(self, x, y):
        """(col, row) float pixel positions of anatomical points (mm)."""
        col = (self._cos * x - self._sin * y + self._shift[0]) / self.px_mm + self.size / 2 - 0.5
        row = (self._sin * x + self._cos * y + self._shift[1]) / self.px_mm + self.size / 2 - 0.5
        return col, row

    def box(self, cx, cy, radius):
        """Pixel window `(rows, cols)` covering a disc (mm), or None when off the image."""
        col, row = self.to_pixel(float(cx), float(cy))
        reach = radius / self.px_mm + 1
        r0, r1 = max(0, int(row - reach)), min(self.size, int(row + reach) + 2)
        c0, c1 = max(0, int(col - reach)), min(self.size, int(col + reach) + 2)
        return None if r0 >= r1 or c0 >= c1 else (slice(r0, r1), slice(c0, c1))

    def box_rect(self, left, right, top, bottom):
        """Pixel window covering the anatomical rectangle `[left, right] x [top, bottom]` (mm)."""
        cols, rows = self.to_pixel(np.array([left, right, left, right]),
                                   np.array([top, top, bottom, bottom]))
        r0, r1 = max(0, int(rows.min()) - 1), min(self.size, int(rows.max()) + 3)
        c0, c1 = max(0, int(cols.min()) - 1), min(self.size, int(cols.max()) + 3)
        return None if r0 >= r1 or c0 >= c1 else (slice(r0, r1), slice(c0, c1))

    def strips(self, window):
        """Splits a window into row strips of at most `STRIP_PIXELS` pixels."""
        if window is None:
            return
        rows, cols = window
        step = max(1, STRIP_PIXELS // max(1, cols.stop - cols.start))
        for start in range(rows.start, rows.stop, step):
            yield slice(start, min(start + step, rows.stop)), cols

    def ellipse_mask(self, window, cx, cy, a, b, angle=0.0, b_back=None, edge_mm=None):
        """Soft mask in [0, 1] of an ellipse over `window` (keep windows strip-sized).

        `a` is the semi-axis along `angle` (radians, clockwise on screen), `b` across it;
        `b_back`, if given, replaces `b` on the posterior (+y) side, for egg shapes. The edge
        ramps over `edge_mm` (default one pixel).
        """
        edge = self.px_mm if edge_mm is None else max(edge_mm, self.px_mm)
        dx = self.x[window] - np.float32(cx)
        dy = self.y[window] - np.float32(cy)
        if angle:
            cos, sin = np.float32(math.cos(angle)), np.float32(math.sin(angle))
            dx, dy = cos * dx + sin * dy, cos * dy - sin * dx
        if b_back is None:
            dy *= np.float32(1 / b)
        else:
            dy *= np.float32(1 / b) + (dy > 0) * np.float32(1 / b_back - 1 / b)
        dx *= np.float32(1 / a)
        inside = 1 - dx * dx - dy * dy
        semi = (a, b) if b_back is None else (a, b, b_back)
        if max(semi) < 1.4 * min(semi):  # roundish: distance to the outline ~ (1 - r^2) * r / 2
            inside *= np.float32(math.sqrt(a * min(semi[1:])) / 2 / edge)
        else:  # first-order distance to the outline: (1 - r^2) / |grad r^2|
            dx *= np.float32(1 / a)
            dy *= dy
            dy *= np.float32(1 / min(semi[1:]) ** 2)
            dx *= dx
            dx += dy
            np.sqrt(dx, out=dx)
            dx *= np.float32(2 * edge)
            dx += np.float32(1e-4)
            inside /= dx
        inside += np.float32(0.5)
        return np.clip(inside, 0, 1, out=inside)

    def paint(self, window, mask, value_hu, cuts_lung=True):
        """Composites `value_hu` (a scalar or an array) over `window` with opacity `mask`."""
        patch = self.hu[window]
        patch += mask * (np.float32(value_hu) - patch)
        if cuts_lung and self.has_lung:
            self.lung[window] *= 1 - mask

    def fill(self, cx, cy, a, b, value_hu, angle=0.0, cuts_lung=True, b_back=None, edge_mm=None):
        """Paints a uniform ellipse (see `ellipse_mask`), strip by strip."""
        for window in self.strips(self.box(cx, cy, max(a, b, b_back or 0) + (edge_mm or 0))):
            mask = self.ellipse_mask(window, cx, cy, a, b, angle, b_back, edge_mm)
            self.paint(window, mask, value_hu, cuts_lung)

    def bone(self, cx, cy, a, b, angle=0.0, cortex_mm=1.5, marrow_hu=230.0, cortex_hu=900.0):
        """Paints a bone cross-section: a bright cortex around cancellous marrow."""
        self.fill(cx, cy, a, b, cortex_hu, angle)
        if min(a, b) > 1.5 * cortex_mm:
            self.fill(cx, cy, a - cortex_mm, b - cortex_mm, marrow_hu, angle)

    def composite(self, window, cover, value_hu, within):
        """Paints `value_hu` with opacity `cover * within[window]`; returns that opacity.

        Args:
            window: pixel `(rows, cols)` slices; `cover` has the window's shape.
            cover: float32 soft mask in [0, 1], e.g. from `coverage`.
            value_hu: scalar HU value.
            within: a full-size mask (`lung` or `cavity`) limiting where paint lands.
        """
        first = window[0].start
        for strip in self.strips(window):
            opacity = cover[strip[0].start - first : strip[0].stop - first]
            opacity *= within[strip]
            self.paint(strip, opacity, value_hu, cuts_lung=True)
        return cover

    def coverage(self, xs, ys, radii_mm, window):
        """Rasterises stamps (discs along tube centrelines) into a soft mask.

        Args:
            xs, ys, radii_mm: float arrays `(n,)`: stamp centres and radii (mm), spaced
                `STAMP_STEP_PX` pixels along each tube (see `tube_stamps`).
            window: pixel `(rows, cols)` slices to draw into; stamps centred outside it
                are dropped.

        Returns:
            float32 array of the window's shape in [0, 1]: 1 inside tubes, partial volume
            along sub-pixel ones.
        """
        pad = MAX_STAMP_PX + 1  # a padded accumulator needs no per-pixel bounds checks
        height = window[0].stop - window[0].start + 2 * pad
        width = window[1].stop - window[1].start + 2 * pad
        cols, rows = self.to_pixel(xs, ys)
        cols = np.rint(cols - (window[1].start - pad)).astype(np.intp)
        rows = np.rint(rows - (window[0].start - pad)).astype(np.intp)
        keep = (rows >= pad) & (rows < height - pad) & (cols >= pad) & (cols < width - pad)
        radii_px = radii_mm[keep] / self.px_mm
        half_px = np.minimum(np.rint(2 * radii_px), 2 * MAX_STAMP_PX).astype(np.intp)
        # a sub-pixel tube covers about its width (2 r) of each pixel it crosses
        weights = np.where(half_px <= 1, np.minimum(2 * STAMP_STEP_PX * radii_px, 1), 1.0)
        centres = rows[keep] * width + cols[keep]
        order = np.argsort(half_px, kind="stable")
        half_px, weights, centres = half_px[order], weights[order], centres[order]
        bounds = np.searchsorted(half_px, np.arange(2 * MAX_STAMP_PX + 2))
        indices, values = [centres[: bounds[2]]], [weights[: bounds[2]]]  # one-pixel stamps
        for half in range(2, 2 * MAX_STAMP_PX + 1):
            first, last = bounds[half], bounds[half + 1]
            if first < last:
                d_rows, d_cols = _disc_offsets(half)
                indices.append((centres[first:last, None] + (d_rows * width + d_cols)).ravel())
                values.append(np.repeat(weights[first:last], d_rows.size))
        total = np.bincount(np.concatenate(indices), np.concatenate(values),
                            minlength=height * width)
        total = total.reshape(height, width)[pad:-pad, pad:-pad]
        return np.minimum(total, 1).astype(np.float32)


def tube_stamps(canvas, x0, y0, x1, y1, r0, r1):
    """Stamp centres and radii along straight tubes from `(x0, y0)` to `(x1, y1)` (mm arrays).

    The radius tapers linearly from `r0` to `r1`. Stamps are `STAMP_STEP_PX` pixels apart
    along tubes under two pixels wide (as `Canvas.coverage` assumes), sparser along wider
    ones. Returns `(xs, ys, radii)` float arrays.
    """
    x0, y0, x1, y1, r0, r1 = (np.asarray(v, dtype=np.float64) for v in (x0, y0, x1, y1, r0, r1))
    # wide tubes need fewer stamps: discs a quarter of their radius apart still overlap
    step_px = np.clip(0.25 * np.minimum(r0, r1) / canvas.px_mm, STAMP_STEP_PX, 4.0)
    counts = np.ceil(np.hypot(x1 - x0, y1 - y0) / (step_px * canvas.px_mm)).astype(np.intp) + 1
    segment = np.repeat(np.arange(counts.size), counts)
    first = np.repeat(np.cumsum(counts) - counts, counts)
    t = (np.arange(segment.size) - first) / np.maximum(counts[segment] - 1, 1)
    return (x0[segment] + t * (x1 - x0)[segment], y0[segment] + t * (y1 - y0)[segment],
            r0[segment] + t * (r1 - r0)[segment])
