"""A finished run loaded for inference (only what the run saved: weights, classes, normalizer, calibration),
and its predictions on image files and folders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, get_args

import numpy as np
import pandas as pd
import torch

from histofuse.errors import HistofuseError
from histofuse.rundir import RunDir

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


class LoadedRun:
    """The model of ``run_dir`` in eval mode, with the run's eval transform, normalizer and locked calibration."""

    def __init__(self, run_dir: Path):
        from histofuse.data.eval_loader import make_eval_transform
        from histofuse.evaluation.fitting import EvaluationState, build_normalizer
        from histofuse.model import build_model
        from histofuse.recipe import load_recipe
        from histofuse.registry import default_registry
        from histofuse.training.checkpoint import load_weights

        self.run_dir = Path(run_dir)
        layout = RunDir(self.run_dir)
        missing = [f.name for f in (layout.recipe_file, layout.weights, layout.model_info) if not f.is_file()]
        if missing:
            raise HistofuseError(
                f"'{self.run_dir}' is not a finished run directory ({', '.join(missing)} missing); "
                "give the folder that histofuse run printed at its end"
            )
        self.recipe = load_recipe(layout.recipe_file)
        self.registry = default_registry()
        self.meta = json.loads(layout.model_info.read_text())
        self.classes: list[str] = self.meta["classes"]
        self.model = build_model(self.recipe, self.registry, len(self.classes), pretrained=False)
        load_weights(self.model, self.run_dir)
        self.model.eval()
        self.transform = make_eval_transform(self.registry.pm.hook, self.recipe.data)
        self.multi_crop_transform = make_eval_transform(self.registry.pm.hook, self.recipe.data, "crops5")
        self.state = EvaluationState.load(self.run_dir) if layout.evaluation.is_file() else EvaluationState(None, None, {})
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

    def normalized(self, rgb: np.ndarray, normalize: bool) -> np.ndarray:
        if not normalize:
            return rgb
        if self.normalizer is None:
            raise HistofuseError("this run saved no stain normalizer (no [[evaluate]] set had normalize = true)")
        return self.normalizer.transform(rgb)

    def preprocess(self, rgb: np.ndarray, normalize: bool, tta: str = "none") -> torch.Tensor:
        return self.transform_for(tta)(self.normalized(rgb, normalize))

    @torch.no_grad()
    def probabilities(self, batch: torch.Tensor, tta: str, tile_counts: torch.Tensor | None = None) -> np.ndarray:
        """Calibrated probabilities per image; ``tile_counts``: the batch is grids of tiles, pooled per image."""
        from histofuse.calibration import softmax
        from histofuse.training.predict import pooled_tile_logits
        from histofuse.tta import predict_logits

        if tile_counts is None:
            logits = predict_logits(self.model, batch, tta, crop_size=self.recipe.data.image_size)
        else:
            logits = pooled_tile_logits(self.model, batch, tile_counts, tta, crop_size=self.recipe.data.image_size)
        return softmax(logits.numpy(), self.calibration(tta)["temperature"])

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


def predict_paths(run, inputs: list[Path], *, tta: str, normalize: bool, batch_size: int, num_workers: int,
                  progress: Callable[[int, int], None] | None = None, mpp: float | None = None) -> pd.DataFrame:
    """One row per input image: probabilities and the decided class, or the reason it could not be read; with
    ``normalize``, also why the normalizer left a tile unchanged (a background or flat tile, say). ``progress``
    hears how many images each batch settled, and of how many. ``mpp``: the images' µm per pixel, for a run
    trained at one scale (data.mpp); unset, they are taken to be at the run's scale already."""
    from histofuse.data.decode import decoded_images
    from histofuse.data.tiles import check_tta
    from histofuse.recipe import TTA

    if tta not in get_args(TTA):
        raise HistofuseError(f"--tta: expected one of {', '.join(get_args(TTA))}, got '{tta}'")
    check_tta(run.recipe.data, tta, "--tta")
    if normalize and hasattr(run, "members"):
        return _ensemble_normalized(run, inputs, tta=tta, batch_size=batch_size, num_workers=num_workers, progress=progress,
                                    mpp=mpp)
    if normalize and run.normalizer is None:
        raise HistofuseError("--normalize: this run saved no stain normalizer (no [[evaluate]] set had normalize = true)")
    paths, failed = expand_inputs(inputs)
    if not paths and not failed:
        raise HistofuseError("no image files found in " + ", ".join(map(str, inputs)) + f" (looked for {', '.join(IMAGE_SUFFIXES)})")
    frame = pd.DataFrame({"path": [str(p) for p in paths]})
    if run.recipe.data.mpp is not None:
        frame["mpp"] = run.recipe.data.mpp if mpp is None else mpp
    rows, unchanged = [], {}
    if paths:
        if normalize:
            run.adapt(rgb for _, rgb in decoded_images(frame["path"]))
        for batch in _batches(run, frame, tta, normalize, batch_size, num_workers, unchanged):
            failed += batch["failed"]
            if batch["image"] is not None:
                probs = run.probabilities(batch["image"], tta, batch.get("tile_counts"))
                decided = run.decide(probs, tta)
                for index, p, d in zip(batch["index"].tolist(), probs, decided):
                    rows.append({"path": frame["path"][index], "predicted": run.classes[d], "error": "",
                                 "unnormalized": unchanged.get(index, ""), **{f"prob_{c}": float(v) for c, v in zip(run.classes, p)}})
            if progress is not None:
                progress(len(batch["failed"]) + (0 if batch["image"] is None else len(batch["index"])), len(paths))
    rows += [{"path": path, "predicted": "", "error": reason, "unnormalized": ""} for path, reason in failed]
    names = ["path", "predicted", *[f"prob_{c}" for c in run.classes], "error"] + (["unnormalized"] if normalize else [])
    result = pd.DataFrame(rows, columns=names)
    order = {str(p): i for i, p in enumerate(paths)}
    return result.sort_values("path", key=lambda s: s.map(lambda p: order.get(p, len(order)))).reset_index(drop=True)


def _ensemble_normalized(run, inputs, *, tta: str, batch_size: int, num_workers: int,
                         progress: Callable[[int, int], None] | None, mpp: float | None) -> pd.DataFrame:
    """A fold ensemble with stain normalization: each fold predicts with its own normalizer (fitted on its own
    training patients), then the probabilities are averaged and decided at the ensemble's threshold."""
    members = len(run.members)
    # One bar for the whole ensemble: every fold predicts every image.
    each = None if progress is None else (lambda done, total: progress(done, total * members))
    frames = [predict_paths(m, inputs, tta=tta, normalize=True, batch_size=batch_size, num_workers=num_workers, progress=each,
                            mpp=mpp)
              for m in run.members]
    out = frames[0].copy()
    columns = [f"prob_{c}" for c in run.classes]
    out[columns] = sum(f[columns].to_numpy() for f in frames) / len(frames)
    readable = out["error"] == ""
    out.loc[readable, "predicted"] = [run.classes[i] for i in run.decide(out.loc[readable, columns].to_numpy(), tta)]
    # A tile one fold's normalizer left unchanged is reported once, with that reason.
    out["unnormalized"] = [next((r for r in reasons if r), "") for reasons in zip(*(f["unnormalized"] for f in frames))]
    return out


def _batches(run, frame: pd.DataFrame, tta: str, normalize: bool, batch_size: int, num_workers: int, unchanged: dict):
    """The loader's batches; normalizing, each tile the normalizer left unchanged lands in ``unchanged`` by index
    (the normalizer runs in the workers, whose own counts never reach this process)."""
    from histofuse.data.eval_loader import collect_unchanged, make_eval_loader
    from histofuse.data.tiles import table_options

    loader = make_eval_loader(frame, run.classes, run.transform_for(tta), run.normalizer if normalize else None,
                              batch_size, num_workers, max_pixels=run.recipe.data.max_image_pixels,
                              **table_options(run.recipe.data, frame, False, "the images"))
    return collect_unchanged(loader, unchanged)


