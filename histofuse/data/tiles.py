"""One physical scale and tiles: images brought to a chosen µm per pixel and cut into tissue tiles (pooled into one
prediction per image by :mod:`histofuse.tile_pooling`)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import pandas as pd

from histofuse.errors import DataError, HistofuseError
from histofuse.qc import QCThresholds
from histofuse.recipe.schema import MULTI_CROP

BACKGROUND = QCThresholds.background  # grey level at or above which a pixel is background, as quality control counts it


def rescale(rgb: np.ndarray, factor: float) -> np.ndarray:
    """``rgb`` resized by ``factor`` (area interpolation down, cubic up); unchanged at factor 1."""
    if abs(factor - 1.0) < 1e-6:
        return rgb
    h, w = rgb.shape[:2]
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    return cv2.resize(np.ascontiguousarray(rgb), size, interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_CUBIC)


def scale_factors(table: pd.DataFrame, target_mpp: float, where: str, setting: str = "data.mpp") -> list[float]:
    """Per image, the factor that brings it to ``target_mpp`` (asked for by ``setting``): its own µm/px over the
    target's. Refused, with the images named, when the dataset does not say the scale of some of them."""
    mpp = pd.to_numeric(table["mpp"], errors="coerce") if "mpp" in table else pd.Series(np.nan, index=table.index)
    unknown = table.loc[mpp.isna() | (mpp <= 0), "path"]
    if len(unknown):
        remedy = "before training, remove data.mpp" if setting == "data.mpp" else f"leave out {setting}"
        raise DataError(
            f"{where}: {setting} = {target_mpp:g} rescales every image to {target_mpp:g} µm per pixel, but the dataset "
            f"does not give the scale of {len(unknown)} of its {len(table)} images (first: {unknown.iloc[0]}). Give it "
            "with the dataset's mpp option (folder, csv: an mpp column or option; histofuse evaluate and qc: --option "
            f"mpp=...) or, {remedy}"
        )
    return (mpp / target_mpp).astype(float).tolist()


def decoder_at(frame: pd.DataFrame, mpp: float, where: str, setting: str = "data.mpp"):
    """A decoder of ``frame``'s images that brings each to ``mpp`` µm per pixel (what quality control scores)."""
    from histofuse.data.decode import decode_image

    factors = dict(zip(frame["path"], scale_factors(frame, mpp, where, setting)))
    return lambda path: rescale(decode_image(path), factors[path])


def check_tta(data, tta: str, where: str) -> None:
    """Multi-crop TTA cuts its views from one resized image: meaningless on a grid of tiles."""
    if data.tiles is not None and tta in MULTI_CROP:
        raise HistofuseError(f"{where}: TTA {tta} cuts crops from one resized image, but this run evaluates a grid of "
                             "tiles (data.tiles), which covers the image already; use none, paper7 or d4")


def pad_to(rgb: np.ndarray, size: int) -> np.ndarray:
    """Mirror-pad an image smaller than ``size`` on a side, so a tile of that size fits."""
    h, w = rgb.shape[:2]
    if h >= size and w >= size:
        return rgb
    bottom, right = max(0, size - h), max(0, size - w)
    return cv2.copyMakeBorder(np.ascontiguousarray(rgb), 0, bottom, 0, right, cv2.BORDER_REFLECT_101)


def grid_positions(height: int, width: int, size: int, stride: int) -> list[tuple[int, int]]:
    """(top, left) of tiles every ``stride`` pixels, the last row and column flush with the edge: every pixel is
    in at least one tile."""

    def starts(length: int) -> list[int]:
        last = max(0, length - size)
        found = list(range(0, last + 1, stride))
        if found[-1] != last:
            found.append(last)
        return found

    return [(top, left) for top in starts(height) for left in starts(width)]


@dataclass(frozen=True)
class TileCutter:
    """Tiles of ``size`` pixels (at the data's scale): a random tissue tile for training, a grid for evaluation;
    each handed on at ``out`` pixels, the model's input size."""

    size: int
    stride: int
    min_tissue: float
    max_tiles: int
    out: int

    def _fit(self, tile: np.ndarray) -> np.ndarray:
        return tile if self.size == self.out else rescale(tile, self.out / self.size)

    def random_tile(self, rgb: np.ndarray, rng: np.random.Generator, attempts: int = 16) -> np.ndarray:
        """A tile around a random tissue pixel with at least ``min_tissue`` tissue; of the places tried, the one
        with the most tissue when none has enough (anywhere, in an image without tissue)."""
        return self.random_tiles(rgb, rng, 1, attempts)[0][0]

    def random_tiles(
        self, rgb: np.ndarray, rng: np.random.Generator, count: int, attempts: int = 16
    ) -> tuple[list[np.ndarray], list[tuple[int, int]]]:
        """``count`` tiles drawn as :meth:`random_tile` draws one (a bag, for attention pooling), and their places."""
        rgb = pad_to(rgb, self.size)
        h, w = rgb.shape[:2]
        mask = _tissue_mask(rgb)
        tissue, (ys, xs) = _integral(mask), np.nonzero(mask)
        places = [self._random_place(tissue, ys, xs, h, w, rng, attempts) for _ in range(count)]
        return [self._fit(rgb[top : top + self.size, left : left + self.size]) for top, left in places], places

    def _random_place(self, tissue, ys, xs, h: int, w: int, rng: np.random.Generator, attempts: int) -> tuple[int, int]:
        best, best_fraction = (0, 0), -1.0
        for _ in range(attempts):
            if len(ys):
                k = int(rng.integers(len(ys)))
                top = min(max(0, int(ys[k]) - self.size // 2), h - self.size)
                left = min(max(0, int(xs[k]) - self.size // 2), w - self.size)
            else:
                top, left = int(rng.integers(0, h - self.size + 1)), int(rng.integers(0, w - self.size + 1))
            fraction = _fraction(tissue, top, left, self.size)
            if fraction >= self.min_tissue:
                best = (top, left)
                break
            if fraction > best_fraction:
                best, best_fraction = (top, left), fraction
        return best

    def grid(self, rgb: np.ndarray) -> tuple[list[np.ndarray], list[tuple[int, int]]]:
        """The evaluation tiles and their (top, left): every grid tile with at least ``min_tissue`` tissue, then,
        tile by tile, those that hold tissue no kept tile covers, so every tissue pixel is seen (up to
        ``max_tiles``, the tissue-richest first). An image without tissue keeps its richest tile."""
        rgb = pad_to(rgb, self.size)
        h, w = rgb.shape[:2]
        mask = _tissue_mask(rgb)
        sums = _integral(mask)
        positions = grid_positions(h, w, self.size, self.stride)
        fractions = [_fraction(sums, top, left, self.size) for top, left in positions]
        order = sorted(range(len(positions)), key=lambda i: -fractions[i])
        kept = [i for i in order if fractions[i] >= self.min_tissue]
        covered = np.zeros_like(mask)
        for i in kept:
            top, left = positions[i]
            covered[top : top + self.size, left : left + self.size] = True
        for i in order:
            if i in kept or fractions[i] == 0:
                continue
            top, left = positions[i]
            window = np.s_[top : top + self.size, left : left + self.size]
            if (mask[window] & ~covered[window]).any():
                kept.append(i)
                covered[window] = True
        kept = sorted(kept[: self.max_tiles] or order[:1])
        chosen = [positions[i] for i in kept]
        return [self._fit(rgb[t : t + self.size, x : x + self.size]) for t, x in chosen], chosen


def image_scales(data, frame: pd.DataFrame, where: str) -> list[float] | None:
    """Each image's factor to ``data.mpp``; 1 for every image when tiles are cut at each image's own scale (so a
    decode cache keeps them whole, not shrunk to ``resize``); None when images are resized to fit."""
    if data.mpp is not None:
        return scale_factors(frame, data.mpp, where)
    return [1.0] * len(frame) if data.keeps_scale else None


def table_options(data, frame: pd.DataFrame, random_tile: bool, where: str) -> dict:
    """What an ImageTable needs to show ``frame`` as the recipe's data section says: each image's factor to
    ``data.mpp``, and the tile cutter (a random tile per sample in training, a grid in evaluation)."""
    options: dict = {}
    scales = image_scales(data, frame, where)
    if scales is not None:
        options["scales"] = scales
    if data.tiles is not None:
        tiles = data.tiles.resolved(data.image_size)
        options["tiles"] = TileCutter(tiles.size, tiles.stride, tiles.min_tissue, tiles.max_tiles, data.image_size)
        options["random_tile"] = random_tile
        options["bag"] = tiles.bag if random_tile else 1
    return options


def _tissue_mask(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY) < BACKGROUND


def _integral(mask: np.ndarray) -> np.ndarray:
    return cv2.integral(mask.astype(np.uint8))


def _fraction(sums: np.ndarray, top: int, left: int, size: int) -> float:
    total = sums[top + size, left + size] - sums[top, left + size] - sums[top + size, left] + sums[top, left]
    return float(total) / (size * size)
