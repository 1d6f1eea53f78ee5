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
    MIN_TISSUE_PIXELS,
    StainMatrixNormalizer,
    concentrations,
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


class MacenkoOptions(StainMatrixOptions):
    alpha: float = Field(1.0, gt=0, lt=50, description="angle percentile for the extreme stain directions")


class Macenko(StainMatrixNormalizer):
    method = "macenko"

    def __init__(self, alpha: float = 1.0, **options):
        super().__init__(**options)
        self.alpha = alpha

    def estimate(self, od: np.ndarray) -> np.ndarray | None:
        return macenko_stains(od, self.alpha)


def macenko_stains(od: np.ndarray, alpha: float = 1.0) -> np.ndarray | None:
    """2×3 unit stain matrix (H, E) of OD rows, or None when the pixels do not show two stains."""
    od = np.asarray(od, dtype=np.float64)
    if len(od) < MIN_TISSUE_PIXELS:
        return None
    eigenvalues, eigenvectors = np.linalg.eigh(np.cov(od, rowvar=False))
    if not np.isfinite(eigenvalues).all() or eigenvalues[2] <= 1e-12:
        return None
    plane = eigenvectors[:, 1:]  # the two largest directions, as columns
    projected = od @ plane
    angles = np.arctan2(projected[:, 1], projected[:, 0])
    low, high = np.percentile(angles, [alpha, 100 - alpha])
    vectors = np.stack([plane @ [np.cos(low), np.sin(low)], plane @ [np.cos(high), np.sin(high)]])
    return order_and_check(vectors)


class MacenkoStainJitter:
    """Stain augmentation from the tile's own Macenko decomposition (after Tellez et al., 2018).

    With probability ``p``: each stain's concentrations are scaled by U(1 - scale, 1 + scale)
    and shifted by U(-shift, shift) of their 99th percentile (tissue pixels only, so the
    background stays white), and each stain vector is turned by up to about ``angle``
    degrees. A tile with no trustworthy decomposition passes through untouched.
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
        sample = od[tissue]
        if len(sample) > 20000:
            sample = sample[self.rng.choice(len(sample), 20000, replace=False)]
        stains = macenko_stains(sample)
        if stains is None:
            return rgb
        c = concentrations(od, stains)
        top = np.percentile(c[tissue], 99, axis=0)
        c = c * self.rng.uniform(1 - self.scale, 1 + self.scale, 2)
        c[tissue] += self.rng.uniform(-self.shift, self.shift, 2) * top
        turned = np.clip(stains + self.rng.normal(0, np.sin(np.deg2rad(self.angle)) / 2, stains.shape), 0.01, None)
        turned /= np.linalg.norm(turned, axis=1, keepdims=True)
        out = (np.clip(c, 0, None) @ turned).astype(np.float32).reshape(rgb.shape)
        return from_optical_density(out)


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
