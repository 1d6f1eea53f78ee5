"""What a run trained on tiles sees of one image: the image at the run's scale, its grid of tiles, each tile's
probability (and attention weight), and the image's prediction, pooled and calibrated as evaluation does it; drawn
as maps over the image for explain and the web app."""

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
    weights: np.ndarray | None = None  # (T,): each tile's attention weight in the image, when the model pools so

    def drawn(self, values: np.ndarray) -> np.ndarray:
        """The image with each tile outlined and tinted by its value in [0, 1] (blue 0 to red 1)."""
        canvas = self.image.copy()
        tint = canvas.copy()
        for (top, left), p in zip(self.places, values):
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
    return TileMap(np.ascontiguousarray(image), places, tiles.size, inputs, probs, pooled, attention_weights(run, inputs))


@torch.no_grad()
def attention_weights(run, tiles: torch.Tensor) -> np.ndarray | None:
    """Each tile's weight in the image's attention pooling (averaged over a fold ensemble's models); None for a
    model that averages its tiles' probabilities."""
    models = [member.model for member in getattr(run, "members", [run])]
    if not models[0].pools_tiles:
        return None
    return np.mean([m.tile_pooling.weights(m.fused(tiles)).numpy() for m in models], axis=0)
