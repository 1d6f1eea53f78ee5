"""The ``histofuse`` command line. Heavy libraries load inside the commands that need them."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from histofuse.errors import HistofuseError

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

SetOption = typer.Option(None, "--set", help="Override a recipe key, e.g. --set phases[0].epochs=2 (repeatable).")


def _registry():
    from histofuse.registry import default_registry

    return default_registry()


def _load(recipe_path: Path, overrides: Optional[List[str]]):
    """Parse, cross-check and dry-build a recipe; raise one RecipeError listing every problem."""
    from histofuse.errors import RecipeError
    from histofuse.recipe import check_recipe, load_recipe
    from histofuse.summary import check_model

    recipe = load_recipe(recipe_path, overrides or [])
    registry = _registry()
    problems = check_recipe(recipe, registry)
    if problems:
        raise RecipeError(str(recipe_path), problems)
    problems, model = check_model(recipe, registry)
    if problems:
        raise RecipeError(str(recipe_path), problems)
    return recipe, registry, model


@app.command()
def run(
    recipe: Path = typer.Argument(..., help="Recipe TOML file."),
    set_: Optional[List[str]] = SetOption,
    output_dir: Path = typer.Option(Path("runs"), "--output-dir", "-o", help="Parent folder of the run directory."),
) -> None:
    """Train a recipe's phases, then evaluate the best weights on the test split."""
    from histofuse.run import run_recipe

    parsed, registry, _ = _load(recipe, set_)
    run_dir = run_recipe(parsed, registry, output_dir, console)
    if console.quiet:
        return
    import json

    metrics = json.loads((run_dir / "metrics.json").read_text())["test"]
    console.print(_metrics_table(metrics))
    console.print(f"[green]done[/]: {run_dir}")


@recipe_app.command("check")
def recipe_check(
    recipe: Path = typer.Argument(..., help="Recipe TOML file."),
    set_: Optional[List[str]] = SetOption,
    show_toml: bool = typer.Option(False, "--show-toml", help="Also print the resolved recipe, defaults filled in."),
) -> None:
    """Validate a recipe and show what it resolves to: plugins, model size, phases."""
    from histofuse.recipe import recipe_to_toml
    from histofuse.summary import describe_recipe

    parsed, registry, model = _load(recipe, set_)
    for table in describe_recipe(parsed, registry, model):
        console.print(table)
    console.print(f"[green]ok[/]: {recipe} is valid")
    if show_toml:
        console.print(recipe_to_toml(parsed), markup=False, highlight=False)


@app.command()
def plugins() -> None:
    """List installed plugins and the components they provide."""
    registry = _registry()
    table = Table(title="histofuse components")
    for column in ("kind", "name", "distribution", "plugin"):
        table.add_column(column, no_wrap=True)
    table.add_column("description")
    for entry in registry.entries():
        table.add_row(entry.kind, entry.name, entry.distribution, entry.plugin, entry.spec.description)
    console.print(table)
    if registry.failures:
        broken = Table(title="plugins that failed to load", title_style="bold red")
        for column in ("plugin", "distribution"):
            broken.add_column(column, no_wrap=True)
        broken.add_column("error")
        for failure in registry.failures:
            broken.add_row(failure.name, failure.distribution, failure.error)
        console.print(broken)


def _metrics_table(metrics: dict) -> Table:
    table = Table(title=f"test split: {metrics['n']} images")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("auc", "accuracy", "balanced_accuracy", "precision", "recall", "specificity", "f1"):
        value = metrics.get(key)
        table.add_row(key, "n/a" if value is None else f"{value:.4f}")
    classes = metrics["classes"]
    table.add_row("confusion (rows true)", "\n".join(f"{c}: {row}" for c, row in zip(classes, metrics["confusion_matrix"])))
    return table


def _add_plugin_commands() -> None:
    try:
        from histofuse.plugins import create_plugin_manager

        create_plugin_manager().hook.register_commands(app=app)
    except Exception as exc:  # a broken plugin must not take the CLI down
        err_console.print(f"[yellow]warning:[/] plugin commands unavailable: {exc}")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[RichHandler(console=err_console, show_path=False)])
    _add_plugin_commands()
    try:
        app()
    except HistofuseError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise SystemExit(exc.exit_code) from None
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]; files already written in the run directory are kept")
        raise SystemExit(130) from None
