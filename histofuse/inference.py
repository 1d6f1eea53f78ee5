"""A finished run loaded for inference: only what the run saved (weights, classes, normalizer, calibration)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from histofuse.errors import HistofuseError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


class LoadedRun:
    """The model of ``run_dir`` in eval mode, with the run's eval transform, normalizer and locked calibration."""

    def __init__(self, run_dir: Path):
        from histofuse.evaluation import EvaluationState, build_normalizer, make_eval_transform
        from histofuse.model import build_model
        from histofuse.recipe import load_recipe
        from histofuse.registry import default_registry
        from histofuse.training.checkpoint import load_weights

        self.run_dir = Path(run_dir)
        missing = [f for f in ("recipe.toml", "model.safetensors", "model.json") if not (self.run_dir / f).is_file()]
        if missing:
            raise HistofuseError(
                f"'{self.run_dir}' is not a finished run directory ({', '.join(missing)} missing); "
                "give the folder that histofuse run printed at its end"
            )
        self.recipe = load_recipe(self.run_dir / "recipe.toml")
        self.registry = default_registry()
        self.meta = json.loads((self.run_dir / "model.json").read_text())
        self.classes: list[str] = self.meta["classes"]
        self.model = build_model(self.recipe, self.registry, len(self.classes), pretrained=False)
        load_weights(self.model, self.run_dir)
        self.model.eval()
        self.transform = make_eval_transform(self.registry.pm.hook, self.recipe.data)
        self.multi_crop_transform = make_eval_transform(self.registry.pm.hook, self.recipe.data, "crops5")
        state_file = self.run_dir / "evaluation.json"
        self.state = EvaluationState.load(self.run_dir) if state_file.is_file() else EvaluationState(None, None, {})
        self.normalizer = build_normalizer(self.registry, self.state.normalizer)

    @property
    def normalizer_name(self) -> str | None:
        return None if self.state.normalizer is None else self.state.normalizer["name"]

    def calibration(self, tta: str) -> dict:
        """The validation-locked threshold and temperature for ``tta``; argmax at T = 1 if the run never fitted one."""
        return self.state.calibration.get(tta) or {"threshold": None, "temperature": 1.0}

    def calibrated(self, tta: str) -> bool:
        """Whether the run fitted a threshold and temperature for ``tta``: callers tell the user when it did not."""
        return bool(self.state.calibration.get(tta))

    def adapt(self, images) -> None:
        """Let a ``source = "dataset"`` normalizer measure ``images``, the set about to be normalized."""
        if self.normalizer is not None and hasattr(self.normalizer, "adapt"):
            self.normalizer.adapt(images)

    def transform_for(self, tta: str):
        """The eval transform, or for multi-crop TTA the whole resized square its views are cut from."""
        return self.multi_crop_transform if tta == "crops5" else self.transform

    def preprocess(self, rgb: np.ndarray, normalize: bool, tta: str = "none") -> torch.Tensor:
        if normalize:
            if self.normalizer is None:
                raise HistofuseError("this run saved no stain normalizer (no [[evaluate]] set had normalize = true)")
            rgb = self.normalizer.transform(rgb)
        return self.transform_for(tta)(rgb)

    @torch.no_grad()
    def probabilities(self, batch: torch.Tensor, tta: str) -> np.ndarray:
        from histofuse.calibration import softmax
        from histofuse.tta import predict_logits

        logits = predict_logits(self.model, batch, tta, crop_size=self.recipe.data.image_size).numpy()
        return softmax(logits, self.calibration(tta)["temperature"])

    def decide(self, probs: np.ndarray, tta: str) -> np.ndarray:
        """Class indices: the locked threshold on the positive class when there is one, else the most probable."""
        threshold = self.calibration(tta)["threshold"]
        if threshold is None or probs.shape[1] != 2:
            return probs.argmax(1)
        return (probs[:, 1] >= threshold).astype(int)


def open_run(run_dir: Path, fold: int | None = None):
    """A finished run, or a cross-validation's parent: its fold ensemble, or with ``fold`` that one fold's run."""
    from histofuse.crossval import fold_dir, is_crossval_dir

    run_dir = Path(run_dir)
    if not is_crossval_dir(run_dir):
        if fold is not None:
            raise HistofuseError(f"--fold {fold}: '{run_dir}' is a single run, not a cross-validation; leave out --fold")
        return LoadedRun(run_dir)
    if fold is None:
        from histofuse.crossval.ensemble import FoldEnsemble

        return FoldEnsemble(run_dir)
    target = fold_dir(run_dir, fold)
    if not target.is_dir():
        raise HistofuseError(f"--fold {fold}: '{run_dir}' has no {target.name}/")
    return LoadedRun(target)


def expand_inputs(inputs: list[Path]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Image files named or found (recursively) in folders; paths that do not exist are returned as failures."""
    found, failed = [], []
    for item in inputs:
        if item.is_dir():
            found += sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif item.exists():
            found.append(item)
        else:
            failed.append((str(item), "no such file or folder"))
    return found, failed
