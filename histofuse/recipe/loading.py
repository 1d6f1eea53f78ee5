"""TOML in, ``--set`` overrides applied, a validated :class:`Recipe` out; and back to TOML."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from histofuse.errors import RecipeError
from histofuse.recipe.messages import format_validation_errors
from histofuse.recipe.schema import Recipe


def read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(str(path), [f"no such recipe file (looked in {path.resolve().parent})"])
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise RecipeError(str(path), [f"not UTF-8 text: {exc}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(str(path), [f"not valid TOML: {exc}"]) from None


_SEGMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)((?:\[\d+\])*)$")


def _parse_override_path(path: str) -> list[str | int]:
    keys: list[str | int] = []
    for segment in path.split("."):
        if segment.isdigit():
            keys.append(int(segment))
            continue
        match = _SEGMENT.match(segment)
        if not match:
            raise ValueError(f"'{path}' is not a key path like training.label_smoothing or phases[0].epochs")
        keys.append(match.group(1))
        keys += [int(i) for i in re.findall(r"\[(\d+)\]", match.group(2))]
    return keys


def parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare word is a string: --set data.root=/data/BreaKHis


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> list[str]:
    """Apply ``key.path=value`` overrides in place; return problems instead of raising."""
    problems = []
    for item in overrides:
        if "=" not in item:
            problems.append(f"--set {item}: expected KEY=VALUE, e.g. --set phases[0].epochs=2")
            continue
        path, text = item.split("=", 1)
        try:
            keys = _parse_override_path(path.strip())
        except ValueError as exc:
            problems.append(f"--set {item}: {exc}")
            continue
        node: Any = raw
        for depth, key in enumerate(keys[:-1]):
            where = path if depth == len(keys) - 2 else ".".join(str(k) for k in keys[: depth + 1])
            if isinstance(key, int):
                if not isinstance(node, list) or key >= len(node):
                    problems.append(f"--set {item}: {where} has no item {key}")
                    break
                node = node[key]
            else:
                if not isinstance(node, dict):
                    problems.append(f"--set {item}: {where} is not a table")
                    break
                node = node.setdefault(key, {})
        else:
            last = keys[-1]
            if isinstance(last, int):
                if not isinstance(node, list) or last >= len(node):
                    problems.append(f"--set {item}: no item {last} to set")
                    continue
            elif not isinstance(node, dict):
                problems.append(f"--set {item}: parent of '{last}' is not a table")
                continue
            node[last] = parse_value(text.strip())
    return problems


def parse_recipe(raw: dict[str, Any], source: str = "recipe") -> Recipe:
    try:
        return Recipe.model_validate(raw)
    except ValidationError as exc:
        raise RecipeError(source, format_validation_errors(exc)) from None


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe file; raise :class:`RecipeError` listing every problem."""
    raw = read_toml(path)
    problems = apply_overrides(raw, overrides or [])
    if problems:
        raise RecipeError(str(path), problems)
    return parse_recipe(raw, str(path))


def recipe_to_toml(recipe: Recipe) -> str:
    """The resolved recipe, every default written out (TOML has no null, so unset keys are omitted)."""
    import tomli_w

    return tomli_w.dumps(recipe.model_dump(mode="json", exclude_none=True))
