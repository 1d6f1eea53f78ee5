"""The same sets evaluated with no stain normalization and under each of several normalizers, side by side.

Each normalizer is fitted on the training split with its default options (the
recipe's own options for ``evaluation.normalizer.name``); the threshold and
temperature are the run's, locked on the validation split; no QC and no TTA,
so the table isolates what normalization alone changes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from histofuse.calibration import softmax
from histofuse.color_baseline import ColorBaseline
from histofuse.metrics import classification_metrics
from histofuse.evaluation.fitting import fit_normalizer, make_normalizer, sample_indices
from histofuse.recipe import Recipe
from histofuse.reporting import log
from histofuse.rundir import RunDir


def fit_method(recipe: Recipe, registry, name: str, train: pd.DataFrame):
    """``name`` fitted on the training split's sample, with the recipe's options where it is the recipe's normalizer."""
    cfg = recipe.evaluation.normalizer
    normalizer = make_normalizer(registry, name, cfg.options if name == cfg.name else {})
    paths = [train["path"].iloc[i] for i in sample_indices(len(train), cfg.sample, recipe.seed)]
    return fit_normalizer(normalizer, paths)


def compare_normalizers(evaluator, recipe: Recipe, registry, train: pd.DataFrame, sets: dict[str, pd.DataFrame]) -> dict:
    """{set: {method: {auc, accuracy, balanced_accuracy, images, colour_only_auc, unchanged}}} for method in none + the
    recipe's list; ``unchanged`` ({reason: tiles}, normalizers only) counts tiles that went to the model unnormalized;
    ``colour_only_auc`` is the colour-only baseline (fitted on the raw training split) on the same images as the model
    saw them, so a normalizer that helps the model only by matching colours shows as a rise of both."""
    calibration = evaluator.calibration("none")
    classes = evaluator.classes
    baseline = ColorBaseline.from_json(evaluator.state.color_baseline) if evaluator.state.color_baseline else None
    result: dict[str, dict] = {name: {} for name in sets}
    for method in ["none", *recipe.evaluation.compare_normalizers]:
        normalizer = None
        if method != "none":
            log.info(f"stain comparison: fitting {method} on {len(train)} training images")
            normalizer = fit_method(recipe, registry, method, train)
        for name, frame in sets.items():
            predictions, normalization = evaluator.predict_frame(
                frame, "none", normalize=normalizer is not None, normalizer=normalizer, method=method
            )
            probs = softmax(predictions.logits, calibration["temperature"])
            metrics = classification_metrics(predictions.labels, probs, classes, calibration["threshold"])
            entry = {k: metrics[k] for k in ("auc", "accuracy", "balanced_accuracy")}
            entry["images"] = int(len(predictions.labels))
            if baseline is not None and predictions.color is not None:
                colour = baseline.predict_proba(predictions.color, len(classes))
                entry["colour_only_auc"] = classification_metrics(predictions.labels, colour, classes)["auc"]
            if normalization is not None:
                entry["unchanged"] = normalization["unchanged"]
            result[name][method] = entry
    return result


def save(run_dir: Path, comparison: dict) -> None:
    RunDir(run_dir).stain_comparison.write_text(json.dumps(comparison, indent=2))


def comparison_cell(entry: dict) -> str:
    """AUC / accuracy, the colour-only AUC on the same images, and how many tiles the normalizer left unchanged
    (that many were compared unnormalized)."""
    auc = "n/a" if entry["auc"] is None else f"{entry['auc']:.3f}"
    cell = f"{auc} / {entry['accuracy']:.2f}"
    if entry.get("colour_only_auc") is not None:
        cell += f", colour-only {entry['colour_only_auc']:.3f}"
    if "unchanged" in entry:
        cell += f", {sum(entry['unchanged'].values())} unchanged"
    return cell


def unchanged_reasons(comparison: dict) -> list[tuple[str, str, str, int]]:
    """(set, method, reason, tiles) for every reason a normalizer left tiles of a set unchanged."""
    return [
        (name, method, reason, count)
        for name, row in comparison.items() for method, entry in row.items()
        for reason, count in entry.get("unchanged", {}).items()
    ]
