"""The fold models of a finished cross-validation as one model: the mean of their calibrated probabilities."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from histofuse.errors import HistofuseError
from histofuse.rundir import RunDir


class EnsembleModule(nn.Module):
    """Fold models in one module; its output ``log(mean_k softmax(logits_k / T_k))`` is a logit vector whose
    softmax is the ensemble's probability, so exporters and TTA treat it as one model's logits."""

    def __init__(self, models: list[nn.Module], temperatures: list[float]):
        super().__init__()
        self.members = nn.ModuleList(models)
        self.register_buffer("temperatures", torch.tensor(temperatures, dtype=torch.float32), persistent=False)

    @property
    def pools_tiles(self) -> bool:
        return all(getattr(m, "pools_tiles", False) for m in self.members)

    def forward(
        self, image: torch.Tensor, magnification: torch.Tensor | None = None, counts: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self._mean([m(image, magnification, counts=counts) for m in self.members])

    def one_image(self, tiles: torch.Tensor) -> torch.Tensor:
        """Fold models that pool tiles by attention: the ensemble's logits (1, C) of one image from its tiles."""
        return self._mean([m.one_image(tiles) for m in self.members])

    def _mean(self, logits: list[torch.Tensor]) -> torch.Tensor:
        probs = [torch.softmax(x / t, dim=1) for x, t in zip(logits, self.temperatures)]
        return torch.log(torch.stack(probs).mean(0))


class FoldEnsemble:
    """A cross-validation's parent directory loaded for inference, with :class:`~histofuse.inference.LoadedRun`'s
    interface. Probabilities are the mean of the fold models' (each with its own TTA and temperature); the
    decision threshold is the one locked on the folds' validation predictions pooled."""

    def __init__(self, parent: Path):
        from histofuse.crossval.runner import finished_folds
        from histofuse.evaluation.fitting import EvaluationState
        from histofuse.inference import LoadedRun

        self.run_dir = Path(parent)
        saved = RunDir(self.run_dir).ensemble
        if not saved.is_file():
            raise HistofuseError(
                f"'{parent}' has no {saved.name}: the cross-validation has not finished; continue it with "
                f"histofuse run --resume {parent}, or use one fold with --fold N"
            )
        self.folds = finished_folds(self.run_dir)
        self.members = [LoadedRun(d) for d in self.folds]
        first = self.members[0]
        self.recipe, self.classes = first.recipe, first.classes
        self.transform, self.multi_crop_transform = first.transform, first.multi_crop_transform
        self.state = EvaluationState(None, None, json.loads(saved.read_text())["calibration"])
        self.normalizer = self.normalizer_name = None  # each fold fitted its own: see preprocess
        self.model = EnsembleModule([m.model for m in self.members], [m.calibration("none")["temperature"] for m in self.members]).eval()

    def calibration(self, tta: str) -> dict:
        """The ensemble's threshold for ``tta``; temperature 1, as each fold's probabilities carry their own."""
        if tta not in self.state.calibration:
            self.state.calibration[tta] = {"threshold": self._threshold_from_folds(tta), "temperature": 1.0}
        return self.state.calibration[tta]

    def calibrated(self, tta: str) -> bool:
        """Whether every fold locked its temperature (and threshold) for ``tta``: then so has the ensemble."""
        return all(m.calibrated(tta) for m in self.members)

    def _threshold_from_folds(self, tta: str) -> float | None:
        """A mode the cross-validation did not lock (the folds calibrated it later, with histofuse evaluate): lock
        it now, the same way, when every fold calibrated it on its validation split."""
        from histofuse.crossval.pooling import ensemble_threshold

        if not self.calibrated(tta):
            return None
        return ensemble_threshold(self.folds, tta, self.classes, self.recipe.evaluation.threshold)

    def adapt(self, images) -> None:
        """Nothing to measure: the ensemble applies no normalizer of its own."""

    def transform_for(self, tta: str):
        return self.multi_crop_transform if tta == "crops5" else self.transform

    def normalized(self, rgb: np.ndarray, normalize: bool) -> np.ndarray:
        if normalize:
            raise HistofuseError(
                "the fold ensemble has no single stain normalizer (each fold fitted its own on its training patients): "
                "histofuse predict --normalize normalizes per fold; elsewhere choose one fold with --fold N"
            )
        return rgb

    def preprocess(self, rgb: np.ndarray, normalize: bool, tta: str = "none") -> torch.Tensor:
        return self.transform_for(tta)(self.normalized(rgb, normalize))

    @torch.no_grad()
    def probabilities(self, batch: torch.Tensor, tta: str, tile_counts: torch.Tensor | None = None) -> np.ndarray:
        return np.mean([m.probabilities(batch, tta, tile_counts) for m in self.members], axis=0)

    def decide(self, probs: np.ndarray, tta: str) -> np.ndarray:
        threshold = self.calibration(tta)["threshold"]
        if threshold is None or probs.shape[1] != 2:
            return probs.argmax(1)
        return (probs[:, 1] >= threshold).astype(int)
