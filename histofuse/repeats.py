"""histofuse run --repeat N: the same recipe with N seeds (optionally N patient splits), metrics as mean ± std."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from histofuse.data.split import split_seed
from histofuse.recipe import load_recipe
from histofuse.rundir import RunDir

# colour_only_auc: what six LAB numbers achieve on the same split, the floor a model's AUC is read against.
HEADLINE = ("auc", "colour_only_auc", "accuracy", "balanced_accuracy", "recall", "specificity", "ece")


def repeated_recipes(recipe, count: int, vary_split: bool) -> list:
    """Seeds seed, seed + 1, ...; the patient split stays the first run's unless ``vary_split``."""
    pinned = split_seed(recipe.data.split, recipe.seed)
    recipes = []
    for i in range(count):
        split = recipe.data.split.model_copy(update={"seed": None if vary_split else pinned})
        data = recipe.data.model_copy(update={"split": split})
        recipes.append(recipe.model_copy(update={"seed": recipe.seed + i, "data": data}))
    return recipes


def summarize(run_dirs: list[Path]) -> tuple[pd.DataFrame, dict]:
    """One row per run and set; {set: {metric: {"mean", "std", "values"}}} over the runs."""
    rows = []
    for run_dir in run_dirs:
        recipe_seed = load_recipe(RunDir(run_dir).recipe_file).seed  # a run, or a cross-validation's parent folder
        for name, m in json.loads(RunDir(run_dir).metrics.read_text()).items():
            if "error" not in m:
                m = {**m, "colour_only_auc": (m.get("color_baseline") or {}).get("auc")}
                rows.append({"run": run_dir.name, "seed": recipe_seed, "set": name, **{k: m.get(k) for k in HEADLINE}})
    table = pd.DataFrame(rows)
    summary = {}
    for name, part in table.groupby("set", sort=False):
        summary[name] = {}
        for k in HEADLINE:
            values = part[k].dropna().astype(float).to_numpy()
            summary[name][k] = {
                "mean": float(values.mean()) if len(values) else None,
                "std": float(values.std(ddof=1)) if len(values) > 1 else None,
                "values": values.tolist(),
            }
    return table, summary


def write_summary(output_dir: Path, first_run: str, table: pd.DataFrame, summary: dict) -> Path:
    """``<first run>-x<N>.json/.csv`` beside the run directories: named after the first run, so never overwritten."""
    stem = output_dir / f"{first_run}-x{table['run'].nunique()}"
    table.to_csv(stem.with_suffix(".csv"), index=False)
    stem.with_suffix(".json").write_text(json.dumps({"runs": table["run"].unique().tolist(), "summary": summary}, indent=2))
    return stem.with_suffix(".json")
