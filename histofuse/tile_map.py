"""What a run trained on tiles sees of one image: the image at the run's scale, its grid of tiles, each tile's
probability, and the image's prediction (the mean of the tiles' probabilities, calibrated as evaluation calibrates
it); drawn as a map over the image for explain and the web app."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from histofuse.data.tiles import TileCutter, rescale


@dataclass
class TileMap:
    image: np.ndarray  # RGB uint8 at the run's scale, normalized when asked
    places: list[tuple[int, int]]  # (top, left) of each tile
    size: int
    inputs: torch.Tensor  # (T, 3, S, S): the tiles as the model sees them
    probs: np.ndarray  # (T, C), calibrated
    pooled: np.ndarray  # (C,): the image's prediction

    def drawn(self, class_index: int) -> np.ndarray:
        """The image with each tile outlined and tinted by its probability of ``class_index`` (blue 0 to red 1)."""
        canvas = self.image.copy()
        tint = canvas.copy()
        for (top, left), p in zip(self.places, self.probs[:, class_index]):
            colour = tuple(int(c) for c in cv2.applyColorMap(np.uint8([[round(p * 255)]]), cv2.COLORMAP_JET)[0, 0][::-1])
            cv2.rectangle(tint, (left, top), (left + self.size - 1, top + self.size - 1), colour, -1)
            cv2.rectangle(canvas, (left, top), (left + self.size - 1, top + self.size - 1), colour, 2)
        return cv2.addWeighted(canvas, 0.7, tint, 0.3, 0)


def at_run_scale(run, rgb: np.ndarray, mpp: float | None) -> np.ndarray:
    """``rgb`` brought to the run's µm per pixel from ``mpp``; as it is when either is unknown."""
    target = run.recipe.data.mpp
    return rgb if target is None or mpp is None else rescale(rgb, mpp / target)


@torch.no_grad()
def tile_map(run, rgb: np.ndarray, *, normalize: bool = False, tta: str = "none", mpp: float | None = None) -> TileMap:
    """The grid a tiled run's evaluation cuts from ``rgb`` (at ``mpp`` µm per pixel, else taken to be at the run's
    scale), predicted tile by tile and pooled as evaluation pools it."""
    data = run.recipe.data
    tiles = data.tiles.resolved(data.image_size)
    image = run.normalized(at_run_scale(run, rgb, mpp), normalize)
    cutter = TileCutter(tiles.size, tiles.stride, tiles.min_tissue, tiles.max_tiles, data.image_size)
    crops, places = cutter.grid(image)
    inputs = torch.stack([run.transform(crop) for crop in crops])
    probs = run.probabilities(inputs, tta)
    pooled = run.probabilities(inputs, tta, torch.tensor([len(crops)]))[0]
    return TileMap(np.ascontiguousarray(image), places, tiles.size, inputs, probs, pooled)
