"""A dataset scanned into its table, and the one message that says where to get the data when it is missing."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from histofuse.data.tiles import scale_factors
from histofuse.errors import DataError, HistofuseError
from histofuse.recipe import Recipe, validate_options
from histofuse.reporting import log


def scan(spec, root: str | Path | None, options: dict, setting: str) -> pd.DataFrame:
    """``spec.scan`` of ``root`` with checked ``options``; ``setting`` is what the user set root with (data.root,
    evaluate[0].root, ROOT), so a missing folder says which setting to change and where the data comes from."""
    where = f"Where to get {spec.name}: {spec.source or 'see its plugin docs'}"
    then = f"Then --set {setting}=/path/to/it" if "." in setting else f"Then give its folder as {setting}"
    if root is None:
        raise DataError(f"{setting}: not set for dataset '{spec.name}'. {where}. {then}")
    try:
        table = spec.scan(Path(root).expanduser(), **validate_options(spec, options))
    except FileNotFoundError as exc:
        raise DataError(f"{setting}: dataset '{spec.name}': {exc}. {where}. {then} (now {root})") from None
    if len(table) == 0:
        raise DataError(f"{setting}: dataset '{spec.name}' found no images under {root}")
    return table


def load_table(recipe: Recipe, registry) -> tuple[pd.DataFrame, list[str]]:
    """The recipe's dataset scanned and checked, with its classes."""
    from histofuse.data.table import check_table

    spec = registry.get("dataset", recipe.data.dataset)
    table, classes = check_table(scan(spec, recipe.data.root, recipe.data.options, "data.root"), spec.name, recipe.data.classes)
    log.info(f"dataset '{spec.name}': {len(table)} images, {describe_scale(table)}")
    if recipe.data.mpp is not None:
        scale_factors(table, recipe.data.mpp, f"dataset '{spec.name}'")
    return table, classes


def describe_scale(table: pd.DataFrame) -> str:
    """The images' µm per pixel as the dataset gives it: each value with its count, and how many are unknown."""
    mpp = table["mpp"] if "mpp" in table else pd.Series(float("nan"), index=table.index)
    known = mpp.dropna().round(4).value_counts().sort_index()
    parts = [f"{value:g} µm/px ({count})" for value, count in known.items()]
    unknown = int(mpp.isna().sum())
    if unknown:
        parts.append(f"unknown ({unknown})")
    return "scale " + ", ".join(parts)


def check_external_sets(recipe: Recipe, registry, classes: list[str]) -> None:
    """Every [[evaluate]] set must be readable, with labels the model knows, before hours of training."""
    from histofuse.evaluation.sets import load_external

    problems = []
    for i, external in enumerate(recipe.evaluate):
        spec = registry.get("dataset", external.dataset)
        if external.root is not None and not spec.generated and not Path(external.root).expanduser().exists():
            problems.append(
                f"evaluate[{i}].root: '{external.root}' does not exist. Where to get {spec.name}: {spec.source}. "
                f"Then --set evaluate[{i}].root=/path/to/it"
            )
            continue
        try:
            table = load_external(external, registry, classes, f"evaluate[{i}]")
            if recipe.data.mpp is not None:
                scale_factors(table, recipe.data.mpp, f"evaluate[{i}]")
        except HistofuseError as exc:
            problems.append(str(exc))
    if problems:
        raise DataError("before training, the external evaluation sets were checked:\n  - " + "\n  - ".join(problems))
