"""Evaluating a finished run on another dataset, and the dataset-level steps behind qc and stain-stats."""

from __future__ import annotations

import json
from pathlib import Path
from typing import get_args

import pandas as pd
from pydantic import ValidationError

from histofuse.errors import HistofuseError, RecipeError
from histofuse.recipe import (
    TTA,
    ExternalSetConfig,
    QCConfig,
    check_options,
    format_validation_errors,
    parse_value,
)
from histofuse.data.tiles import check_tta
from histofuse.reporting import speak_on_main_process_only
from histofuse.rundir import RunDir


def _pairs(items: list[str], what: str) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise RecipeError(what, [f"'{item}': expected KEY=VALUE"])
        key, value = item.split("=", 1)
        out[key.strip()] = parse_value(value.strip())
    return out


def dataset_options(registry, dataset: str, options: list[str]) -> tuple[object, dict]:
    """The dataset's spec and its --option KEY=VALUE pairs, checked against its schema."""
    spec = registry.get("dataset", dataset)
    parsed = _pairs(options, "--option")
    problems = check_options(spec, parsed, "--option")
    if problems:
        raise RecipeError("--option", problems)
    return spec, parsed


def scan_dataset(registry, dataset: str, root: Path, options: list[str]):
    from histofuse.data.scanning import scan

    spec, parsed = dataset_options(registry, dataset, options)
    return scan(spec, root, parsed, "ROOT")


def fit_normalizer_on(registry, dataset, root, name, options, sample, tissue_only, seed) -> dict:
    from histofuse.evaluation.fitting import fit_normalizer, make_normalizer, sample_indices

    table = scan_dataset(registry, dataset, root, options)
    paths = [table["path"].iloc[i] for i in sample_indices(len(table), sample, seed)]
    spec = registry.get("normalizer", name)
    # Stain-matrix methods always measure tissue only; the flag is for those that offer the choice.
    offers_choice = spec.options is not None and "tissue_only" in spec.options.model_fields
    normalizer_options = {"tissue_only": True} if tissue_only and offers_choice else {}
    state = fit_normalizer(make_normalizer(registry, name, normalizer_options), paths).state
    return {"name": name, "options": normalizer_options, "dataset": dataset, "root": str(root), "images": len(paths), "state": state}


def evaluate_run(run_dir: Path, *, dataset, root, name, options, label_map, qc, normalize, tta) -> dict:
    from histofuse.evaluation.sets import Evaluator
    from histofuse.inference import LoadedRun
    from histofuse.manifest import record_evaluated_set
    from histofuse.run import make_accelerator

    run_dir = Path(run_dir)
    layout = RunDir(run_dir)
    needed = [layout.recipe_file, layout.split, layout.weights, layout.model_info, layout.evaluation]
    missing = [f.name for f in needed if not f.is_file()]
    if missing:
        raise HistofuseError(f"{run_dir} is not a finished run directory: {', '.join(missing)} missing")
    if name == "test":
        raise HistofuseError("--name test is reserved for the run's own test split; choose another name")
    if tta not in get_args(TTA):
        raise RecipeError("--tta", [f"expected one of {', '.join(get_args(TTA))}, got '{tta}'"])
    run = LoadedRun(run_dir)
    check_tta(run.recipe.data, tta, "--tta")
    recipe, registry, classes = run.recipe, run.registry, run.classes
    _, parsed_options = dataset_options(registry, dataset, options)
    try:
        external = ExternalSetConfig(
            name=name, dataset=dataset, root=str(root), options=parsed_options,
            label_map={k: str(v) for k, v in _pairs(label_map, "--map").items()},
            qc=QCConfig(enabled=qc), normalize=normalize, tta=tta,
        )
    except ValidationError as exc:
        raise RecipeError("histofuse evaluate", format_validation_errors(exc, ExternalSetConfig)) from None
    accelerator = make_accelerator(recipe)
    speak_on_main_process_only(accelerator.is_main_process)
    split = pd.read_csv(layout.split, dtype={"group": str, "label": str})
    evaluator = Evaluator(
        accelerator=accelerator, model=run.model, recipe=recipe, registry=registry, classes=classes,
        state=run.state, val_frame=split[split["split"] == "val"].reset_index(drop=True),
        run_dir=run_dir,
    )
    metrics = evaluator.evaluate_external(external)
    if accelerator.is_main_process:
        path = layout.metrics
        everything = json.loads(path.read_text()) if path.is_file() else {}
        everything[name] = metrics
        path.write_text(json.dumps(everything, indent=2))
        record_evaluated_set(run_dir, name, metrics)
    return metrics
