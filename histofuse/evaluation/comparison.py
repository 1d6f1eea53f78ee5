"""The same sets evaluated with no stain normalization and under each of several normalizers, side by side.

Each normalizer is fitted on the training split with its default options (the
recipe's own options for ``evaluation.normalizer.name``); the threshold and
temperature are the run's, locked on the validation split; no QC and no TTA,
so the table isolates what normalization alone changes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from rich.table import Table

from histofuse.calibration import softmax
from histofuse.color_baseline import ColorBaseline
from histofuse.data.decode import decoded_images
from histofuse.metrics import classification_metrics
from histofuse.recipe import Recipe, validate_options
from histofuse.rundir import RunDir



def fit_normalizer(recipe: Recipe, registry, name: str, train: pd.DataFrame):
    spec = registry.get("normalizer", name)
    cfg = recipe.evaluation.normalizer
    options = cfg.options if name == cfg.name else {}
    normalizer = spec.build(**validate_options(spec, options))
    paths = train["path"].tolist()
    if cfg.sample and cfg.sample < len(paths):
        paths = [paths[i] for i in sorted(np.random.default_rng(recipe.seed).choice(len(paths), cfg.sample, replace=False))]
    normalizer.fit(rgb for _, rgb in decoded_images(paths))
    return normalizer


def compare_normalizers(evaluator, recipe: Recipe, registry, train: pd.DataFrame, sets: dict[str, pd.DataFrame], console) -> dict:
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
            console.print(f"stain comparison: fitting {method} on {len(train)} training images")
            normalizer = fit_normalizer(recipe, registry, method, train)
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


def comparison_table(comparison: dict) -> Table:
    methods = list(next(iter(comparison.values())))
    table = Table(title="stain normalization side by side (AUC / accuracy, colour-only AUC, tiles left unchanged; no QC, no TTA; "
                        "threshold from validation)")
    table.add_column("set")
    for method in methods:
        table.add_column(method, justify="right")
    for name, row in comparison.items():
        table.add_row(name, *(comparison_cell(row[method]) for method in methods))
    reasons = unchanged_reasons(comparison)
    if reasons:
        table.caption = "left unchanged: " + "; ".join(f"{name} {method}: {reason} ({count})" for name, method, reason, count in reasons)
    return table


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
