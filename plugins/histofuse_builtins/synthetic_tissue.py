"""Rendering H&E-like tiles from optical densities, with class-specific nuclear morphology.

Benign tiles: few, small, round, evenly sized nuclei, partly arranged around
glandular lumens. Malignant tiles: crowded, enlarged, pleomorphic (irregular,
elongated, variably sized) and hyperchromatic nuclei. Stain colours are drawn per
patient from one distribution for both classes, so colour alone carries no label.
"""

from __future__ import annotations

import cv2
import numpy as np

# Optical-density stain vectors (RGB), in the range usually reported for H&E.
HEMATOXYLIN = np.array([0.65, 0.70, 0.29])
EOSIN = np.array([0.07, 0.99, 0.11])

# Mean hematoxylin optical density per field, drawn alike for both classes.
HEMATOXYLIN_BUDGET = (0.14, 0.26)

# Apparent nuclear size grows with magnification, and fewer nuclei fit the field.
_MAG_SCALE = {40: 0.55, 100: 0.75, 200: 1.0, 400: 1.45}


# A second "site": another lab's protocol and scanner. Bluer, stronger hematoxylin,
# paler and redder eosin, a warm background tint: the BreaKHis -> BACH situation.
SITES = {
    "a": {"h": HEMATOXYLIN, "e": EOSIN, "h_strength": (0.8, 1.2), "e_strength": (0.7, 1.3), "background": (0.03, 0.03, 0.03)},
    "b": {
        "h": np.array([0.80, 0.55, 0.25]),
        "e": np.array([0.02, 0.80, 0.60]),
        "h_strength": (1.2, 1.5),
        "e_strength": (0.45, 0.75),
        "background": (0.02, 0.03, 0.05),
    },
}


def patient_stain(rng: np.random.Generator, site: str = "a") -> dict:
    """Per-patient staining: the site's vectors jittered, intensities varied."""
    spec = SITES[site]

    def jitter(v: np.ndarray) -> np.ndarray:
        v = np.clip(v / np.linalg.norm(v) + rng.normal(0, 0.05, 3), 0.02, None)
        return v / np.linalg.norm(v)

    return {
        "h": jitter(spec["h"]),
        "e": jitter(spec["e"]),
        "h_strength": rng.uniform(*spec["h_strength"]),
        "e_strength": rng.uniform(*spec["e_strength"]),
        "background": np.array(spec["background"]),
        "grade": rng.uniform(0.7, 1.0),  # used for malignant patients only
    }


def _smooth_noise(rng: np.random.Generator, h: int, w: int, scale: float) -> np.ndarray:
    small = rng.random((max(2, int(h / scale)), max(2, int(w / scale)))).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def render_tile(
    rng: np.random.Generator, malignant: bool, stain: dict, width: int, height: int, magnification: int,
    pattern: str | None = None,
) -> np.ndarray:
    """One RGB uint8 tile of shape (height, width, 3); ``pattern`` (a subtype code) adds its architecture."""
    scale = _MAG_SCALE[magnification] * width / 210.0
    # Tissue vs background: a few pale holes (fat, lumens) in eosin-stained stroma.
    tissue = (_smooth_noise(rng, height, width, 18 * scale + 4) > rng.uniform(0.15, 0.3)).astype(np.float32)
    tissue = cv2.GaussianBlur(tissue, (0, 0), 1.5)
    fibres = _smooth_noise(rng, height, width, 3.0)
    eosin = tissue * (0.35 + 0.25 * fibres) * stain["e_strength"]
    hema = np.zeros((height, width), np.float32)

    area = width * height / (scale * scale * 210 * 138)
    # Atypia in [0, 1]: benign tissue stays near 0, carcinomas vary by patient grade and by field,
    # so some malignant fields look nearly benign, as in real slides.
    atypia = stain["grade"] * rng.uniform(0.6, 1.0) if malignant else rng.uniform(0.0, 0.2)
    count = int(_lerp(rng.uniform(30, 55), rng.uniform(90, 130), atypia) * area)
    if rng.random() < 0.5 + 0.5 * atypia:
        centres = _clustered_points(rng, count, width, height, clusters=rng.integers(2, 5))
    else:
        centres = _gland_points(rng, count, width, height, scale)
    for x, y in centres:
        r = _lerp(rng.uniform(2.0, 2.9), rng.uniform(3.0, 6.0), atypia) * scale
        axes = (r, r * _lerp(rng.uniform(0.85, 1.0), rng.uniform(0.45, 1.0), atypia))
        darkness = _lerp(rng.uniform(0.75, 1.05), rng.uniform(1.0, 1.6), atypia)
        _draw_nucleus(hema, rng, x, y, axes, rng.uniform(0, 180), darkness, jag=0.05 + 0.3 * atypia)
    # Stromal spindle nuclei, present in both classes.
    for _ in range(int(rng.uniform(10, 30) * area)):
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        length = rng.uniform(3.0, 5.0) * scale
        _draw_nucleus(hema, rng, x, y, (length, length * 0.3), rng.uniform(0, 180), rng.uniform(0.7, 1.1), 0.05)
    if pattern is not None:
        eosin = _draw_pattern(hema, eosin, rng, pattern, width, height, scale, area)
    hema = cv2.GaussianBlur(hema, (0, 0), 0.7) * stain["h_strength"]
    chromatin = 0.8 + 0.4 * rng.random((height, width)).astype(np.float32)
    hema *= chromatin
    # Crowded nuclei make a field bluer overall. A basophilic tint in the stroma tops every
    # field up to a common hematoxylin budget, so that mean colour does not give the class away.
    deficit = rng.uniform(*HEMATOXYLIN_BUDGET) - hema.mean()
    if deficit > 0:
        hema += tissue * (deficit / max(float(tissue.mean()), 1e-3))

    od = hema[..., None] * stain["h"] + eosin[..., None] * stain["e"] + stain["background"]
    rgb = 255.0 * np.exp(-od) + rng.normal(0, 2.0, od.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8)


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


def _clustered_points(rng, count, width, height, clusters) -> np.ndarray:
    centres = rng.uniform([0, 0], [width, height], (clusters, 2))
    spread = rng.uniform(0.15, 0.35) * min(width, height)
    which = rng.integers(0, clusters, count)
    pts = centres[which] + rng.normal(0, spread, (count, 2))
    scattered = rng.random(count) < 0.3
    pts[scattered] = rng.uniform([0, 0], [width, height], (scattered.sum(), 2))
    return pts


def _gland_points(rng, count, width, height, scale) -> np.ndarray:
    pts = []
    while len(pts) < count:
        if rng.random() < 0.6:
            cx, cy = rng.uniform(0, width), rng.uniform(0, height)
            radius = rng.uniform(8, 14) * scale
            k = int(rng.integers(7, 12))
            for angle in np.linspace(0, 2 * np.pi, k, endpoint=False) + rng.uniform(0, 1):
                pts.append((cx + radius * np.cos(angle), cy + radius * np.sin(angle)))
        else:
            pts.append((rng.uniform(0, width), rng.uniform(0, height)))
    return np.array(pts[:count])
