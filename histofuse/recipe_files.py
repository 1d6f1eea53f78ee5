"""The recipes shipped inside the package: listed, run by name, copied out to start from.

They are package data in ``histofuse/recipes/`` so that an installed wheel has them; a clone's
top-level ``recipes/`` is a link to that folder. A recipe's name is its file name without ``.toml``.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from histofuse.errors import HistofuseError, RecipeError

FOLDER = Path(__file__).with_name("recipes")


@dataclass(frozen=True)
class PackagedRecipe:
    name: str
    path: Path
    description: str


def packaged_recipes() -> list[PackagedRecipe]:
    """Every shipped recipe, sorted by name, with its ``description`` line."""
    found = []
    for path in sorted(FOLDER.glob("*.toml")):
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
        found.append(PackagedRecipe(path.stem, path, str(raw.get("description", ""))))
    return found


def _names() -> str:
    return ", ".join(r.name for r in packaged_recipes()) or "(none)"


def packaged_recipe(name: str) -> Path:
    """The file of the shipped recipe ``name``; an error listing the names that exist otherwise."""
    for recipe in packaged_recipes():
        if recipe.name == name:
            return recipe.path
    raise RecipeError(name, [f"no packaged recipe of that name; packaged recipes: {_names()} (histofuse recipe list)"])


def resolve_recipe(path: Path) -> Path:
    """A recipe file as given; a bare name that is no file here (``quickstart``) is the shipped recipe of that name."""
    path = Path(path)
    if path.is_file():
        return path
    if len(path.parts) == 1 and not path.suffix:
        if any(r.name == path.name for r in packaged_recipes()):
            return packaged_recipe(path.name)
        raise RecipeError(str(path), [
            f"no such recipe file (looked in {path.resolve().parent}) and no packaged recipe of that name; "
            f"packaged recipes: {_names()} (histofuse recipe list)"
        ])
    if path.suffix == ".toml" and any(r.name == path.stem for r in packaged_recipes()):
        # e.g. the README's recipes/quickstart.toml typed where there is no clone: say how to reach the shipped one
        raise RecipeError(str(path), [
            f"no such recipe file (looked in {path.resolve().parent}); the packaged recipe of that name runs as "
            f"`histofuse run {path.stem}` (`histofuse recipe copy {path.stem}` writes it here to edit)"
        ])
    return path  # loading reports what is wrong with it


def copy_recipe(name: str, dest: str | Path | None = None, force: bool = False) -> Path:
    """Write the shipped recipe ``name`` to ``dest`` (default ``./NAME.toml``; a folder, or a path ending in
    ``/``, gets ``NAME.toml`` inside); refuse to overwrite a file unless ``force``."""
    source = packaged_recipe(name)
    target = Path(f"{name}.toml") if dest is None else Path(dest)
    if target.is_dir() or str(dest).endswith(("/", os.sep)):
        target = target / f"{name}.toml"
    if target.exists() and not force:
        raise HistofuseError(f"{target} already exists; give another destination, or --force to overwrite it")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(source.read_bytes())
    return target
