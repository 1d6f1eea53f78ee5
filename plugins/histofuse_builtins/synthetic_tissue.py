"""Rendering H&E-like tiles from optical densities; the class lives in nuclear morphology only.

Both classes cover the same share of the field with nuclei of the same darkness, drawn from one
distribution; what differs is how that hematoxylin is shaped. Benign: many small, round, evenly
sized nuclei lining regular glands with two cell layers. Malignant: fewer, enlarged, pleomorphic
nuclei (variable size and chromatin, elongated, irregular contours, nucleoli) crowded into
disordered nests with no glands. Last, each tile's LAB mean and standard deviation are mapped
onto a look drawn per patient, magnification and field from one distribution per site, so the
six numbers of the colour-only baseline carry no label.
"""

from __future__ import annotations

import cv2
import numpy as np

# Optical-density stain vectors (RGB), in the range usually reported for H&E.
HEMATOXYLIN = np.array([0.65, 0.70, 0.29])
EOSIN = np.array([0.07, 0.99, 0.11])

# Share of the field covered by epithelial nuclei, and their optical density: one distribution for both classes.
NUCLEAR_BUDGET = (0.12, 0.22)
NUCLEAR_DARKNESS = (0.9, 1.3)

# Apparent nuclear size grows with magnification, and fewer nuclei fit the field. Far less than the
# optics' tenfold and zoomed in, so that after the quick start's resize to 128 pixels a small nucleus
# still spans a few pixels and a malignant one most of a ViT patch: tiny models trained from scratch
# must be able to see the morphology that carries the class.
_MAG_SCALE = {40: 1.4, 100: 1.7, 200: 2.0, 400: 2.5}

# Drawn at a declared µm per pixel instead, structures keep their physical size: the size drawn at 200X,
# 210 pixels wide, stands for 0.5 µm per pixel, and scales with 0.5 / mpp.
_SCALE_AT_HALF_MICRON = 2.0


def scale_at(mpp: float) -> float:
    """The renderer's structure scale for tissue drawn at ``mpp`` µm per pixel."""
    return _SCALE_AT_HALF_MICRON * 0.5 / mpp

# How a site's look spread divides between patients, one patient's magnifications (illumination and
# camera settings change with the objective) and single fields: standard deviations whose squares sum
# to 1. Much variation within a patient keeps a test split of a few patients from agreeing by chance
# on a colour that separates its classes.
_LOOK_SHARES = (0.6, 0.6, 0.53)

# A second "site": another lab's protocol and scanner. Bluer, stronger hematoxylin,
# paler and redder eosin, a warm background tint: the BreaKHis -> BACH situation.
# "look": mean L, a, b and their standard deviations (OpenCV 8-bit LAB) around which
# the site's tiles are drawn, near what its stains give unmapped (site b with less spread
# of L: its bright tiles would otherwise need whites beyond 255), and "look_spread" how
# much they vary from tile to tile.
SITES = {
    "a": {
        "h": HEMATOXYLIN, "e": EOSIN, "h_strength": (0.8, 1.2), "e_strength": (0.7, 1.3), "background": (0.03, 0.03, 0.03),
        "look": (178, 164, 101, 36, 14, 11.5), "look_spread": (6, 4, 3, 2.5, 1.5, 1.2),
    },
    "b": {
        "h": np.array([0.80, 0.55, 0.25]),
        "e": np.array([0.02, 0.80, 0.60]),
        "h_strength": (1.2, 1.5),
        "e_strength": (0.45, 0.75),
        "background": (0.02, 0.03, 0.05),
        "look": (196, 142, 124, 32, 7, 13), "look_spread": (5, 2.5, 2, 2.5, 0.8, 1.0),
    },
}


def patient_stain(rng: np.random.Generator, site: str = "a") -> dict:
    """Per-patient staining and look: the site's vectors jittered, intensities and colour statistics varied."""
    spec = SITES[site]

    def jitter(v: np.ndarray) -> np.ndarray:
        v = np.clip(v / np.linalg.norm(v) + rng.normal(0, 0.05, 3), 0.02, None)
        return v / np.linalg.norm(v)

    spread = np.asarray(spec["look_spread"], float)
    patient, magnification, field = _LOOK_SHARES
    look = np.asarray(spec["look"], float) + rng.normal(0, patient * spread)
    return {
        "h": jitter(spec["h"]),
        "e": jitter(spec["e"]),
        "h_strength": rng.uniform(*spec["h_strength"]),
        "e_strength": rng.uniform(*spec["e_strength"]),
        "background": np.array(spec["background"]),
        "grade": rng.uniform(0.0, 1.0),  # used for malignant patients only
        "look": {mag: look + rng.normal(0, magnification * spread) for mag in _MAG_SCALE},
        "look_jitter": field * spread,
    }


def _smooth_noise(rng: np.random.Generator, h: int, w: int, scale: float) -> np.ndarray:
    small = rng.random((max(2, int(h / scale)), max(2, int(w / scale)))).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def render_tile(
    rng: np.random.Generator, malignant: bool, stain: dict, width: int, height: int, magnification: int,
    pattern: str | None = None, mpp: float | None = None, focal: float | None = None,
) -> np.ndarray:
    """One RGB uint8 tile of shape (height, width, 3); ``pattern`` (a subtype code) adds its architecture.

    A ``stain`` without a "look" gives the pure Beer-Lambert rendering of its stain vectors. With ``mpp``,
    structures are drawn at that physical scale, whatever the magnification and size; without, they grow
    with both (a wider image is the same field drawn finer). With ``focal``, a malignant tile shows
    malignant tissue in one soft-edged region covering that share of the field, benign tissue (without
    subtype architecture) around it.
    """
    scale = scale_at(mpp) if mpp is not None else _MAG_SCALE[magnification] * width / 210.0
    od = _tissue_od(rng, malignant, stain, width, height, scale, pattern)
    if malignant and focal is not None:
        # Blended before the look is matched, so the whole tile gets one look and colour still carries no label.
        mask = focal_mask(rng, height, width, focal, scale)[..., None]
        od = mask * od + (1 - mask) * _tissue_od(rng, False, stain, width, height, scale, None)
    rgb = 255.0 * np.exp(-od) + rng.normal(0, 2.0, od.shape)
    rgb = np.clip(rgb + 0.5, 0, 255).astype(np.uint8)
    if "look" not in stain:
        return rgb
    target = stain["look"][magnification] + rng.normal(0, stain["look_jitter"])
    return _match_look(rgb, target)


def _tissue_od(rng, malignant: bool, stain: dict, width: int, height: int, scale: float, pattern) -> np.ndarray:
    """One field's optical density (height, width, 3): stroma, the class's epithelium, stromal nuclei, pattern."""
    # Tissue vs background: a few pale holes (fat, lumens) in eosin-stained stroma.
    tissue = (_smooth_noise(rng, height, width, 18 * scale + 4) > rng.uniform(0.15, 0.3)).astype(np.float32)
    tissue = cv2.GaussianBlur(tissue, (0, 0), 1.5)
    fibres = _smooth_noise(rng, height, width, 3.0)
    eosin = tissue * (0.35 + 0.25 * fibres) * stain["e_strength"]
    hema = np.zeros((height, width), np.float32)
    area = width * height / (scale * scale * 210 * 138)

    budget = rng.uniform(*NUCLEAR_BUDGET) * width * height
    darkness = rng.uniform(*NUCLEAR_DARKNESS)
    if malignant:
        _malignant_epithelium(hema, rng, budget, darkness, scale, stain["grade"])
    else:
        _benign_epithelium(hema, eosin, rng, budget, darkness, scale)
    # Stromal spindle nuclei, present in both classes.
    for _ in range(int(rng.uniform(10, 30) * area)):
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        length = rng.uniform(3.0, 5.0) * scale
        _draw_nucleus(hema, rng, x, y, (length, length * 0.3), rng.uniform(0, 180), rng.uniform(0.7, 1.1), 0.05)
    if pattern is not None:
        eosin = _draw_pattern(hema, eosin, rng, pattern, width, height, scale, area)
    hema = cv2.GaussianBlur(hema, (0, 0), 0.7) * stain["h_strength"]
    hema *= 0.8 + 0.4 * rng.random((height, width)).astype(np.float32)  # granular chromatin
    return hema[..., None] * stain["h"] + eosin[..., None] * stain["e"] + stain["background"]


def focal_mask(rng: np.random.Generator, height: int, width: int, share: float, scale: float) -> np.ndarray:
    """A soft-edged ellipse at a random place whose mean over the (height, width) field is about ``share``."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    cx, cy, angle = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(0, np.pi)
    u = (x - cx) * np.cos(angle) + (y - cy) * np.sin(angle)
    v = ((y - cy) * np.cos(angle) - (x - cx) * np.sin(angle)) / rng.uniform(0.5, 1.0)
    distance = np.hypot(u, v)
    # A quantile as the radius keeps the share wherever the field's edges cut the ellipse.
    inside = (distance <= np.quantile(distance, share)).astype(np.float32)
    return cv2.GaussianBlur(inside, (0, 0), 1.5 * scale)


def _match_look(rgb: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Map the tile's LAB mean and std (OpenCV 8-bit scale) onto ``target``, whatever its nuclei made of them."""
    lab = cv2.cvtColor(rgb.astype(np.float32) / 255, cv2.COLOR_RGB2LAB) * _LAB8_SCALE + _LAB8_OFFSET
    mean, std = _mean_std(lab)
    shape = (lab - mean) / (std + np.float32(1e-6))
    target = np.concatenate([target[:3], np.maximum(target[3:], 1.0)])
    aim = target.copy()
    # Gamut clipping and rounding to 8 bits move the statistics a little; aiming off by what they moved fixes that.
    for _ in range(3):
        lab = shape * aim[3:].astype(np.float32) + aim[:3].astype(np.float32)
        out = cv2.cvtColor((lab - _LAB8_OFFSET) / _LAB8_SCALE, cv2.COLOR_LAB2RGB)
        out = np.clip(out * np.float32(255) + np.float32(0.5), 0, 255).astype(np.uint8)
        aim += target - np.concatenate(_mean_std(cv2.cvtColor(out, cv2.COLOR_RGB2LAB)))
    return out


# OpenCV's float LAB (L 0-100, a and b around 0) to its 8-bit scale, which the colour baseline measures.
_LAB8_SCALE = np.array([255 / 100, 1, 1], np.float32)
_LAB8_OFFSET = np.array([0, 128, 128], np.float32)


def _mean_std(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, std = cv2.meanStdDev(image)
    return mean.ravel().astype(np.float32), std.ravel().astype(np.float32)


def _benign_epithelium(hema, eosin, rng, budget: float, darkness: float, scale: float) -> None:
    """Small, round, evenly sized nuclei lining glands (luminal cells inside, flat myoepithelial cells outside)."""
    height, width = hema.shape
    r = rng.uniform(1.7, 2.1) * scale
    spent = 0.0
    for cx, cy in _gland_centres(rng, width, height, 9.5 * r):
        if spent >= budget:
            break
        lumen = rng.uniform(1.2, 2.6) * r
        cv2.circle(eosin, (int(cx), int(cy)), int(round(lumen)), 0.05, -1)  # a pale lumen
        turn = rng.uniform(0, 2 * np.pi)
        layers = ((lumen + r, (r, r), 2.3 * r), (lumen + 3.2 * r, (1.4 * r, 0.6 * r), 3.2 * r))
        for k, (radius, axes, step) in enumerate(layers):
            count = max(4, int(2 * np.pi * radius / step))
            for angle in np.linspace(0, 2 * np.pi, count, endpoint=False) + turn + k * np.pi / count:
                x, y = cx + radius * np.cos(angle), cy + radius * np.sin(angle)
                tangent = np.degrees(angle) + 90
                _draw_nucleus(hema, rng, x, y, axes, tangent, darkness * rng.uniform(0.95, 1.05), 0.04)
                spent += np.pi * axes[0] * axes[1]


def _gland_centres(rng, width, height, spacing):
    """A jittered grid of gland centres in random order, then random places if the budget needs more glands."""
    xs, ys = np.arange(spacing / 2, width, spacing), np.arange(spacing / 2, height, spacing)
    grid = np.array([(x, y) for x in xs for y in ys]).reshape(-1, 2)
    grid = grid[rng.permutation(len(grid))] + rng.uniform(-0.15, 0.15, grid.shape) * spacing
    yield from grid
    while True:
        yield rng.uniform(0, width), rng.uniform(0, height)


def _malignant_epithelium(hema, rng, budget: float, darkness: float, scale: float, grade: float) -> None:
    """Enlarged, pleomorphic nuclei crowded into disordered nests, with nucleoli where large enough to show."""
    height, width = hema.shape
    mean_r = _lerp(4.5, 6.0, grade) * scale
    # Nests of about twice the nuclear area, so nuclei crowd; small ones, so that any crop shows some.
    noise = _smooth_noise(rng, height, width, 12 * scale + 4)
    nests = noise >= np.quantile(noise, 1 - min(0.9, 2 * budget / (width * height)))
    places = np.argwhere(nests)[:, ::-1]
    drawn = np.empty((0, 3))  # x, y, radius
    spent, misses = 0.0, 0
    while spent < budget:
        r = mean_r * rng.lognormal(0, 0.3)
        # Once the nests are full, the rest of the budget spills into the stroma.
        x, y = places[rng.integers(len(places))] + rng.uniform(0, 1, 2) if misses < 50 else rng.uniform(0, [width, height])
        # Nuclei may touch but not pile up, so they cover the budget as the benign ones do.
        if len(drawn) and (np.hypot(drawn[:, 0] - x, drawn[:, 1] - y) < 0.8 * (drawn[:, 2] + r)).any():
            misses += 1
            continue
        axes = (r, r * rng.uniform(0.55, 1.0))
        _draw_nucleus(hema, rng, x, y, axes, rng.uniform(0, 180), darkness * rng.uniform(0.7, 1.3), rng.uniform(0.1, 0.3))
        if r >= 3:
            nucleolus = (int(x + rng.normal(0, r / 5)), int(y + rng.normal(0, r / 5)))
            cv2.circle(hema, nucleolus, max(1, int(r / 4)), darkness * 1.6, -1)
        drawn = np.vstack([drawn, (x, y, r)])
        spent += np.pi * axes[0] * axes[1]
        misses = 0


def _draw_pattern(hema, eosin, rng, pattern: str, width, height, scale, area):
    """Each subtype's architecture, drawn over the class morphology; returns the (possibly cleared) eosin."""

    def ring(cx, cy, radius, k, size):
        for angle in np.linspace(0, 2 * np.pi, k, endpoint=False):
            _draw_nucleus(hema, rng, cx + radius * np.cos(angle), cy + radius * np.sin(angle), (size, size), 0, 1.0, 0.05)

    def line(points, size, darkness=1.2):
        for x, y in points:
            _draw_nucleus(hema, rng, x, y, (size, size * 0.8), rng.uniform(0, 180), darkness, 0.2)

    s = scale
    if pattern == "A":  # adenosis: many glands with two cell layers
        for _ in range(max(1, int(6 * area))):
            cx, cy = rng.uniform(0, width), rng.uniform(0, height)
            ring(cx, cy, 9 * s, 10, 2.2 * s)
            ring(cx, cy, 13 * s, 14, 2.0 * s)
    elif pattern == "F":  # fibroadenoma: dense, aligned stromal spindles
        angle = rng.uniform(0, 180)
        for _ in range(int(80 * area)):
            _draw_nucleus(hema, rng, rng.uniform(0, width), rng.uniform(0, height), (5 * s, 1.2 * s), angle + rng.normal(0, 8), 1.0, 0.05)
    elif pattern == "PT":  # phyllodes: leaf-like clefts in cellular stroma
        for _ in range(3):
            y0, amp, phase = rng.uniform(0, height), rng.uniform(5, 15) * s, rng.uniform(0, 6)
            xs = np.arange(width)
            ys = np.clip((y0 + amp * np.sin(xs / (20 * s) + phase)).astype(int), 0, height - 1)
            for dy in range(-int(2 * s) - 1, int(2 * s) + 2):
                eosin[np.clip(ys + dy, 0, height - 1), xs] *= 0.15
        for _ in range(int(50 * area)):
            _draw_nucleus(hema, rng, rng.uniform(0, width), rng.uniform(0, height), (4 * s, 1.5 * s), rng.uniform(0, 180), 1.1, 0.05)
    elif pattern == "TA":  # tubular adenoma: crowded small tubules
        for _ in range(max(1, int(14 * area))):
            ring(rng.uniform(0, width), rng.uniform(0, height), 5 * s, 7, 1.8 * s)
    elif pattern == "DC":  # ductal: solid nests
        for _ in range(2):
            cx, cy = rng.uniform(0, width), rng.uniform(0, height)
            line(zip(cx + rng.normal(0, 8 * s, 40), cy + rng.normal(0, 8 * s, 40)), 3.5 * s, 1.4)
    elif pattern == "LC":  # lobular: single files of small cells
        for _ in range(4):
            x0, y0, angle = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(0, np.pi)
            steps = np.arange(-12, 13) * 5 * s
            line(zip(x0 + steps * np.cos(angle), y0 + steps * np.sin(angle)), 2.2 * s)
    elif pattern == "MC":  # mucinous: pale mucin lakes with floating clusters
        lakes = np.zeros_like(eosin)
        for _ in range(3):
            cv2.circle(lakes, (int(rng.uniform(0, width)), int(rng.uniform(0, height))), int(rng.uniform(12, 22) * s), 1.0, -1)
        eosin = eosin * (1 - 0.85 * cv2.GaussianBlur(lakes, (0, 0), 2))
        hema *= 1 - 0.9 * lakes
        for _ in range(3):
            cx, cy = rng.uniform(0, width), rng.uniform(0, height)
            line(zip(cx + rng.normal(0, 3 * s, 10), cy + rng.normal(0, 3 * s, 10)), 3 * s)
    elif pattern == "PC":  # papillary: fronds lined by tall cells
        for _ in range(3):
            x0, y0 = rng.uniform(0, width), rng.uniform(0, height)
            t = np.linspace(0, 1, 30)
            xs, ys = x0 + t * 60 * s, y0 + 10 * s * np.sin(t * 6)
            line(zip(xs, ys - 3 * s), 2.6 * s)
            line(zip(xs, ys + 3 * s), 2.6 * s)
    return eosin


def _lerp(a: float, b: float, t: float) -> float:
    return a + (b - a) * t


def _draw_nucleus(canvas, rng, x, y, axes, angle, darkness, jag) -> None:
    n = 14
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    wobble = 1 + jag * rng.uniform(-1, 1, n)
    a, b = axes
    theta = np.deg2rad(angle)
    px = x + wobble * (a * np.cos(t) * np.cos(theta) - b * np.sin(t) * np.sin(theta))
    py = y + wobble * (a * np.cos(t) * np.sin(theta) + b * np.sin(t) * np.cos(theta))
    points = np.round(np.stack([px, py], 1) * 4).astype(np.int32)  # 2 fractional bits
    cv2.fillPoly(canvas, [points], float(darkness), lineType=cv2.LINE_AA, shift=2)
