"""The command tree and what every command shares: consoles, common options, a checked recipe."""

from __future__ import annotations

from typing import get_args

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


@app.callback()
def _every_command() -> None:
    from histofuse.cli.display import show_the_core_on_screen

    show_the_core_on_screen()

TTA_MODES = get_args(TTA)  # the recipe's list is the one source; predict and evaluate accept each mode

SetOption = typer.Option(None, "--set", help="Override a recipe key, e.g. --set phases[0].epochs=2 (repeatable).")
FoldOption = typer.Option(
    None, "--fold", min=1, max=20, help="On a cross-validation folder: use this fold's model instead of the fold ensemble."
)


def registry():
    from histofuse.registry import default_registry

    return default_registry()
