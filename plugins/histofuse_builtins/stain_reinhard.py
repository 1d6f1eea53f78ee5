"""Reinhard stain normalization: match each LAB channel's mean and std to a target.

The target is fitted over many images (global statistics of a training set) in one
streaming pass. Statistics are in OpenCV's 8-bit LAB scale (L*255/100, a+128, b+128)
so published numbers compare directly, but they are computed from float32 LAB:
rounding to uint8 LAB would move saturated colours by several levels on the way back.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

import histofuse


class ReinhardOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    min_std: float = Field(1e-3, gt=0, description="channels flatter than this are left unchanged")


class Reinhard:
    def __init__(self, min_std: float = 1e-3):
        self.min_std = min_std
        self.mean: list[float] | None = None
        self.std: list[float] | None = None

    @staticmethod
    def _lab(rgb):
        import cv2
        import numpy as np

        lab = cv2.cvtColor(np.asarray(rgb, dtype=np.float32) * (1.0 / 255.0), cv2.COLOR_RGB2LAB)
        return lab * np.float32([255.0 / 100.0, 1.0, 1.0]) + np.float32([0.0, 128.0, 128.0])

    @staticmethod
    def _rgb(lab8):
        import cv2
        import numpy as np

        lab = (lab8 - np.float32([0.0, 128.0, 128.0])) * np.float32([100.0 / 255.0, 1.0, 1.0])
        rgb = cv2.cvtColor(lab, cv2.COLOR_LAB2RGB) * 255.0 + 0.5
        return np.clip(rgb, 0, 255).astype(np.uint8)

    def fit(self, images) -> dict:
        """Global per-channel mean/std over every pixel of ``images`` (streaming sums in float64)."""
        import numpy as np

        total = np.zeros(3)
        total_sq = np.zeros(3)
        count = 0
        for rgb in images:
            lab = self._lab(rgb).reshape(-1, 3).astype(np.float64)
            total += lab.sum(0)
            total_sq += np.square(lab).sum(0)
            count += lab.shape[0]
        if count == 0:
            raise histofuse.DataError("Reinhard.fit got no images; give it at least one RGB image")
        mean = total / count
        std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
        self.mean, self.std = mean.tolist(), std.tolist()
        return self.state

    @property
    def state(self) -> dict:
        return {"mean": self.mean, "std": self.std}

    def load_state(self, state: dict) -> None:
        self.mean, self.std = list(state["mean"]), list(state["std"])

    def transform(self, rgb):
        import numpy as np

        if self.mean is None:
            raise histofuse.NotFittedError("reinhard normalizer is not fitted: call fit(images) or load_state(state) first")
        lab = self._lab(rgb)
        src_mean = lab.reshape(-1, 3).mean(0)
        src_std = lab.reshape(-1, 3).std(0)
        out = np.empty_like(lab)
        for c in range(3):
            # A flat channel has no contrast to rescale: shift only, so nothing divides by ~0.
            gain = self.std[c] / src_std[c] if src_std[c] > self.min_std else 1.0
            out[..., c] = lab[..., c] * gain + (self.mean[c] - src_mean[c] * gain)
        return self._rgb(out)


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
