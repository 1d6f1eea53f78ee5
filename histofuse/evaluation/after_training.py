"""After training: the best weights evaluated on the test split, every [[evaluate]] set and, when the recipe
asks, under each stain normalizer side by side."""

from __future__ import annotations

import json
from pathlib import Path

from histofuse.errors import HistofuseError
from histofuse.reporting import log
from histofuse.rundir import RunDir


def evaluate_after_training(*, recipe, registry, accelerator, model, classes, frames, run_dir, colour_cache=None) -> dict:
    """Fit normalizer/baseline on training and calibration on validation; evaluate test, then [[evaluate]] sets.

    metrics.json is written after the test split and after every external set, and
    a failing external set is recorded as an error: nothing a long run produced is lost.
    """
    from histofuse.evaluation.fitting import EvaluationState, fit_on_training_split
    from histofuse.evaluation.sets import Evaluator

    normalize = any(e.normalize for e in recipe.evaluate)
    normalizer, baseline = fit_on_training_split(recipe, registry, frames["train"], classes, normalize, colour_cache)
    state = EvaluationState(normalizer, baseline.to_json() if baseline else None)
    evaluator = Evaluator(
        accelerator=accelerator, model=model, recipe=recipe, registry=registry, classes=classes, state=state,
        val_frame=frames["val"], run_dir=run_dir,
    )
    calibration = evaluator.calibration(recipe.evaluation.tta)
    if calibration["threshold"] is not None:
        log.info(
            f"decision threshold {calibration['threshold']:.3f} ({recipe.evaluation.threshold}, from the validation "
            f"split), temperature {calibration['temperature']:.3f}"
        )
    metrics = {"test": evaluator.evaluate("test", frames["test"], tta=recipe.evaluation.tta, normalize=False, qc=None)}
    write_metrics(accelerator, run_dir, metrics)
    for external in recipe.evaluate:
        try:
            metrics[external.name] = evaluator.evaluate_external(external)
        except HistofuseError as exc:
            log.error(f"evaluation set '{external.name}' failed: {exc}")
            metrics[external.name] = {"name": external.name, "error": str(exc)}
        write_metrics(accelerator, run_dir, metrics)
    if recipe.evaluation.compare_normalizers:
        compare_stain_normalizers(recipe, registry, accelerator, evaluator, frames, run_dir)
    return metrics


def compare_stain_normalizers(recipe, registry, accelerator, evaluator, frames, run_dir) -> None:
    """The test split and every external set under none and each listed normalizer; a failure loses nothing else."""
    from histofuse.evaluation.sets import load_external
    from histofuse.evaluation.comparison import compare_normalizers, save

    try:
        sets, seen = {"test": frames["test"]}, set()
        for external in recipe.evaluate:
            # Sets that differ only in QC, TTA or normalization are the same images here: compare them once.
            source = (external.dataset, external.root, repr(sorted(external.options.items())), repr(sorted(external.label_map.items())))
            if source not in seen:
                seen.add(source)
                sets[external.name] = load_external(external, registry, evaluator.classes)
        comparison = compare_normalizers(evaluator, recipe, registry, frames["train"], sets)
    except HistofuseError as exc:
        log.error(f"the stain normalizer comparison failed: {exc}")
        return
    if accelerator.is_main_process:
        save(run_dir, comparison)


def write_metrics(accelerator, run_dir: Path, metrics: dict) -> None:
    """metrics.json, written by the main process; rewritten after every set, so a failing one loses nothing."""
    if accelerator.is_main_process:
        RunDir(run_dir).metrics.write_text(json.dumps(metrics, indent=2))
