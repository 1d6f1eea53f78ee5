"""histofuse recipe check, list and copy."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape

from histofuse.cli.app import SetOption, console, recipe_app
from histofuse.preflight import preflight


@recipe_app.command("check")
def recipe_check(
    recipe: Path = typer.Argument(..., help="Recipe TOML file, or a shipped recipe's name (histofuse recipe list)."),
    set_: Optional[List[str]] = SetOption,
    show_toml: bool = typer.Option(False, "--show-toml", help="Also print the resolved recipe, defaults filled in."),
) -> None:
    """Validate a recipe and show what it resolves to: plugins, model size, phases."""
    from histofuse.recipe import recipe_to_toml
    from histofuse.cli.tables import describe_recipe

    parsed, registry, model = preflight(recipe, set_)
    for table in describe_recipe(parsed, registry, model):
        console.print(table)
    console.print(f"[green]ok[/]: {escape(str(recipe))} is valid")
    if show_toml:
        console.print(recipe_to_toml(parsed), markup=False, highlight=False)


@recipe_app.command("list")
def recipe_list() -> None:
    """List the recipes shipped with histofuse: run one by name (histofuse run quickstart) or copy it to edit."""
    from histofuse.recipe_files import packaged_recipes

    recipes = packaged_recipes()
    width = max((len(r.name) for r in recipes), default=0)
    for r in recipes:
        console.print(f"{r.name:<{width}}  {r.description}", markup=False, highlight=False)


@recipe_app.command("copy")
def recipe_copy(
    name: str = typer.Argument(..., help="A shipped recipe's name (histofuse recipe list)."),
    dest: Optional[str] = typer.Argument(None, help="File or folder to write it to (default: ./NAME.toml)."),
    force: bool = typer.Option(False, "--force", help="Overwrite DEST if it exists."),
) -> None:
    """Write a shipped recipe to a file of your own, to edit and run."""
    from histofuse.recipe_files import copy_recipe

    target = copy_recipe(name, dest, force)
    console.print(f"wrote {target}; run it with: histofuse run {target}", markup=False, highlight=False)

