"""Macenko stain normalization, with the target fitted over many training images instead of one tile.

Stain vectors are the extreme angles (``alpha`` and 100 − ``alpha`` percentiles)
of tissue optical densities projected onto the plane of their two main
directions (Macenko et al., ISBI 2009).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

import histofuse

from histofuse_builtins.stain_matrix import (
    MIN_CONTRAST,
    MIN_TISSUE_PIXELS,
    ONE_STAIN,
    REFERENCE_STAINS,
    StainMatrixNormalizer,
    concentrations,
    contrast,
    from_optical_density,
    optical_density,
    order_and_check,
)


class StainMatrixOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    beta: float = Field(0.15, gt=0, lt=2, description="optical density below which a pixel counts as background")
    percentile: float = Field(99.0, gt=50, le=100, description="concentration percentile matched between images")
    pixels_per_image: int = Field(20000, ge=MIN_TISSUE_PIXELS, description="tissue pixels sampled per image to estimate stains")
    max_fit_pixels: int = Field(2_000_000, ge=MIN_TISSUE_PIXELS, description="tissue pixels kept when fitting a dataset")
    source: Literal["image", "dataset"] = Field(
        "image", description="estimate each tile's own stains (classic), or one stain matrix per evaluated set"
    )
    seed: int = Field(0, ge=0)
    min_stain_fraction: float = Field(
        0.15, ge=0, lt=1, description="a tile whose weaker stain is below this fraction of the training maximum comes back unchanged"
    )
    min_contrast: float = Field(
        MIN_CONTRAST, ge=0, description="grey levels: a tile whose colour varies less (std along its main direction) is flat, "
        "an even colour under sensor noise, and comes back unchanged"
    )


class MacenkoOptions(StainMatrixOptions):
    alpha: float = Field(1.0, gt=0, lt=50, description="angle percentile for the extreme stain directions")


class Macenko(StainMatrixNormalizer):
    method = "macenko"

    def __init__(self, alpha: float = 1.0, **options):
        super().__init__(**options)
        self.alpha = alpha

    def estimate(self, od: np.ndarray) -> np.ndarray | str:
        stains = macenko_stains(od, self.alpha)
        return ONE_STAIN if stains is None else stains


def macenko_stains(od: np.ndarray, alpha: float = 1.0) -> np.ndarray | None:
    """2×3 unit stain matrix (H, E) of OD rows, or None when the pixels do not show two stains."""
    od = np.asarray(od, dtype=np.float64)
    if len(od) < MIN_TISSUE_PIXELS:
        return None
    eigenvalues, eigenvectors = np.linalg.eigh(np.cov(od, rowvar=False))
    if not np.isfinite(eigenvalues).all() or eigenvalues[2] <= 1e-12:
        return None
    # eigh's signs are arbitrary. Angles are measured from the mean OD's direction in the plane: tissue ODs are
    # all positive, so their fan sits around angle 0 and never straddles arctan2's cut at ±π.
    plane = eigenvectors[:, 1:]  # the two largest directions, as columns
    centre = od.mean(axis=0) @ plane
    length = np.linalg.norm(centre)
    if length <= 1e-12:
        return None
    towards = plane @ (centre / length)
    across = plane @ (np.array([-centre[1], centre[0]]) / length)
    angles = np.arctan2(od @ across, od @ towards)
    low, high = np.percentile(angles, [alpha, 100 - alpha])
    vectors = np.stack([np.cos(low) * towards + np.sin(low) * across, np.cos(high) * towards + np.sin(high) * across])
    return order_and_check(vectors)


class MacenkoStainJitter:
    """Stain augmentation from the tile's own Macenko decomposition (after Tellez et al., 2018).

    With probability ``p``: each stain's concentrations are scaled by U(1 - scale, 1 + scale)
    and shifted by U(-shift, shift) of their 99th percentile (tissue pixels only, so the
    background stays white), and each stain vector is turned by an angle drawn from U(0, ``angle``)
    degrees. Only that change is added to the tile's optical density, so what two stains do not
    explain (background tint, noise) stays as it was. A flat or one-stain tile, whose own estimate
    would be noise, is decomposed with reference H&E vectors instead; a background tile passes through.
    """

    def __init__(self, p: float, scale: float = 0.25, shift: float = 0.1, angle: float = 4.0, beta: float = 0.15):
        self.p, self.scale, self.shift, self.angle, self.beta = p, scale, shift, angle, beta
        self.rng = np.random.default_rng(0)

    def set_random_seed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def __call__(self, rgb):
        if self.rng.random() >= self.p:
            return rgb
        od = optical_density(rgb).reshape(-1, 3)
        tissue = np.einsum("ij,ij->i", od, od) > self.beta**2
        if tissue.sum() < MIN_TISSUE_PIXELS:
            return rgb
        stains = self._stains(od[tissue])
        c = concentrations(od, stains)
        top = np.percentile(c[tissue], 99, axis=0)
        jittered = c * self.rng.uniform(1 - self.scale, 1 + self.scale, 2)
        jittered[tissue] += self.rng.uniform(-self.shift, self.shift, 2) * top
        out = od + jittered @ turn(stains, self.angle, self.rng) - c @ stains
        return from_optical_density(out.astype(np.float32).reshape(rgb.shape))

    def _stains(self, tissue_od: np.ndarray) -> np.ndarray:
        if len(tissue_od) > 20000:
            tissue_od = tissue_od[self.rng.choice(len(tissue_od), 20000, replace=False)]
        stains = macenko_stains(tissue_od) if contrast(tissue_od) >= MIN_CONTRAST else None
        return REFERENCE_STAINS if stains is None else stains


def turn(stains: np.ndarray, degrees: float, rng: np.random.Generator) -> np.ndarray:
    """Each unit row turned by an angle from U(0, degrees) towards a random perpendicular direction.

    Clipping to the positive octant afterwards (a stain absorbs, never emits) cannot turn a
    non-negative vector further than that angle: projecting onto a convex cone is a contraction.
    """
    out = []
    for vector in stains:
        across = rng.normal(size=3)
        across -= (across @ vector) * vector
        theta = np.deg2rad(rng.uniform(0, degrees))
        turned = np.clip(np.cos(theta) * vector + np.sin(theta) * across / np.linalg.norm(across), 0, None)
        out.append(turned / np.linalg.norm(turned))
    return np.stack(out)


@histofuse.hookimpl
def register_normalizers():
    return [
        histofuse.NormalizerSpec(
            name="macenko",
            build=lambda **options: Macenko(**options),
            description="Macenko stain-vector normalization, target stain matrix fitted over a whole training set",
            options=MacenkoOptions,
        )
    ]
