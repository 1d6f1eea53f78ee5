"""Cross-checks that need the registry or span sections, and plugin options validated against their schema."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from histofuse.recipe.messages import format_validation_errors, show_value
from histofuse.recipe.schema import MULTI_CROP, Recipe


def check_recipe(recipe: Recipe, registry: Any) -> list[str]:
    """Problems that need the registry or span sections; the ``validate_recipe`` hook adds its own."""
    problems: list[str] = []

    def known(kind: str, name: str, path: str) -> Any:
        try:
            return registry.get(kind, name)
        except Exception as exc:
            problems.append(f"{path}: {exc}")
            return None

    dataset = known("dataset", recipe.data.dataset, "data.dataset")
    if dataset is not None:
        problems += check_options(dataset, recipe.data.options, "data.options")
    fusion = known("fusion", recipe.model.fusion, "model.fusion")
    if fusion is not None:
        problems += check_options(fusion, recipe.model.fusion_options, "model.fusion_options")

    names = [b.name for b in recipe.model.backbones]
    _check_backbones(recipe, names, known, problems)
    _check_phases(recipe, names, problems)
    _check_evaluation(recipe, known, problems)
    _check_tiles(recipe, problems)
    if recipe.data.classes is not None and len(set(recipe.data.classes)) != len(recipe.data.classes):
        problems.append("data.classes: class names must be unique")
    for hook_problems in registry.pm.hook.validate_recipe(recipe=recipe):
        problems += list(hook_problems or [])
    return problems


def _check_backbones(recipe: Recipe, names: list[str], known, problems: list[str]) -> None:
    for i, backbone in enumerate(recipe.model.backbones):
        if names.count(backbone.name) > 1 and names.index(backbone.name) < i:
            problems.append(f"model.backbones[{i}].name: '{backbone.name}' is used by two backbones")
        spec = known("backbone", backbone.source, f"model.backbones[{i}].source")
        if spec is not None:
            problems += check_options(spec, backbone.options, f"model.backbones[{i}].options")
        if isinstance(backbone.pretrained, str) and not Path(backbone.pretrained).expanduser().is_file():
            folder = " (a folder in the Hub's layout is named by model = \"local-dir:PATH\")" if Path(backbone.pretrained).expanduser().is_dir() else ""
            problems.append(
                f"model.backbones[{i}].pretrained: weights file '{backbone.pretrained}' does not exist{folder}; "
                "give a path to a .safetensors or .pth state dict, true (download from the hub) or false"
            )
        if backbone.dtype != "float32":
            problems += [
                f"model.backbones[{i}].dtype: {backbone.dtype} weights are for a backbone no phase trains, but "
                f"phases[{j}] unfreezes '{backbone.name}'; keep float32 and set training.mixed_precision instead"
                for j, phase in enumerate(recipe.phases)
                if phase.unfreeze == "all" or (isinstance(phase.unfreeze, dict) and phase.unfreeze.get(backbone.name, 0) > 0)
            ]


def _check_phases(recipe: Recipe, names: list[str], problems: list[str]) -> None:
    phase_names = [p.name for p in recipe.phases]
    for i, phase in enumerate(recipe.phases):
        if phase_names.count(phase.name) > 1 and phase_names.index(phase.name) < i:
            problems.append(f"phases[{i}].name: '{phase.name}' is used by two phases")
        if isinstance(phase.unfreeze, dict):
            for key, count in phase.unfreeze.items():
                if key not in names:
                    hint = difflib.get_close_matches(key, names, n=1)
                    extra = f"; did you mean '{hint[0]}'?" if hint else ""
                    problems.append(
                        f"phases[{i}].unfreeze.{key}: no backbone named '{key}'{extra} Backbones: {', '.join(names)}"
                    )
                elif count < 0:
                    problems.append(f"phases[{i}].unfreeze.{key}: expected a number of groups >= 0, got {count}")
        for key, value in (phase.lr.model_extra or {}).items():
            if key not in names:
                hint = difflib.get_close_matches(key, names + ["head", "backbone"], n=1)
                extra = f"; did you mean '{hint[0]}'?" if hint else ""
                problems.append(f"phases[{i}].lr.{key}: unknown key{extra} Keys: head, backbone, or a backbone name ({', '.join(names)})")
            elif isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                problems.append(f"phases[{i}].lr.{key}: expected a number between 0 and 1, got {show_value(value)}")
        unfrozen = [n for n in names if phase.unfreeze == "all" or (isinstance(phase.unfreeze, dict) and phase.unfreeze.get(n, 0) > 0)]
        # Any positive count, even under a misspelt name, so one typo is reported once.
        trains_backbone = phase.unfreeze == "all" or (
            isinstance(phase.unfreeze, dict) and any(v > 0 for v in phase.unfreeze.values())
        )
        if not problems:
            for name in unfrozen:
                if phase.lr.for_backbone(name) == 0:
                    key = name if name in (phase.lr.model_extra or {}) else "backbone"
                    problems.append(f"phases[{i}].lr.{key}: phase unfreezes layers of '{name}' but their learning rate is 0")
        if not trains_backbone and (phase.lr.backbone > 0 or phase.lr.model_extra):
            problems.append(
                f"phases[{i}].lr.backbone: set to {phase.lr.backbone:g} but this phase unfreezes nothing; "
                "set unfreeze (\"all\" or a table of backbone = groups) or drop lr.backbone"
            )


def _check_evaluation(recipe: Recipe, known, problems: list[str]) -> None:
    normalizer_cfg = recipe.evaluation.normalizer
    if any(e.normalize for e in recipe.evaluate):
        normalizer = known("normalizer", normalizer_cfg.name, "evaluation.normalizer.name")
        if normalizer is not None:
            problems += check_options(normalizer, normalizer_cfg.options, "evaluation.normalizer.options")
    for i, name in enumerate(recipe.evaluation.compare_normalizers):
        known("normalizer", name, f"evaluation.compare_normalizers[{i}]")
    set_names = [e.name for e in recipe.evaluate]
    for i, external in enumerate(recipe.evaluate):
        if set_names.count(external.name) > 1 and set_names.index(external.name) < i or external.name == "test":
            problems.append(f"evaluate[{i}].name: '{external.name}' is used twice or is reserved ('test')")
        spec = known("dataset", external.dataset, f"evaluate[{i}].dataset")
        if spec is not None:
            problems += check_options(spec, external.options, f"evaluate[{i}].options")
        if recipe.data.classes is not None:
            unknown = sorted(set(external.label_map.values()) - set(recipe.data.classes))
            if unknown:
                problems.append(f"evaluate[{i}].label_map: maps to {unknown}, not in data.classes {recipe.data.classes}")


def check_options(spec: Any, options: dict[str, Any], path: str) -> list[str]:
    schema = getattr(spec, "options", None)
    if schema is None:
        return [f"{path}.{key}: '{spec.name}' takes no options" for key in options]
    try:
        schema.model_validate(options)
    except ValidationError as exc:
        return [f"{path}.{p}" if not p.startswith("(") else f"{path}: {p}" for p in format_validation_errors(exc, schema)]
    return []


def validate_options(spec: Any, options: dict[str, Any]) -> dict[str, Any]:
    """Options as the component's schema resolves them (defaults filled in)."""
    schema = getattr(spec, "options", None)
    if schema is None:
        return dict(options)
    return schema.model_validate(options).model_dump()


def _check_tiles(recipe: Recipe, problems: list[str]) -> None:
    """Tiles change what one sample is: a random tile in training, a grid pooled in evaluation."""
    if recipe.data.tiles is None:
        return
    if recipe.data.tiles.bag is not None and recipe.data.tiles.pooling == "mean":
        problems.append("data.tiles.bag: a bag of tiles per training image is what attention pooling learns from; with "
                        "pooling = \"mean\" each training image gives one tile: remove bag or set pooling = \"attention\"")
    sets = [("evaluation.tta", recipe.evaluation.tta)] + [(f"evaluate[{i}].tta", e.tta) for i, e in enumerate(recipe.evaluate)]
    for key, tta in sets:
        if tta in MULTI_CROP:
            problems.append(f"{key}: {tta} cuts crops from one resized image; with data.tiles the grid covers the image "
                            "already: use none, paper7 or d4")
