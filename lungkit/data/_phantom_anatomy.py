"""Anatomy and lesions of the phantom chest-CT slice, painted in Hounsfield units.

Private helper of `lungkit.data.phantom` (coordinates: mm from the image centre, x to the
patient's left = image right, y posterior = image down). Structures are painted back to
front like a painter's algorithm on a `Canvas`; its soft lung mask keeps vessels and lesions
in aerated lung. A random `level` (0 = lung apex, 1 = lung base) decides which mediastinal
structures the slice cuts.
"""

import math
from dataclasses import dataclass

import numpy as np

from lungkit.data._phantom_canvas import AIR_HU, tube_stamps

# Typical attenuations in HU (e.g. Hofer, "CT Teaching Manual", 4th ed., table 1.1).
LUNG_HU = -875.0  # aerated parenchyma, non-dependent (anterior)
LUNG_GRADIENT_HU = 60.0  # dependent (posterior) lung is denser by about this much
FAT_HU = -100.0
SKIN_HU = 30.0
MUSCLE_HU = 45.0
BLOOD_HU = 40.0  # unenhanced blood and myocardium
CSF_HU = 10.0
LIVER_HU = 60.0
CARTILAGE_HU = 130.0
CORTEX_HU = 900.0  # cortical bone; the canvas paints cancellous marrow at about +230
TABLE_SHELL_HU, TABLE_CORE_HU = 300.0, -880.0  # carbon-fibre skins around a foam core


@dataclass
class Body:
    """Where the big structures of one slice ended up, for vessels and lesions."""

    level: float  # 0 = lung apex, 1 = lung base
    cavity: tuple  # thoracic cavity ellipse: (cx, cy, semi-axis x, semi-axis front, back), mm
    window: tuple  # pixel (rows, cols) slices covering the cavity
    hila: tuple  # ((x, y) right hilum, (x, y) left hilum), mm
    vessel_radius: float  # radius of the largest hilar vessels, mm


def smoothstep(t):
    t = min(max(t, 0.0), 1.0)
    return t * t * (3 - 2 * t)


def paint_anatomy(canvas, rng):
    """Paints body wall, table, lungs, mediastinum, bones and vessels; returns the `Body`."""
    u = rng.uniform
    level = u(0.1, 0.92)
    cx, cy = u(-4, 4), u(-14, -2)
    half_width, front, back = u(138, 165), u(92, 112), u(95, 108)
    fat = u(6, 18)
    _paint_body_wall(canvas, rng, cx, cy, half_width, front, back, fat)
    _paint_table(canvas, rng, cy + back + u(2, 6))

    # thoracic cavity: an egg inside the chest wall, smaller towards the apex
    apex = min(1.0, 0.75 + 1.3 * level)
    wall = u(10, 14)
    cav = (cx + u(-3, 3), cy + u(2, 8), apex * (half_width - 1.3 * fat - wall),
           apex * (front - fat - wall - u(4, 10)), back - 0.8 * fat - wall - u(2, 6))
    window = canvas.box_rect(cav[0] - cav[2], cav[0] + cav[2], cav[1] - cav[3], cav[1] + cav[4])
    top = cav[1] - cav[3]
    for strip in canvas.strips(window):
        mask = canvas.ellipse_mask(strip, cav[0], cav[1], cav[2], cav[3], b_back=cav[4])
        rows_y = canvas.y[strip[0], strip[1].start : strip[1].start + 1]  # (rows, 1)
        dependent = np.clip((rows_y - np.float32(top)) / np.float32(cav[3] + cav[4]), 0, 1)
        canvas.paint(strip, mask, LUNG_HU + LUNG_GRADIENT_HU * dependent**2, cuts_lung=False)
        canvas.lung[strip] = mask
        canvas.cavity[strip] = mask
    canvas.has_lung = True

    sternum_y = cav[1] - cav[3] + u(-3, 1)
    spine_y = cy + back - u(58, 68)
    _paint_spine(canvas, rng, cx, spine_y)
    hila = _paint_mediastinum(canvas, rng, cx + u(-2, 5), sternum_y, spine_y, level)
    _paint_ribs(canvas, rng, cav, level)
    if level > 0.2:  # sternum (the manubrium, higher up, is wider)
        width = u(11, 15) * (1.6 if level < 0.32 else 1.0)
        canvas.bone(cx + u(-2, 2), sternum_y - u(1, 3), width, u(4.5, 6.5), u(-0.08, 0.08))
    if level > 0.8:  # diaphragm domes rising from behind, cut obliquely (blurred edge)
        grow = 0.5 + 0.5 * (level - 0.8) / 0.12
        canvas.fill(cav[0] - 0.45 * cav[2], cav[1] + 0.4 * cav[4], 0.55 * cav[2] * grow,
                    0.7 * cav[4] * grow, LIVER_HU, u(-0.3, 0.3), edge_mm=u(3, 6))
        if level > 0.86:  # the left dome (spleen, stomach) is lower
            canvas.fill(cav[0] + 0.5 * cav[2], cav[1] + 0.5 * cav[4], 0.4 * cav[2] * grow,
                        0.55 * cav[4] * grow, MUSCLE_HU, u(-0.3, 0.3), edge_mm=u(3, 6))
    vessel_radius = u(2.6, 3.6) * (0.6 + 0.4 * math.exp(-(((level - 0.5) / 0.3) ** 2)))
    body = Body(level, cav, window, hila, vessel_radius)
    _paint_lung_vessels(canvas, rng, body)
    return body


def _paint_body_wall(canvas, rng, cx, cy, half_width, front, back, fat):
    """Skin, subcutaneous fat and muscle: nested level sets of one rounded-box outline.

    Painted first, straight onto air, so the three layers are composited in one expression.
    Breasts, when drawn, join the outline and are fat with a glandular core.
    """
    u = rng.uniform
    boxy_front, boxy_back = u(0.1, 0.3), u(0.35, 0.7)  # the back lies flat on the table
    breasts = []
    if rng.random() < 0.2:  # broad, low fat mounds over the pectoral muscles
        size = u(24, 34)
        for side in (-1, 1):
            breasts.append((cx + side * u(55, 70), cy - front + 0.55 * size, 2.1 * size, size))
    inv_px = np.float32(1 / canvas.px_mm)
    radius_px = np.float32(0.5 * min(front, back) / canvas.px_mm)
    window = canvas.box_rect(cx - half_width, cx + half_width, cy - front - 25, cy + back)
    for strip in canvas.strips(window):
        dx = canvas.x[strip] - np.float32(cx)
        dx *= np.float32(1 / half_width)
        dy = canvas.y[strip] - np.float32(cy)
        posterior = dy > 0
        dy *= np.float32(1 / front) + posterior * np.float32(1 / back - 1 / front)
        dx *= dx
        dy *= dy
        round_ = dx + dy
        dx *= dx
        dy *= dy
        dx += dy
        np.sqrt(dx, out=dx)
        dx -= round_
        dx *= np.float32(boxy_front) + posterior * np.float32(boxy_back - boxy_front)
        dx += round_  # rounded-box field: 1 on the skin
        depth = 1 - dx  # depth below the skin in pixels, to first order
        depth *= radius_px
        outline = depth
        for bx, by, a, b in breasts:
            rx = (canvas.x[strip] - np.float32(bx)) * np.float32(1 / a)
            ry = (canvas.y[strip] - np.float32(by)) * np.float32(1 / b)
            mound = (1 - rx * rx - ry * ry) * np.float32(0.5 * b / canvas.px_mm)
            outline = np.maximum(outline, mound)
        skin = np.clip(outline + np.float32(0.5), 0, 1)
        fat_layer = np.clip(outline + (np.float32(0.5) - 2 * inv_px), 0, 1)
        muscle = np.clip(depth + (np.float32(0.5) - np.float32(fat) * inv_px), 0, 1)
        muscle *= np.float32(MUSCLE_HU - FAT_HU)
        muscle += np.float32(FAT_HU - SKIN_HU)
        muscle *= fat_layer
        muscle += np.float32(SKIN_HU - AIR_HU)
        muscle *= skin
        muscle += np.float32(AIR_HU)
        canvas.hu[strip] = muscle
    for bx, by, a, b in breasts:  # glandular tissue behind the nipple
        canvas.fill(bx, by + 0.1 * b, 0.5 * a, 0.35 * b, FAT_HU + 50, cuts_lung=False)


def _paint_table(canvas, rng, top_y):
    """Curved carbon-fibre table top (two bright skins around foam) and a lower support rail."""
    u = rng.uniform
    thickness, curve, half_width = u(9, 14), u(0.0003, 0.0007), u(170, 220)
    lower = top_y + thickness + u(18, 30)
    rail_half_width = u(80, 130)
    reach = min(half_width, 0.75 * canvas.size * canvas.px_mm)  # about the image half-diagonal
    edge = np.float32(1 / canvas.px_mm)
    half = np.float32(0.5)
    for strip in canvas.strips(canvas.box_rect(-reach, reach, top_y - curve * reach**2, lower + 2)):
        x, y = canvas.x[strip], canvas.y[strip]
        depth = y - np.float32(top_y) + np.float32(curve) * x * x  # the cradle curves up
        inside = np.minimum(depth, np.float32(thickness) - depth)
        across = np.clip((np.float32(half_width) - np.abs(x)) * edge + half, 0, 1)
        shell = np.clip(inside * edge + half, 0, 1) * across
        core = np.clip((inside - np.float32(1.6)) * edge + half, 0, 1)
        canvas.paint(strip, shell, TABLE_SHELL_HU, cuts_lung=False)
        canvas.paint(strip, core * shell, TABLE_CORE_HU, cuts_lung=False)
        rail = np.clip((np.float32(1.2) - np.abs(y - np.float32(lower))) * edge + half, 0, 1)
        rail *= np.clip((np.float32(rail_half_width) - np.abs(x)) * edge + half, 0, 1)
        canvas.paint(strip, rail, 0.6 * TABLE_SHELL_HU, cuts_lung=False)


def _paint_spine(canvas, rng, cx, spine_y):
    """Paraspinal muscles, vertebral body, posterior arch, processes and the spinal canal."""
    u = rng.uniform
    canvas.fill(cx, spine_y + 20, u(36, 44), u(26, 30), MUSCLE_HU)  # paraspinal muscle block
    canvas.fill(cx, spine_y + u(44, 50), u(2.5, 4), u(8, 12), FAT_HU)  # midline fat cleft
    body_a, body_b = u(17, 21), u(14, 17)
    canvas.fill(cx, spine_y - 1, body_a + 5, body_b + 5, MUSCLE_HU)  # prevertebral tissue
    canal_y = spine_y + body_b + u(8, 10)
    for side in (-1, 1):  # transverse processes, pointing back and out
        canvas.bone(cx + side * 20, canal_y + 4, u(13, 16), u(4, 5.5), side * u(0.35, 0.6))
    canvas.bone(cx, canal_y + 2, u(14, 16), u(12, 14), cortex_mm=3.0)  # pedicles and laminae
    canvas.bone(cx + u(-1.5, 1.5), canal_y + u(20, 24), u(3.5, 5), u(10, 14), u(-0.1, 0.1))
    canvas.fill(cx, canal_y, u(8, 10), u(7, 9), CSF_HU)  # spinal canal: cord in CSF
    canvas.bone(cx, spine_y, body_a, body_b, cortex_mm=u(1.5, 2.2), marrow_hu=u(200, 300))


def _paint_mediastinum(canvas, rng, mx, sternum_y, spine_y, level):
    """Mediastinal fat, great vessels, airways and the heart, chosen by `level` (0 apex, 1 base).

    Returns ((x, y) of the right hilum, (x, y) of the left hilum) in mm.
    """
    u = rng.uniform
    depth = spine_y - sternum_y

    def at(frac):  # a point `frac` of the way from sternum to spine
        return sternum_y + frac * depth

    heart = smoothstep((level - 0.5) / 0.22) * (1 - 0.4 * smoothstep((level - 0.85) / 0.1))
    width = u(24, 32)
    canvas.fill(mx, at(0.5), width, depth / 2 + 4, FAT_HU + u(10, 40))
    canvas.fill(mx + 2, at(0.82), 0.75 * width, 0.25 * depth, FAT_HU + 20)
    if level < 0.2:  # above the arch: veins in front, then the arch's three branches
        canvas.fill(mx - 3, at(0.22), u(22, 28), u(5, 7), BLOOD_HU, u(-0.35, -0.15))
        canvas.fill(mx - 24, at(0.3), u(7, 9), u(7, 9), BLOOD_HU)
        for dx, frac, radius in ((-9, 0.42, 7.0), (5, 0.46, 4.5), (15, 0.56, 6.0)):
            canvas.fill(mx + dx, at(frac), radius, radius * u(0.85, 1), BLOOD_HU)
    elif level < 0.33:  # the aortic arch, running from front right to back left
        canvas.fill(mx + 3, at(0.42), u(34, 42), u(11, 14), BLOOD_HU, u(0.6, 0.9))
        canvas.fill(mx - 25, at(0.33), u(8, 10), u(8, 10), BLOOD_HU)  # superior vena cava
    if level >= 0.28:  # descending aorta, left in front of the spine
        radius = u(10, 13)
        canvas.fill(mx + u(17, 22), spine_y - u(10, 14), radius, radius, BLOOD_HU)
    if 0.33 <= level < 0.7:  # ascending aorta, superior vena cava, pulmonary arteries
        radius = u(13, 17)
        canvas.fill(mx - 8, at(0.33), radius, radius, BLOOD_HU)
        if level < 0.58:
            canvas.fill(mx - 8 - radius - u(6, 10), at(0.4), u(8, 10), u(8, 10), BLOOD_HU)
        if 0.38 <= level < 0.58:
            canvas.fill(mx + 15, at(0.27), u(12, 15), u(12, 15), BLOOD_HU)  # pulmonary trunk
            canvas.fill(mx + 34, at(0.48), u(18, 24), u(7, 9), BLOOD_HU, u(0.8, 1.1))  # left PA
        if 0.45 <= level < 0.6:
            canvas.fill(mx - 22, at(0.55), u(24, 30), u(7, 9), BLOOD_HU, u(-0.2, 0.1))  # right PA
    if heart > 0.05:  # pericardial fat, then the heart with its apex to the front left
        hx, hy, angle = mx + 14 + 12 * heart, at(0.4), u(-0.75, -0.45)
        a, b = heart * u(50, 60), heart * u(38, 46)
        canvas.fill(hx, hy, a + u(3, 6), b + u(3, 6), FAT_HU, angle)
        canvas.fill(hx, hy, a, b, BLOOD_HU, angle)
    # airways: trachea, then the main bronchi below the carina
    if level < 0.36:
        radius = u(8, 11)
        canvas.fill(mx - 1, at(0.63), radius + 2.5, radius + 2, MUSCLE_HU)
        canvas.fill(mx - 1, at(0.63), radius, radius * 0.88, AIR_HU)
    elif level < 0.52:
        spread = 9 + 40 * (level - 0.36)
        for side in (-1, 1):
            radius = u(5.5, 7.5)
            canvas.fill(mx + side * spread, at(0.63), radius + 2, radius + 2, MUSCLE_HU)
            canvas.fill(mx + side * spread, at(0.63), radius, radius, AIR_HU)
    oesophagus_x = mx + (4 if level < 0.5 else 10)
    canvas.fill(oesophagus_x, spine_y - u(24, 28), u(6, 8), u(5, 7), MUSCLE_HU)
    if rng.random() < 0.4:
        canvas.fill(oesophagus_x, spine_y - 26, u(1.5, 3), u(1, 2), AIR_HU)
    canvas.fill(mx - 14, spine_y - u(14, 18), u(3, 5), u(3, 5), BLOOD_HU)  # azygos vein
    hilum_y = at(u(0.45, 0.6))
    return (mx - width - u(8, 14), hilum_y), (mx + width + u(10, 16) + 15 * heart, hilum_y)


def _paint_ribs(canvas, rng, cav, level):
    """Ribs cut obliquely around the cavity, costal cartilage in front, scapulae behind."""
    u = rng.uniform
    ccx, ccy, semi_x, semi_front, semi_back = cav
    for side in (-1, 1):
        count = rng.integers(6, 9)
        for phi in np.linspace(-1.25, 1.3, count) + u(-0.12, 0.12, count):
            semi_y = semi_back if phi > 0 else semi_front
            cos, sin = math.cos(phi), math.sin(phi)
            normal = math.atan2(sin / semi_y, side * cos / semi_x)
            tangent = math.atan2(semi_y * cos, -side * semi_x * sin)
            thick = u(3.5, 5.5)
            length = thick * u(1.4, 3.2) * (1.0 + 2.0 * max(phi - 0.5, 0))  # back ribs: longer cuts
            if rng.random() < 0.2:  # the slice runs along this rib for a while
                length *= u(1.3, 2.0)
            length = min(length, 22.0)
            offset = thick + u(0.5, 2.5)
            x = ccx + side * semi_x * cos + offset * math.cos(normal)
            y = ccy + semi_y * sin + offset * math.sin(normal)
            if phi < -0.95 and rng.random() < 0.6:  # costal cartilage near the sternum
                canvas.fill(x, y, length, thick + 1, CARTILAGE_HU, tangent)
            else:
                canvas.bone(x, y, length, thick, tangent, cortex_mm=1.3)
        if level < 0.55 and rng.random() < 0.85:  # scapula: a thin blade behind the ribs
            phi = u(0.55, 0.8)
            cos, sin = math.cos(phi), math.sin(phi)
            normal = math.atan2(sin / semi_back, side * cos / semi_x)
            tangent = math.atan2(semi_back * cos, -side * semi_x * sin) + side * u(0.1, 0.3)
            x = ccx + side * semi_x * cos + 11 * math.cos(normal)
            y = ccy + semi_back * sin + 11 * math.sin(normal)
            canvas.fill(x, y, u(18, 30) * (1.2 - level), u(2.0, 2.8), CORTEX_HU, tangent)


def _paint_lung_vessels(canvas, rng, body):
    """Branching pulmonary vessels from each hilum, thinning towards the pleura.

    Each branch leaves the slice at a random elevation, so its in-plane length is shortened
    and some branches are not cut at all: those running through the slice show as dots,
    those along it as lines, as in a real axial slice. Small vessels are scattered everywhere.
    """
    u = rng.uniform
    stamps = []
    for side, (hx, hy) in zip((-1, 1), body.hila, strict=True):
        count = rng.integers(6, 9)
        angle = (0.0 if side > 0 else math.pi) + u(-1.5, 1.5, count)
        x, y = np.full(count, hx), np.full(count, hy)
        radius = body.vessel_radius * u(0.6, 1.0, count)
        length = u(28, 38, count)
        for depth in range(7):
            n = angle.size
            in_plane = np.where(rng.random(n) < 0.4, u(0.0, 0.2, n), u(0.4, 0.9, n))
            x1 = x + np.cos(angle) * length * in_plane
            y1 = y + np.sin(angle) * length * in_plane
            shown = rng.random(n) < 0.85 - 0.07 * depth
            stamps.append(tube_stamps(canvas, x[shown], y[shown], x1[shown], y1[shown],
                                      radius[shown], 0.85 * radius[shown]))
            turn = u(0.25, 0.6, 2 * n) * np.tile([-1.0, 1.0], n) + u(-0.2, 0.2, 2 * n)
            angle = np.repeat(angle, 2) + turn
            x, y = np.repeat(x1, 2), np.repeat(y1, 2)
            length = np.repeat(length, 2) * u(0.72, 0.88, 2 * n)
            radius = np.repeat(radius, 2) * u(0.66, 0.78, 2 * n)
    ccx, ccy, semi_x, semi_front, semi_back = body.cavity
    count = 260
    x, y = ccx + semi_x * u(-1, 1, count), ccy + u(-semi_front, semi_back, count)
    angle = u(0, 2 * np.pi, count)
    length = np.where(rng.random(count) < 0.8, u(0, 0.8, count), u(2, 7, count))
    radius = u(0.35, 1.2, count)
    stamps.append(tube_stamps(canvas, x, y, x + length * np.cos(angle),
                              y + length * np.sin(angle), radius, 0.8 * radius))
    xs, ys, radii = (np.concatenate(parts) for parts in zip(*stamps, strict=True))
    canvas.composite(body.window, canvas.coverage(xs, ys, radii, body.window), BLOOD_HU,
                     within=canvas.lung)


# Lesion sizes (mm, radius) and attenuation; nodules under 3 cm, masses above (Fleischner
# glossary, Hansell et al., Radiology 2008); benign nodules are smooth and often calcified,
# malignant ones lobulated and spiculated.
NODULE_RADIUS_MM = (2.5, 6.0)
MASS_RADIUS_MM = (8.0, 25.0)
NODULE_HU = (20.0, 60.0)
CALCIFICATION_HU = (350.0, 800.0)


def paint_lesions(canvas, rng, body, kind):
    """Paints the class's lesions into the lungs; returns their float32 soft mask `(size, size)`."""
    lesion = np.zeros_like(canvas.hu)
    if kind == "benign":
        for _ in range(1 + int(rng.random() < 0.35)):
            radius = rng.uniform(*NODULE_RADIUS_MM)
            x, y = _find_lung_spot(canvas, rng, body, radius + 2, margin=0.5)
            calcified = rng.random() < 0.3
            _paint_blob(canvas, rng, lesion, x, y, radius, lobulation=0.03, spicules=0,
                        core_hu=rng.uniform(*CALCIFICATION_HU) if calcified else None)
    elif kind == "malignant":
        radius = rng.uniform(*MASS_RADIUS_MM)
        if rng.random() < 0.35:  # central mass growing out of a hilum
            hx, hy = body.hila[rng.integers(2)]
            side = 1 if hx > body.cavity[0] else -1
            x, y = _find_lung_spot(canvas, rng, body, 0, margin=0.9,
                                   near=(hx + side * (0.7 * radius + 5), hy, 12.0))
        else:  # peripheral mass, free to abut the pleura
            x, y = _find_lung_spot(canvas, rng, body, 0.6 * radius, margin=0.9)
        _paint_blob(canvas, rng, lesion, x, y, radius, lobulation=0.13,
                    spicules=int(rng.integers(8, 22)), cavitates=rng.random() < 0.15)
    return lesion


def _find_lung_spot(canvas, rng, body, clearance, margin, near=None):
    """A point (mm) in aerated lung with lung around it at `clearance` mm (best of 60 tries)."""
    ccx, ccy, semi_x, semi_front, semi_back = body.cavity
    if near is None:
        xs = ccx + rng.uniform(-semi_x, semi_x, 60)
        ys = ccy + rng.uniform(-semi_front, semi_back, 60)
    else:
        xs = near[0] + rng.normal(0, near[2], 60)
        ys = near[1] + rng.normal(0, near[2], 60)
    ring = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    px, py = xs[:, None] + clearance * np.cos(ring), ys[:, None] + clearance * np.sin(ring)
    score = np.minimum(_sample(canvas, canvas.lung, xs, ys),
                       _sample(canvas, canvas.cavity, px, py).min(axis=1))
    if score.max() < margin:  # nothing clear enough: the most aerated pixel of all
        col, row = np.unravel_index(np.argmax(canvas.lung), canvas.lung.shape)[::-1]
        return float(canvas.x[row, col]), float(canvas.y[row, col])
    best = np.flatnonzero(score >= min(margin, score.max()))[0]
    return float(xs[best]), float(ys[best])


def _sample(canvas, image, xs, ys):
    cols, rows = canvas.to_pixel(xs, ys)
    cols = np.clip(np.rint(cols), 0, canvas.size - 1).astype(np.int64)
    rows = np.clip(np.rint(rows), 0, canvas.size - 1).astype(np.int64)
    return image[rows, cols]


def _paint_blob(canvas, rng, lesion, x, y, radius, lobulation, spicules, core_hu=None,
                cavitates=False):
    """A soft-tissue lesion with a lobulated outline r(theta) and optional spicules."""
    u = rng.uniform
    harmonics = np.arange(2, 8)
    amplitudes = lobulation * u(0.3, 1.0, harmonics.size) / np.sqrt(harmonics - 1)
    phases = u(0, 2 * np.pi, harmonics.size)
    window = canvas.box(x, y, radius * (1 + amplitudes.sum()) + 2)
    dx, dy = canvas.x[window] - np.float32(x), canvas.y[window] - np.float32(y)
    theta = np.arctan2(dy, dx)
    outline = np.ones_like(theta)
    for k, amplitude, phase in zip(harmonics, amplitudes, phases, strict=True):
        outline += np.float32(amplitude) * np.cos(k * theta + np.float32(phase))
    distance = np.float32(radius) * outline - np.sqrt(dx * dx + dy * dy)
    mask = np.clip(distance / np.float32(canvas.px_mm) + 0.5, 0, 1) * canvas.cavity[window]
    value = u(*NODULE_HU)
    canvas.paint(window, mask, value)
    lesion[window] = np.maximum(lesion[window], mask)
    if core_hu is not None:  # central or diffuse calcification: a benign pattern
        core = np.clip((np.float32(radius * u(0.3, 0.8)) - np.sqrt(dx * dx + dy * dy))
                       / np.float32(canvas.px_mm) + 0.5, 0, 1)
        canvas.paint(window, core * mask, core_hu)
    if cavitates:  # an eccentric air cavity inside a necrotic mass
        canvas.fill(x + u(-0.2, 0.2) * radius, y + u(-0.2, 0.2) * radius,
                    radius * u(0.2, 0.4), radius * u(0.15, 0.35), AIR_HU, u(0, np.pi))
    if spicules:
        angles = u(0, 2 * np.pi, spicules)
        reach = radius * (1 + (amplitudes[:, None] * np.cos(harmonics[:, None] * angles
                                                              + phases[:, None])).sum(0))
        lengths = radius * u(0.4, 1.0, spicules) + u(4, 10, spicules)
        bend = angles + u(-0.25, 0.25, spicules)
        x0, y0 = x + 0.8 * reach * np.cos(angles), y + 0.8 * reach * np.sin(angles)
        x1, y1 = x0 + lengths * np.cos(bend), y0 + lengths * np.sin(bend)
        stamps = tube_stamps(canvas, x0, y0, x1, y1, u(0.8, 1.5, spicules), np.full(spicules, 0.2))
        window = canvas.box(x, y, 2.5 * radius + 10)
        strands = canvas.composite(window, canvas.coverage(*stamps, window), value,
                                   within=canvas.cavity)
        np.maximum(lesion[window], strands, out=lesion[window])
