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
    rng: np.random.Generator, malignant: bool, stain: dict, width: int, height: int, magnification: int
) -> np.ndarray:
    """One RGB uint8 tile of shape (height, width, 3)."""
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
