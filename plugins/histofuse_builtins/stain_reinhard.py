"""Reinhard stain normalization: match each LAB channel's mean and std to a target.

The target is fitted over many images (global statistics of a training set) in one
streaming pass. Statistics are in OpenCV's 8-bit LAB scale (L*255/100, a+128, b+128)
so published numbers compare directly, but they are computed from float32 LAB:
rounding to uint8 LAB would move saturated colours by several levels on the way back.
"""

from __future__ import annotations

from collections import Counter
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

import histofuse

from histofuse_builtins.stain_matrix import FLAT, MIN_CONTRAST, TOO_LITTLE_TISSUE, count_unchanged


# Global LAB statistics of BreaKHis published with the paper (OpenCV 8-bit LAB).
PRESETS = {"breakhis_paper": {"mean": [180.8, 148.6, 116.5], "std": [35.4, 17.5, 11.1]}}


class ReinhardOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    min_std: float = Field(1.0, gt=0, description="a tile with a LAB channel flatter than this comes back unchanged")
    min_contrast: float = Field(
        MIN_CONTRAST, ge=0, description="a tile whose LAB channels all vary less than this (std, 8-bit levels) is flat, an even "
        "colour under sensor noise, and comes back unchanged"
    )
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
        source: str = "image", min_contrast: float = MIN_CONTRAST,
    ):
        self.min_std = min_std
        self.min_contrast = min_contrast
        self.source = source
        # (mean, std) of the set adapt() measured, or why it has none.
        self.source_stats: tuple[np.ndarray, np.ndarray] | str | None = None
        self.tissue_only = tissue_only
        self.background = background
        self.mean: list[float] | None = None
        self.std: list[float] | None = None
        self.unchanged: Counter = Counter()
        if preset is not None:
            self.load_state(PRESETS[preset])

    @property
    def fitted(self) -> bool:
        return self.mean is not None

    @staticmethod
    def _lab(rgb):
        """LAB of an RGB uint8 image on OpenCV's 8-bit scale, as float32 (the scale statistics are kept in)."""
        return _native_lab(rgb) * _SCALE + _OFFSET

    def _tissue_mask(self, rgb):
        if not self.tissue_only:
            return None
        import cv2

        grey = cv2.cvtColor(np.ascontiguousarray(rgb, dtype=np.uint8), cv2.COLOR_RGB2GRAY)
        return (grey < self.background).astype(np.uint8)

    def _image_moments(self, rgb, lab=None):
        """(pixel count, mean, std) of one image on the 8-bit LAB scale; float64 accumulation in OpenCV."""
        import cv2

        lab = _native_lab(rgb) if lab is None else lab
        mask = self._tissue_mask(rgb)
        count = lab.shape[0] * lab.shape[1] if mask is None else cv2.countNonZero(mask)
        if count == 0:
            return 0, None, None
        mean, std = cv2.meanStdDev(lab, mask=mask)
        return count, mean.ravel() * _SCALE + _OFFSET, std.ravel() * _SCALE

    def fit(self, images) -> dict:
        """Global per-channel mean/std over every (tissue) pixel of ``images``, in one streaming pass."""
        moments = self._moments(images)
        if moments is None:
            raise histofuse.DataError(
                "reinhard found no (tissue) pixels in the images it was given to measure; "
                "give it at least one RGB image with tissue (or turn tissue_only off)"
            )
        self.mean, self.std = moments[0].tolist(), moments[1].tolist()
        return self.state

    def adapt(self, images) -> None:
        """With ``source = "dataset"``: learn the global statistics of the set about to be transformed.

        A set without (tissue) pixels is not an error: its tiles come back unchanged, counted under the reason.
        """
        if self.source == "dataset":
            moments = self._moments(images)
            self.source_stats = f"the set: {TOO_LITTLE_TISSUE}" if moments is None else moments

    @property
    def adapted(self) -> dict | None:
        """What adapt() measured on the set (``source = "dataset"``), for the run's metrics; None otherwise."""
        if self.source != "dataset" or self.source_stats is None:
            return None
        if isinstance(self.source_stats, str):
            return {"unchanged": self.source_stats}
        return {"mean": np.round(self.source_stats[0], 2).tolist(), "std": np.round(self.source_stats[1], 2).tolist()}

    def _moments(self, images) -> tuple[np.ndarray, np.ndarray] | None:
        # Chan et al.'s merge of per-image moments: constant memory, no catastrophic cancellation.
        count, mean, m2 = 0, np.zeros(3), np.zeros(3)
        for rgb in images:
            n, image_mean, image_std = self._image_moments(rgb)
            if n == 0:
                continue
            delta = image_mean - mean
            total = count + n
            mean = mean + delta * n / total
            m2 = m2 + np.square(image_std) * n + np.square(delta) * count * n / total
            count = total
        if count == 0:
            return None
        return mean, np.sqrt(m2 / count)

    @property
    def state(self) -> dict:
        return {"mean": self.mean, "std": self.std}

    def load_state(self, state: dict) -> None:
        self.mean, self.std = list(state["mean"]), list(state["std"])

    def normalize(self, rgb) -> tuple[np.ndarray, str | None]:
        """(normalized tile, None), or (a copy of it, why it was left unchanged); one fused affine map per image
        in float32 LAB, exact to about one grey level. Counts nothing, so it is the call for worker processes."""
        import cv2

        if self.mean is None:
            raise histofuse.NotFittedError("reinhard normalizer is not fitted: call fit(images) or load_state(state) first")
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or not rgb.size:
            return np.array(rgb, copy=True), "not an RGB image"
        lab = _native_lab(rgb)
        source = self._source_of(rgb, lab)
        if isinstance(source, str):
            return np.array(rgb, copy=True), source
        src_mean, src_std = source
        if (src_std < self.min_std).any():
            return np.array(rgb, copy=True), "a LAB channel's std below min_std: rescaling it would divide by ~0"
        gain = np.asarray(self.std) / src_std
        shift = np.asarray(self.mean) - src_mean * gain
        # The map is defined on the 8-bit scale (x8 = s*x + o); applied to native LAB it becomes
        # x -> gain*x + (gain*o + shift - o)/s, so no scaled copy of the image is ever made.
        native_shift = (gain * _OFFSET + shift - _OFFSET) / _SCALE
        matrix = np.hstack([np.diag(gain), native_shift[:, None]]).astype(np.float32)
        out = cv2.cvtColor(cv2.transform(lab, matrix), cv2.COLOR_LAB2RGB)
        # One SIMD pass that rounds and saturates (6x faster than cv2.multiply to 8 bits). Its absolute value is
        # harmless: OpenCV's float LAB->RGB already clips out-of-gamut colours to [0, 1].
        return cv2.convertScaleAbs(out, alpha=255.0), None

    def _source_of(self, rgb, lab) -> tuple[np.ndarray, np.ndarray] | str:
        """The (mean, std) to map from, or why the tile has none worth trusting."""
        if self.source == "dataset":
            if self.source_stats is None:
                raise histofuse.NotFittedError("reinhard with source = \"dataset\" needs adapt(images) on the set first")
            return self.source_stats
        count, mean, std = self._image_moments(rgb, lab)
        if count < 16:
            return TOO_LITTLE_TISSUE
        # Noise on an even colour would be stretched to the target's spread, and the colour moved to its mean.
        if std.max() < self.min_contrast:
            return FLAT
        return mean, std

    def transform(self, rgb):
        """The normalized tile; one left unchanged is counted in ``unchanged``."""
        out, reason = self.normalize(rgb)
        if reason is not None:
            count_unchanged(self.unchanged, "reinhard", reason)
        return out


_SCALE = np.array([255.0 / 100.0, 1.0, 1.0])
_OFFSET = np.array([0.0, 128.0, 128.0])


def _native_lab(rgb):
    """float32 LAB (L in 0..100) of an RGB uint8 image; float input keeps saturated colours exact."""
    import cv2

    scaled = np.asarray(rgb, dtype=np.uint8).astype(np.float32)  # a plain cast is 7x cv2.multiply's converting one
    scaled *= np.float32(1 / 255)
    return cv2.cvtColor(scaled, cv2.COLOR_RGB2LAB)


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
