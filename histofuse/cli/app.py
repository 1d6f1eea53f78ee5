"""The command tree and what every command shares: consoles, common options, a checked recipe."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, get_args

import typer
from rich.console import Console

from histofuse.recipe import TTA

console = Console(soft_wrap=True)  # long paths stay on one line, greppable
err_console = Console(stderr=True, soft_wrap=True)

app = typer.Typer(
    name="histofuse",
    help="Train and evaluate histopathology classifiers built from fused pretrained backbones.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
recipe_app = typer.Typer(help="Work with recipe files.", no_args_is_help=True)
app.add_typer(recipe_app, name="recipe")
weights_app = typer.Typer(help="Check weights files against backbones; export a run's backbone weights.", no_args_is_help=True)
app.add_typer(weights_app, name="weights")
data_app = typer.Typer(help="Check the images a recipe or a dataset would use.", no_args_is_help=True)
app.add_typer(data_app, name="data")
plugin_app = typer.Typer(help="Start a plugin of your own.", no_args_is_help=True)
app.add_typer(plugin_app, name="plugin")

TTA_MODES = get_args(TTA)  # the recipe's list is the one source; predict and evaluate accept each mode

SetOption = typer.Option(None, "--set", help="Override a recipe key, e.g. --set phases[0].epochs=2 (repeatable).")
FoldOption = typer.Option(
    None, "--fold", min=1, max=20, help="On a cross-validation folder: use this fold's model instead of the fold ensemble."
)


def registry():
    from histofuse.registry import default_registry

    return default_registry()


def load_checked(recipe_path: Path, overrides: Optional[List[str]]):
    """Parse, cross-check and dry-build a recipe; raise one RecipeError listing every problem."""
    from histofuse.contracts import check_contracts
    from histofuse.errors import RecipeError
    from histofuse.recipe import check_recipe, load_recipe
    from histofuse.recipe_files import resolve_recipe
    from histofuse.summary import check_model

    recipe_path = resolve_recipe(recipe_path)  # a bare name (quickstart) is a shipped recipe
    recipe = load_recipe(recipe_path, overrides or [])
    components = registry()
    problems = check_recipe(recipe, components)
    if problems:
        raise RecipeError(str(recipe_path), problems)
    problems, model = check_model(recipe, components)
    if not problems:
        problems = check_contracts(recipe, components, model)
    if problems:
        raise RecipeError(str(recipe_path), problems)
    return recipe, components, model
