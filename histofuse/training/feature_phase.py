"""A head-only phase trained on backbone features computed once, instead of on images every epoch."""

from __future__ import annotations

import time
from functools import partial

from histofuse.errors import HistofuseError
from histofuse.recipe import PhaseConfig, Recipe
from histofuse.reporting import log
from histofuse.training.accel import unwrap
from histofuse.training.feature_cache import FeatureStore, bank_sampler
from histofuse.training.predict import Predictions


def trains_on_cached_features(phase: PhaseConfig, model, num_processes: int, tiled: bool) -> bool:
    """As the recipe says, else for a probe of a foundation model: frozen backbones, every image seen the same way.
    Never unasked with tiles: the cache then holds every tile of every grid, and training draws from the grids."""
    if phase.cache_features is not None:
        return phase.cache_features
    if tiled:
        return False
    frozen_and_fixed = (
        not any(p.requires_grad for b in model.backbones.values() for p in b.parameters())
        and phase.augment == "none" and phase.stain_jitter == 0
    )
    foundation = any(getattr(b, "foundation_model", False) for b in model.backbones.values())
    return frozen_and_fixed and foundation and num_processes == 1


class CachedFeaturePhase:
    """The training and validation banks (one pass of the frozen backbones each), and epochs over them."""

    def __init__(self, *, accelerator, recipe: Recipe, index: int, model, train_loader, val_loader, store: FeatureStore | None):
        if accelerator.num_processes > 1:
            raise HistofuseError(
                f"phases[{index}].cache_features runs on one process (the features of a head-only phase fit one); "
                "launch without several processes, or set cache_features = false"
            )
        self.accelerator, self.batch_size = accelerator, recipe.data.batch_size
        self.head = unwrap(accelerator, model)
        started = time.perf_counter()
        size = recipe.data.eval_batch_size or recipe.data.batch_size
        store = store or FeatureStore()
        before = store.computed
        # With tiles, each image's evaluation grid is computed once; each epoch draws its training tiles from it.
        training = train_loader.dataset.as_grid() if recipe.data.tiles is not None else train_loader.dataset
        self.draw = recipe.data.tiles.resolved(recipe.data.image_size).bag if recipe.data.tiles is not None else None
        with accelerator.autocast():
            self.train = store.bank(self.head, training, size, train_loader.num_workers, accelerator.device)
            self.val = store.bank(self.head, val_loader.dataset, size, val_loader.num_workers, accelerator.device)
        self.failed = self.train.failed + self.val.failed
        seen = len(self.train) + len(self.val) + len(self.failed)
        reused = seen - (store.computed - before)
        log.info(
            f"cached features of {len(self.train)} training and {len(self.val)} validation images in "
            f"{time.perf_counter() - started:.1f} s" + (f" ({reused} computed by an earlier run of this process)" if reused else "")
        )
        self.sampler = bank_sampler(self.train, recipe.training.sampler == "balanced", recipe.seed * 1000 + index)

    def train_epoch(self, epoch: int, step, criterion) -> float:
        """``step(model, step_number, compute_loss)`` is the trainer's optimizer step; one process (see __init__)."""
        self.sampler.set_epoch(epoch)
        self.head.train()
        total, seen = 0.0, 0
        batches = self.train.batches(self.sampler, self.batch_size, self.draw)
        for number, (features, labels, magnification, counts) in enumerate(batches, 1):
            loss = step(self.head, number, partial(self._loss, criterion, features, labels, magnification, counts))
            total += loss.item() * len(labels)
            seen += len(labels)
        return total / max(seen, 1)

    def validate(self, num_classes: int) -> Predictions:
        return self.val.predict(self.head, num_classes, self.accelerator.autocast)

    def _loss(self, criterion, features, labels, magnification, counts):
        with self.accelerator.autocast():  # the head is called alone, not through the prepared model's autocast forward
            return criterion(self.head.classify(features, magnification, counts), labels)
