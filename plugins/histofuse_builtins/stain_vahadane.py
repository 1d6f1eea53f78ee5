"""Vahadane stain normalization: stain vectors from a sparse non-negative factorisation of optical density.

OD (N×3) ≈ C (N×2, sparse, ≥ 0) · S (2×3, ≥ 0) by scikit-learn's NMF with an
L1 penalty on the concentrations (Vahadane et al., IEEE TMI 2016). Slower than
Macenko (an iterative solver per tile), more faithful on tiles where one stain
dominates.
"""

from __future__ import annotations

import warnings

import numpy as np
from pydantic import Field

import histofuse

from histofuse_builtins.stain_macenko import StainMatrixOptions
from histofuse_builtins.stain_matrix import MIN_TISSUE_PIXELS, StainMatrixNormalizer, order_and_check


class VahadaneOptions(StainMatrixOptions):
    sparsity: float = Field(0.1, ge=0, le=10, description="L1 penalty on the concentrations (Vahadane's lambda)")
    max_iter: int = Field(200, ge=10, le=10000, description="NMF iterations")
    pixels_per_image: int = Field(5000, ge=MIN_TISSUE_PIXELS, description="tissue pixels sampled per image to estimate stains")
    max_fit_pixels: int = Field(200_000, ge=MIN_TISSUE_PIXELS, description="tissue pixels kept when fitting a dataset")


class Vahadane(StainMatrixNormalizer):
    method = "vahadane"

    def __init__(self, sparsity: float = 0.1, max_iter: int = 200, pixels_per_image: int = 5000, max_fit_pixels: int = 200_000, **options):
        super().__init__(pixels_per_image=pixels_per_image, max_fit_pixels=max_fit_pixels, **options)
        self.sparsity = sparsity
        self.max_iter = max_iter

    def estimate(self, od: np.ndarray) -> np.ndarray | None:
        return vahadane_stains(od, self.sparsity, self.max_iter, self.seed)


def vahadane_stains(od: np.ndarray, sparsity: float = 0.1, max_iter: int = 200, seed: int = 0) -> np.ndarray | None:
    from sklearn.decomposition import NMF
    from sklearn.exceptions import ConvergenceWarning

    od = np.clip(np.asarray(od, dtype=np.float64), 0, None)
    if len(od) < MIN_TISSUE_PIXELS or not np.isfinite(od).all() or od.max() <= 0:
        return None
    # alpha_W penalises the concentrations (sklearn's W, its L1 term scaled by the 3 channels); the stain matrix (H) is free.
    model = NMF(n_components=2, init="nndsvda", l1_ratio=1.0, alpha_W=sparsity / od.shape[1], alpha_H=0.0,
                max_iter=max_iter, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a few hundred iterations fix the directions well enough
        model.fit(od)
    return order_and_check(model.components_)


@histofuse.hookimpl
def register_normalizers():
    return [
        histofuse.NormalizerSpec(
            name="vahadane",
            build=lambda **options: Vahadane(**options),
            description="Vahadane sparse-NMF stain normalization (scikit-learn), fitted over a training set; slower",
            options=VahadaneOptions,
        )
    ]
