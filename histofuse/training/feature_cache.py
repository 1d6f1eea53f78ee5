"""Cached backbone features for a phase that trains only fusion + head on fixed inputs.

When every backbone is frozen and each image is seen the same way every epoch,
the backbones compute the same features every epoch; computing them once turns
each further epoch into a pass over a small head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ContextManager

import torch
from accelerate.data_loader import DataLoaderStateMixin
from accelerate.state import GradientState
from torch import nn

from histofuse.data.loading import make_loader
from histofuse.data.sampling import EpochSampler
from histofuse.errors import DataError
from histofuse.training.predict import Predictions


@dataclass
class FeatureBank:
    """Backbone outputs for the decodable images of one split, with their labels, magnifications and dataset indices."""

    features: list[torch.Tensor]
    labels: torch.Tensor
    magnification: torch.Tensor | None
    indices: torch.Tensor
    failed: list[tuple[str, str]]

    @classmethod
    @torch.no_grad()
    def compute(cls, model: nn.Module, dataset, batch_size: int, num_workers: int, device) -> "FeatureBank":
        model.eval()
        parts: list[list[torch.Tensor]] = [[] for _ in model.backbones]
        labels, magnifications, indices, failed = [], [], [], []
        for batch in make_loader(dataset, batch_size, train=False, num_workers=num_workers):
            failed += batch["failed"]
            if batch["image"] is None:
                continue
            for store, output in zip(parts, model.features(batch["image"].to(device))):
                store.append(output)
            labels.append(batch["label"])
            indices.append(batch["index"])
            if "magnification" in batch:
                magnifications.append(batch["magnification"])
        if not labels:
            raise DataError("no image of the split could be decoded to compute its features; see the warnings above")
        return cls(
            features=[torch.cat(p) for p in parts], labels=torch.cat(labels).to(device),
            magnification=torch.cat(magnifications).to(device) if magnifications else None,
            indices=torch.cat(indices), failed=failed,
        )

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, positions: list[int]) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor | None]:
        at = torch.as_tensor(positions, device=self.labels.device)
        mag = None if self.magnification is None else self.magnification[at]
        return [f[at] for f in self.features], self.labels[at], mag

    def batches(self, sampler: EpochSampler, batch_size: int) -> "BankEpoch":
        """The epoch's draws in batches; a last batch of one is dropped (batch norm in a fusion cannot train on it)."""
        positions = [position for position, _ in sampler]
        chunks = [positions[start : start + batch_size] for start in range(0, len(positions), batch_size)]
        return BankEpoch(self, [chunk for chunk in chunks if len(chunk) > 1])

    @torch.no_grad()
    def predict(self, model: nn.Module, num_classes: int, autocast: Callable[[], ContextManager]) -> Predictions:
        """Validation on the bank, under the ``autocast`` the features were computed in.

        Under bf16 some features come out in bfloat16; outside autocast a fusion's
        float32 Linear refuses them, and the uncached path validates under autocast too.
        """
        model.eval()
        with autocast():
            logits = torch.cat([
                model.classify(*self._eval_batch(start, 1024)).float() for start in range(0, len(self), 1024)
            ])
        losses = nn.functional.cross_entropy(logits, self.labels, reduction="none")
        return Predictions(
            indices=self.indices.numpy().astype(int), logits=logits.cpu().numpy(), labels=self.labels.cpu().numpy().astype(int),
            loss=float(losses.mean()), failed=self.failed,
        )

    def _eval_batch(self, start: int, size: int):
        features, _, mag = self.batch(list(range(start, min(start + size, len(self)))))
        return features, mag


class BankEpoch(DataLoaderStateMixin):
    """One epoch of bank batches that tells Accelerate which batch is the last, as a prepared loader does.

    ``accelerator.accumulate`` steps the optimizer at the end of a prepared
    loader whatever the accumulation count; without this signal the gradients
    of an epoch's last few batches would be carried into the next epoch.
    """

    def __init__(self, bank: FeatureBank, chunks: list[list[int]]):
        self.bank, self.chunks = bank, chunks
        self.gradient_state = GradientState()
        self._drop_last = True  # nothing gathered for metrics: no remainder to report

    def __len__(self) -> int:
        return len(self.chunks)

    def __iter__(self):
        self.begin()
        try:
            for number, chunk in enumerate(self.chunks, 1):
                self.end_of_dataloader = number == len(self.chunks)
                yield self.bank.batch(chunk)
        finally:
            self.end()


def bank_sampler(bank: FeatureBank, balanced: bool, seed: int) -> EpochSampler:
    return EpochSampler(bank.labels.cpu().numpy().tolist(), balanced=balanced, seed=seed)

