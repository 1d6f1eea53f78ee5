"""Reinhard stain normalization: match each LAB channel's mean and std to a target.

The target is fitted over many images (global statistics of a training set) in one
streaming pass. Statistics are in OpenCV's 8-bit LAB scale (L*255/100, a+128, b+128)
so published numbers compare directly, but they are computed from float32 LAB:
rounding to uint8 LAB would move saturated colours by several levels on the way back.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

import histofuse


# Global LAB statistics of BreaKHis published with the paper (OpenCV 8-bit LAB).
PRESETS = {"breakhis_paper": {"mean": [180.8, 148.6, 116.5], "std": [35.4, 17.5, 11.1]}}


class ReinhardOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    min_std: float = Field(1.0, gt=0, description="a tile with a LAB channel flatter than this comes back unchanged")
    tissue_only: bool = Field(False, description="statistics over tissue pixels only (grey below background)")
    background: int = Field(220, ge=1, le=255)
    preset: Literal["breakhis_paper"] | None = Field(None, description="use published statistics instead of fitting")
    source: Literal["image", "dataset"] = Field(
        "image",
        description="match each image's own statistics (classic Reinhard), or one affine map per dataset from its "
        "global statistics, which keeps differences between images (and the class signal they carry)",
    )


class Reinhard:
    def __init__(
        self, min_std: float = 1.0, tissue_only: bool = False, background: int = 220, preset: str | None = None,
        source: str = "image",
    ):
        self.min_std = min_std
        self.source = source
        self.source_stats: tuple[np.ndarray, np.ndarray] | None = None
        self.tissue_only = tissue_only
        self.background = background
        self.mean: list[float] | None = None
        self.std: list[float] | None = None
        if preset is not None:
            self.load_state(PRESETS[preset])

    @property
    def fitted(self) -> bool:
        return self.mean is not None

    def _pixels(self, rgb):
        """LAB pixels used for statistics: all, or tissue only when asked (background is not stain)."""
        import cv2

        lab = self._lab(rgb).reshape(-1, 3)
        if not self.tissue_only:
            return lab
        grey = cv2.cvtColor(np.ascontiguousarray(rgb, dtype=np.uint8), cv2.COLOR_RGB2GRAY).reshape(-1)
        return lab[grey < self.background]

    @staticmethod
    def _lab(rgb):
        import cv2

        lab = cv2.cvtColor(np.asarray(rgb, dtype=np.float32) * (1.0 / 255.0), cv2.COLOR_RGB2LAB)
        return lab * np.float32([255.0 / 100.0, 1.0, 1.0]) + np.float32([0.0, 128.0, 128.0])

    @staticmethod
    def _rgb(lab8):
        import cv2

        lab = (lab8 - np.float32([0.0, 128.0, 128.0])) * np.float32([100.0 / 255.0, 1.0, 1.0])
        rgb = cv2.cvtColor(lab, cv2.COLOR_LAB2RGB) * 255.0 + 0.5
        return np.clip(rgb, 0, 255).astype(np.uint8)

    def fit(self, images) -> dict:
        """Global per-channel mean/std over every (tissue) pixel of ``images``, in one streaming pass."""
        mean, std = self._moments(images)
        self.mean, self.std = mean.tolist(), std.tolist()
        return self.state

    def adapt(self, images) -> None:
        """With ``source = "dataset"``: learn the global statistics of the set about to be transformed."""
        if self.source == "dataset":
            self.source_stats = self._moments(images)

    def _moments(self, images):
        # Welford-style merge of per-image moments: constant memory, no catastrophic cancellation.
        count = 0
        mean = np.zeros(3)
        m2 = np.zeros(3)
        for rgb in images:
            lab = self._pixels(rgb).astype(np.float64)
            n = lab.shape[0]
            if n == 0:
                continue
            batch_mean = lab.mean(0)
            batch_m2 = np.square(lab - batch_mean).sum(0)
            delta = batch_mean - mean
            total = count + n
            mean = mean + delta * n / total
            m2 = m2 + batch_m2 + np.square(delta) * count * n / total
            count = total
        if count == 0:
            raise histofuse.DataError("Reinhard.fit got no (tissue) pixels; give it at least one RGB image with tissue")
        return mean, np.sqrt(m2 / count)

    @property
    def state(self) -> dict:
        return {"mean": self.mean, "std": self.std}

    def load_state(self, state: dict) -> None:
        self.mean, self.std = list(state["mean"]), list(state["std"])

    def transform(self, rgb):
        if self.mean is None:
            raise histofuse.NotFittedError("reinhard normalizer is not fitted: call fit(images) or load_state(state) first")
        lab = self._lab(rgb)
        if self.source == "dataset":
            if self.source_stats is None:
                raise histofuse.NotFittedError("reinhard with source = \"dataset\" needs adapt(images) on the set first")
            src_mean, src_std = self.source_stats
        else:
            pixels = self._pixels(rgb)
            if len(pixels) < 16:
                return np.array(rgb, copy=True)  # all background: nothing to normalise
            src_mean, src_std = pixels.mean(0), pixels.std(0)
        if (src_std < self.min_std).any():
            return np.array(rgb, copy=True)  # flat tile: rescaling would divide by ~0
        gain = (np.asarray(self.std) / src_std).astype(np.float32)
        shift = (np.asarray(self.mean) - src_mean * gain).astype(np.float32)
        return self._rgb(lab * gain + shift)


@histofuse.hookimpl
def register_normalizers():
    return [
        histofuse.NormalizerSpec(
            name="reinhard",
            build=lambda **options: Reinhard(**options),
            description="Reinhard LAB mean/std matching to statistics fitted over a whole training set",
            options=ReinhardOptions,
        )
    ]
