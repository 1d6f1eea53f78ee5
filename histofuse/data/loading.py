"""From a sample table to batches: decode, transform, skip what cannot be read."""

from __future__ import annotations

import copy
import os
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from histofuse.data.decode import MAX_PIXELS, decode_image
from histofuse.data.sampling import EpochSampler
from histofuse.data.tiles import TileCutter, rescale
from histofuse.errors import ImageDecodeError


class ImageTable(Dataset):
    """Images listed in a table; a file that fails to decode yields a failure record instead of raising.

    ``scales`` (one factor per image) bring each decoded image to the recipe's µm per pixel first.
    ``preprocess`` (e.g. stain normalization) runs on the decoded RGB image before
    ``transform``; with ``color_stats`` each sample also carries the six LAB
    statistics of the image the model sees, for the colour-only baseline. With
    ``tiles`` a sample is one random tissue tile (``random_tile``, training), a
    bag of ``bag`` of them (attention pooling), or the image's grid of tiles; bags
    and grids are stacked, with their places (``"tiles"``).
    """

    def __init__(
        self,
        table: pd.DataFrame,
        classes: list[str],
        transform: Callable[[np.ndarray], torch.Tensor],
        preprocess: Callable[[np.ndarray], np.ndarray] | None = None,
        color_stats: bool = False,
        magnifications: list[int] | None = None,
        max_pixels: int = MAX_PIXELS,
        cache=None,
        scales: list[float] | None = None,
        tiles: TileCutter | None = None,
        random_tile: bool = False,
        bag: int = 1,
    ):
        self.paths = table["path"].tolist()
        self.scales, self.tiles, self.random_tile, self.bag = scales, tiles, random_tile, bag
        self.max_pixels = max_pixels
        # Stain normalization needs the full-resolution image, so a normalizing table reads the source files.
        self.cache = cache if preprocess is None else None
        # Index of each image's magnification in ``magnifications`` + 1; 0 = unknown (or no such column).
        self.magnification = None
        if magnifications is not None:
            lookup = {m: i + 1 for i, m in enumerate(magnifications)}
            column = table["magnification"] if "magnification" in table else pd.Series([None] * len(table))
            self.magnification = [lookup.get(int(m), 0) if pd.notna(m) else 0 for m in column]
        index = {c: i for i, c in enumerate(classes)}
        # Unlabelled images (histofuse predict) get -1: never used as a target.
        self.labels = [index[label] for label in table["label"]] if "label" in table else [-1] * len(table)
        self.transform = transform
        self.preprocess = preprocess
        self.color_stats = color_stats

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        """``key`` is an index, or an (index, augmentation seed) pair from :class:`EpochSampler`."""
        i, seed = key if isinstance(key, tuple) else (key, None)
        try:
            image = self._decode(i)
        except ImageDecodeError as exc:
            return {"index": i, "error": exc.reason, "path": self.paths[i]}
        if self.preprocess is not None:
            image = self.preprocess(image)
        # Transforms with their own random state (albumentations) say so with set_random_seed.
        reseed = getattr(self.transform, "set_random_seed", None)
        if seed is not None and reseed is not None:
            reseed(seed)
        sample = {"index": i, "label": self.labels[i]}
        if self.tiles is None:
            sample["image"] = self.transform(image)
        elif self.random_tile:
            # The tile's place follows from the sample's seed, as its augmentation does: a resumed run repeats it.
            # Its own stream of that seed: the augmentation's generator, seeded with the seed alone, must not
            # draw the same numbers.
            rng = np.random.default_rng([i] if seed is None else [seed, 1])
            if self.bag == 1:
                sample["image"] = self.transform(self.tiles.random_tile(image, rng))
            else:
                tiles, sample["tiles"] = self.tiles.random_tiles(image, rng, self.bag)
                sample["image"] = torch.stack([self.transform(tile) for tile in tiles])
        else:
            tiles, sample["tiles"] = self.tiles.grid(image)
            sample["image"] = torch.stack([self.transform(tile) for tile in tiles])
        if self.magnification is not None:
            sample["magnification"] = self.magnification[i]
        if self.color_stats:
            from histofuse.color_baseline import lab_stats

            sample["color"] = torch.from_numpy(lab_stats(image))
        return sample

    def as_grid(self) -> "ImageTable":
        """This table, each sample its image's evaluation grid of tiles (what a feature cache computes once)."""
        grid = copy.copy(self)
        grid.random_tile, grid.bag = False, 1
        return grid

    def _decode(self, i: int) -> np.ndarray:
        scale = None if self.scales is None else self.scales[i]
        if self.cache is not None:
            return self.cache.load(self.paths[i], scale)
        image = decode_image(self.paths[i], self.max_pixels)
        return image if scale is None else rescale(image, scale)


def collate(samples: list[dict]) -> dict:
    """Stack the good samples; carry the failed paths so the caller can count and report them. Grids of tiles are
    concatenated, with each image's count (``tile_counts``) and tile places (``tiles``)."""
    good = [s for s in samples if "error" not in s]
    failed = [(s["path"], s["error"]) for s in samples if "error" in s]
    if not good:
        return {"image": None, "label": None, "index": None, "failed": failed}
    tiled = "tiles" in good[0]
    batch = {
        "image": (torch.cat if tiled else torch.stack)([s["image"] for s in good]),
        "label": torch.tensor([s["label"] for s in good], dtype=torch.long),
        "index": torch.tensor([s["index"] for s in good], dtype=torch.long),
        "failed": failed,
    }
    if tiled:
        batch["tile_counts"] = torch.tensor([len(s["tiles"]) for s in good], dtype=torch.long)
        batch["tiles"] = [s["tiles"] for s in good]
    if "color" in good[0]:
        batch["color"] = torch.stack([s["color"] for s in good])
    if "magnification" in good[0]:
        batch["magnification"] = torch.tensor([s["magnification"] for s in good], dtype=torch.long)
    return batch


def class_weights(labels: list[int], num_classes: int) -> torch.Tensor:
    """scikit-learn's 'balanced' weights: n_samples / (n_classes * count)."""
    from sklearn.utils.class_weight import compute_class_weight

    present = np.unique(labels)
    weights = np.ones(num_classes)
    weights[present] = compute_class_weight("balanced", classes=present, y=np.asarray(labels))
    return torch.as_tensor(weights, dtype=torch.float32)


def default_num_workers() -> int:
    # One core stays with the training process; decoding gets the rest.
    return max(0, min(8, (os.cpu_count() or 1) - 1))


def make_loader(
    dataset: ImageTable,
    batch_size: int,
    *,
    train: bool,
    balanced: bool = False,
    num_workers: int = 0,
    seed: int = 0,
    prefetch: int | None = None,
    collate_fn: Callable[[list[dict]], dict] = collate,
) -> DataLoader:
    """A loader; in training its :class:`EpochSampler` (``loader.sampler``) makes each epoch reproducible from ``seed``."""
    sampler = EpochSampler(dataset.labels, balanced=balanced, seed=seed) if train else None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_fn,
        # A last training batch of one image would break batch norm; evaluation keeps every image.
        drop_last=train and len(dataset) > batch_size,
        # Training reuses its workers every epoch; an evaluation loader is iterated once.
        persistent_workers=train and num_workers > 0,
        # Creating an iterator draws the workers' base seed. From the global generator that draw would shift
        # every dropout mask after it, and it happens only in the first epoch a process iterates (workers
        # persist): a resumed run would draw it in another epoch than the uninterrupted one.
        generator=torch.Generator().manual_seed(seed) if train else None,
        pin_memory=torch.cuda.is_available(),
        # Batches each worker keeps ready; torch's default is 2.
        prefetch_factor=(prefetch or 2) if num_workers > 0 else None,
    )
