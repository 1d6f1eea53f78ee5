"""Cached backbone features for a phase that trains only fusion + head on fixed inputs.

When every backbone is frozen and each image is seen the same way every epoch,
the backbones compute the same features every epoch; computing them once turns
each further epoch into a pass over a small head.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from typing import Callable, ContextManager

import numpy as np
import torch
from accelerate.data_loader import DataLoaderStateMixin
from accelerate.state import GradientState
from torch import nn
from torch.utils.data import Subset

from histofuse.data.loading import make_loader
from histofuse.data.sampling import EpochSampler
from histofuse.errors import DataError
from histofuse.tile_pooling import TILE_CHUNK, per_tile, pool_tile_logits
from histofuse.training.predict import Predictions


@dataclass
class FeatureBank:
    """Backbone outputs for the decodable images of one split, with their labels, magnifications and dataset indices.

    With ``counts`` the rows of ``features`` are tiles, image after image, ``counts[i]`` of them image i's (its
    evaluation grid); labels, magnifications and indices stay one per image.
    """

    features: list[torch.Tensor]
    labels: torch.Tensor
    magnification: torch.Tensor | None
    indices: torch.Tensor
    failed: list[tuple[str, str]]
    counts: torch.Tensor | None = None

    @classmethod
    @torch.no_grad()
    def compute(cls, model: nn.Module, dataset, batch_size: int, num_workers: int, device) -> "FeatureBank":
        model.eval()
        parts: list[list[torch.Tensor]] = [[] for _ in model.backbones]
        labels, magnifications, indices, failed, counts = [], [], [], [], []
        for batch in make_loader(dataset, batch_size, train=False, num_workers=num_workers):
            failed += batch["failed"]
            if batch["image"] is None:
                continue
            images = batch["image"].to(device)
            # A batch of grids holds thousands of tiles; images go through in one forward, as they always did.
            step = TILE_CHUNK if "tile_counts" in batch else len(images)
            for start in range(0, len(images), step):
                for store, output in zip(parts, model.features(images[start : start + step])):
                    store.append(output)
            labels.append(batch["label"])
            indices.append(batch["index"])
            if "magnification" in batch:
                magnifications.append(batch["magnification"])
            if "tile_counts" in batch:
                counts.append(batch["tile_counts"])
        if not labels:
            raise DataError("no image of the split could be decoded to compute its features; see the warnings above")
        return cls(
            features=[torch.cat(p) for p in parts], labels=torch.cat(labels).to(device),
            magnification=torch.cat(magnifications).to(device) if magnifications else None,
            indices=torch.cat(indices), failed=failed, counts=torch.cat(counts) if counts else None,
        )

    def __len__(self) -> int:
        return len(self.labels)

    @cached_property
    def _starts(self) -> torch.Tensor:
        return torch.cumsum(self.counts, 0) - self.counts

    def rows(self, image: int) -> torch.Tensor:
        """The feature rows of the image at ``image``: its tiles."""
        start = int(self._starts[image])
        return torch.arange(start, start + int(self.counts[image]))

    def batch(self, positions: list[int], draw: int | None = None, generator: torch.Generator | None = None):
        """(features, labels, magnifications, counts) of the images at ``positions``. Of a grid, every tile, or
        ``draw`` of them at random; counts is None when each row is one image (no grid, or one tile drawn)."""
        at = torch.as_tensor(positions, device=self.labels.device)
        mag = None if self.magnification is None else self.magnification[at]
        if self.counts is None:
            return [f[at] for f in self.features], self.labels[at], mag, None
        rows = [self.rows(p) for p in positions]
        if draw is not None:
            rows = [r[torch.randperm(len(r), generator=generator)[:draw]] for r in rows]
        counts = torch.tensor([len(r) for r in rows])
        taken = torch.cat(rows).to(self.features[0].device)
        return [f[taken] for f in self.features], self.labels[at], mag, None if draw == 1 else counts

    def batches(self, sampler: EpochSampler, batch_size: int, draw: int | None = None) -> "BankEpoch":
        """The epoch's draws in batches; a last batch of one is dropped (batch norm in a fusion cannot train on it).
        ``draw``: tiles per image of a grid, drawn anew each epoch (from the sampler's seed and epoch)."""
        positions = [position for position, _ in sampler]
        chunks = [positions[start : start + batch_size] for start in range(0, len(positions), batch_size)]
        generator = torch.Generator().manual_seed(sampler.seed * 100_003 + sampler.epoch)
        return BankEpoch(self, [chunk for chunk in chunks if len(chunk) > 1], draw, generator)

    @torch.no_grad()
    def predict(self, model: nn.Module, num_classes: int, autocast: Callable[[], ContextManager]) -> Predictions:
        """Validation on the bank, under the ``autocast`` the features were computed in.

        Under bf16 some features come out in bfloat16; outside autocast a fusion's
        float32 Linear refuses them, and the uncached path validates under autocast too.
        """
        model.eval()
        with autocast():
            logits = torch.cat([bank_logits(model, *self._eval_batch(chunk)).float() for chunk in self._eval_chunks()])
        losses = nn.functional.cross_entropy(logits, self.labels, reduction="none")
        return Predictions(
            indices=self.indices.numpy().astype(int), logits=logits.cpu().numpy(), labels=self.labels.cpu().numpy().astype(int),
            loss=float(losses.mean()), failed=self.failed,
        )

    def _eval_chunks(self, rows: int = 1024):
        """The images in order, about ``rows`` feature rows at a time: a grid's tiles count one each."""
        chunk, held = [], 0
        for position, size in enumerate([1] * len(self) if self.counts is None else self.counts.tolist()):
            if chunk and held + size > rows:
                yield chunk
                chunk, held = [], 0
            chunk.append(position)
            held += size
        if chunk:
            yield chunk

    def _eval_batch(self, positions: list[int]):
        features, _, mag, counts = self.batch(positions)
        return features, mag, counts


def bank_logits(model: nn.Module, features: list[torch.Tensor], magnification: torch.Tensor | None,
                counts: torch.Tensor | None) -> torch.Tensor:
    """Logits per image from backbone features: per row, pooled by the model's attention, or the mean of the
    tiles' probabilities (as log-probabilities) as evaluation pools a grid."""
    if counts is None or model.pools_tiles:
        return model.classify(features, magnification, counts)
    return pool_tile_logits(model.classify(features, per_tile(magnification, counts)), counts)


class FeatureStore:
    """Backbone features of every image computed so far, shared by the runs of one process (the folds of a
    cross-validation): an image's features depend on its pixels and the frozen backbones, never on the fold,
    so each image is passed through the backbones once however many folds train a head on it.

    Features are filed under what they depend on: the transform (by its printed steps) and a digest of the
    backbones' weights and buffers. A transform that does not print its steps is never shared. The store also
    keeps each image's LAB statistics, which every run's colour-only baseline is fitted on.
    """

    def __init__(self):
        self._rows: dict[tuple, dict[str, list[torch.Tensor] | str]] = {}
        self.computed = 0  # images passed through the backbones, for the cost benchmark
        self.colour: dict[str, np.ndarray] = {}  # LAB statistics by path, for the colour-only baseline of each run

    def bank(self, model: nn.Module, dataset, batch_size: int, num_workers: int, device) -> FeatureBank:
        transform = repr(dataset.transform)
        if " at 0x" in transform:  # object.__repr__: nothing says two such transforms do the same
            self.computed += len(dataset)
            return FeatureBank.compute(model, dataset, batch_size, num_workers, device)
        known = self._rows.setdefault((transform, dataset.max_pixels, repr(dataset.tiles), weights_digest(model.backbones)), {})
        missing = [i for i, path in enumerate(dataset.paths) if path not in known]
        if missing:
            self.computed += len(missing)
            part = _compute_or_none(model, Subset(dataset, missing), batch_size, num_workers, device)
            for path, reason in (part.failed if part else []):
                known[path] = reason
            # Kept in host memory: a store outlives the phase (and the fold) that filled it.
            features = [f.cpu() for f in part.features] if part else []
            for row, index in enumerate(part.indices.tolist() if part else []):
                rows = row if part.counts is None else part.rows(row)
                known[dataset.paths[index]] = [f[rows] for f in features]
            for index in missing:  # a batch of nothing but unreadable images reports them as failed too
                known.setdefault(dataset.paths[index], "unreadable")
        return self._assemble(dataset, known, device)

    @staticmethod
    def _assemble(dataset, known: dict, device) -> FeatureBank:
        """The bank FeatureBank.compute would have built: readable images in dataset order, labels from the dataset."""
        positions = [i for i, path in enumerate(dataset.paths) if not isinstance(known[path], str)]
        failed = [(path, known[path]) for path in dataset.paths if isinstance(known[path], str)]
        if not positions:
            raise DataError("no image of the split could be decoded to compute its features; see the warnings above")
        rows = [known[dataset.paths[i]] for i in positions]
        magnification = None
        if dataset.magnification is not None:
            magnification = torch.tensor([dataset.magnification[i] for i in positions], device=device)
        join, counts = torch.stack, None
        if dataset.tiles is not None:  # each image's entry holds its grid's tiles
            join, counts = torch.cat, torch.tensor([len(row[0]) for row in rows])
        return FeatureBank(
            features=[join([row[b] for row in rows]).to(device) for b in range(len(rows[0]))],
            labels=torch.tensor([dataset.labels[i] for i in positions], device=device),
            magnification=magnification, indices=torch.tensor(positions), failed=failed, counts=counts,
        )


def _compute_or_none(model, dataset, batch_size, num_workers, device) -> FeatureBank | None:
    try:
        return FeatureBank.compute(model, dataset, batch_size, num_workers, device)
    except DataError:  # every missing image unreadable: recorded as such, the split may still have others
        return None


def weights_digest(module: nn.Module) -> str:
    """A digest of every parameter and buffer: equal digests, equal features."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class BankEpoch(DataLoaderStateMixin):
    """One epoch of bank batches that tells Accelerate which batch is the last, as a prepared loader does.

    ``accelerator.accumulate`` steps the optimizer at the end of a prepared
    loader whatever the accumulation count; without this signal the gradients
    of an epoch's last few batches would be carried into the next epoch.
    """

    def __init__(self, bank: FeatureBank, chunks: list[list[int]], draw: int | None, generator: torch.Generator):
        self.bank, self.chunks, self.draw, self.generator = bank, chunks, draw, generator
        self.gradient_state = GradientState()
        self._drop_last = True  # nothing gathered for metrics: no remainder to report

    def __len__(self) -> int:
        return len(self.chunks)

    def __iter__(self):
        self.begin()
        try:
            for number, chunk in enumerate(self.chunks, 1):
                self.end_of_dataloader = number == len(self.chunks)
                yield self.bank.batch(chunk, self.draw, self.generator)
        finally:
            self.end()


def bank_sampler(bank: FeatureBank, balanced: bool, seed: int) -> EpochSampler:
    return EpochSampler(bank.labels.cpu().numpy().tolist(), balanced=balanced, seed=seed)

