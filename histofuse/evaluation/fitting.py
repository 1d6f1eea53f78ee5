"""What evaluation fits once, on the run's own data: the stain normalizer and the colour baseline on training
images, threshold and temperature on validation predictions."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from histofuse.calibration import fit_temperature, softmax, youden_threshold
from histofuse.color_baseline import ColorBaseline, lab_stats
from histofuse.data.decode import decoded_images
from histofuse.recipe import Recipe, validate_options
from histofuse.reporting import log
from histofuse.rundir import RunDir


@dataclass
class EvaluationState:
    """What evaluation fitted, saved with the run so later evaluations reuse it.

    Threshold and temperature are fitted on the validation split once per TTA
    mode (``calibration[mode] = {"threshold": ..., "temperature": ...}``): views
    change the score distribution, so a cut fitted without TTA does not hold with it.
    """

    normalizer: dict | None  # {"name": ..., "options": ..., "state": ...}
    color_baseline: dict | None
    calibration: dict[str, dict] = field(default_factory=dict)

    def save(self, run_dir: Path) -> None:
        RunDir(run_dir).evaluation.write_text(json.dumps(vars(self), indent=2))

    @classmethod
    def load(cls, run_dir: Path) -> "EvaluationState":
        return cls(**json.loads(RunDir(run_dir).evaluation.read_text()))


def fit_on_training_split(
    recipe: Recipe, registry, train: pd.DataFrame, classes: list[str], normalize: bool, colour_cache: dict | None = None
):
    """One streaming pass over training images: stain normalizer statistics and colour baseline features.

    ``colour_cache`` ({path: LAB statistics}) is shared by runs over the same images (the folds of a
    cross-validation): an image measured once is not decoded again for the baseline alone."""
    cfg = recipe.evaluation
    normalizer = make_normalizer(registry, cfg.normalizer.name, cfg.normalizer.options) if normalize else None
    if normalizer is None and not cfg.color_baseline:
        return None, None
    chosen = sample_indices(len(train), cfg.normalizer.sample, recipe.seed)
    paths = [train["path"].iloc[i] for i in chosen]
    labels = [classes.index(train["label"].iloc[i]) for i in chosen]
    cache = {} if colour_cache is None else colour_cache

    def images(todo: list[str]):
        for position, rgb in decoded_images(todo):  # unreadable ones were reported during training
            cache[todo[position]] = lab_stats(rgb)
            yield rgb

    fits = normalizer is not None and not getattr(normalizer, "fitted", False)
    log.info(f"fitting on {len(paths)} training images: " + ", ".join(
        x for x, on in (("stain normalizer", fits), ("colour baseline", cfg.color_baseline)) if on
    ))
    if fits:
        fit_normalizer(normalizer, paths, images)
    else:
        for _ in images([p for p in paths if p not in cache]):
            pass
    measured = [(cache[p], label) for p, label in zip(paths, labels) if p in cache]
    stats, kept = [s for s, _ in measured], [label for _, label in measured]
    baseline = None
    if cfg.color_baseline and len(set(kept)) > 1:
        baseline = ColorBaseline().fit(np.stack(stats), np.asarray(kept))
    saved = None
    if normalizer is not None:
        saved = {"name": cfg.normalizer.name, "options": cfg.normalizer.options, "state": normalizer.state}
    return saved, baseline


def sample_indices(count: int, sample: int | None, seed: int) -> list[int]:
    """``sample`` of ``count`` items drawn without replacement, in their order; every one when ``sample`` is unset
    or not smaller. The same seed draws the same images wherever a normalizer is fitted."""
    if not sample or sample >= count:
        return list(range(count))
    return sorted(int(i) for i in np.random.default_rng(seed).choice(count, sample, replace=False))


def make_normalizer(registry, name: str, options: dict):
    spec = registry.get("normalizer", name)
    return spec.build(**validate_options(spec, options))


def fit_normalizer(normalizer, paths: list[str], images=None):
    """Fit ``normalizer`` over the images at ``paths`` in one streaming pass (unreadable ones skipped), unless it
    came fitted (a preset); ``images(paths)`` replaces the plain decoding, e.g. to measure colour on the way."""
    if not getattr(normalizer, "fitted", False):
        normalizer.fit(images(paths) if images is not None else (rgb for _, rgb in decoded_images(paths)))
    return normalizer


def calibrate(recipe: Recipe, val_logits: np.ndarray, val_labels: np.ndarray, num_classes: int) -> dict:
    """Threshold (two classes) and temperature from validation predictions; threshold None means argmax."""
    cfg = recipe.evaluation
    temperature = fit_temperature(val_logits, val_labels) if cfg.temperature_scaling else 1.0
    threshold = None
    if num_classes == 2:
        if cfg.threshold == "youden":
            threshold = youden_threshold(val_labels, softmax(val_logits, temperature)[:, 1])
        elif isinstance(cfg.threshold, float):
            threshold = cfg.threshold
    return {"threshold": threshold, "temperature": temperature}


def build_normalizer(registry, saved: dict | None):
    if saved is None:
        return None
    spec = registry.get("normalizer", saved["name"])
    normalizer = spec.build(**validate_options(spec, saved["options"]))
    normalizer.load_state(saved["state"])
    return normalizer
