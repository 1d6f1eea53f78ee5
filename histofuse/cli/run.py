"""histofuse run: one run, a cross-validation, repetitions, or a resumed run."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.text import Text

from histofuse.cli.app import SetOption, app, console, err_console
from histofuse.cli.tables import comparison_table, metrics_table
from histofuse.preflight import preflight
from histofuse.reporting import silenced
from histofuse.rundir import RunDir


@app.command()
def run(
    recipe: Optional[Path] = typer.Argument(
        None, help="Recipe TOML file, or a shipped recipe's name, e.g. quickstart (histofuse recipe list); omit with --resume."
    ),
    set_: Optional[List[str]] = SetOption,
    output_dir: Path = typer.Option(Path("runs"), "--output-dir", "-o", help="Parent folder of the run directory."),
    resume: Optional[Path] = typer.Option(
        None, "--resume", help="Continue this run directory from its last complete epoch checkpoint."
    ),
    repeat: int = typer.Option(1, "--repeat", min=1, max=100, help="Run N times with seeds seed, seed+1, ...; report mean ± std."),
    repeat_splits: bool = typer.Option(False, "--repeat-splits", help="With --repeat: a different patient split each time too."),
    folds: Optional[int] = typer.Option(
        None, "--folds", min=2, max=20, help="K-fold cross-validation by patient (same as --set data.split.folds=K)."
    ),
) -> None:
    """Train a recipe's phases, then evaluate the best weights on the test split (or on every fold with --folds)."""
    from histofuse.crossval import run_cross_validation
    from histofuse.run import run_recipe

    if resume is not None:
        if repeat > 1 or folds is not None:
            raise typer.BadParameter(
                "--resume continues one run or cross-validation as it was started; it takes no --repeat or --folds",
                param_hint="--resume",
            )
        recipe = _resumable_recipe(resume, recipe, set_)
    elif recipe is None:
        raise typer.BadParameter("give a recipe file, or --resume RUN_DIR", param_hint="RECIPE")
    overrides = list(set_ or []) + ([f"data.split.folds={folds}"] if folds is not None else [])
    parsed, registry, _ = preflight(recipe, overrides)
    if folds is not None and parsed.data.split.fold is not None:
        raise typer.BadParameter(
            f"the recipe trains only fold {parsed.data.split.fold} (data.split.fold); remove it to cross-validate",
            param_hint="--folds",
        )
    cross_validation = parsed.data.split.folds is not None and parsed.data.split.fold is None
    if cross_validation and repeat > 1 and parsed.data.split.seed is not None:
        console.print(f"note: data.split.seed = {parsed.data.split.seed} is not used: each repetition of the "
                      "cross-validation draws its own folds (seed, seed + 1, ...)", markup=False)
    if repeat > 1:
        _run_repeated(parsed, registry, output_dir, repeat, repeat_splits or cross_validation)
        return
    if cross_validation:
        if resume is not None:
            from histofuse.crossval.runner import check_resumable

            check_resumable(resume)
        run_dir = run_cross_validation(parsed, registry, output_dir, resume=resume)
    else:
        run_dir = run_recipe(parsed, registry, output_dir, resume=resume)
    if not silenced():
        _show_results(run_dir, cross_validation)


def _show_results(run_dir: Path, cross_validation: bool) -> None:
    import json

    layout = RunDir(run_dir)
    if layout.stain_comparison.is_file():
        console.print(comparison_table(json.loads(layout.stain_comparison.read_text())))
    metrics = json.loads(layout.metrics.read_text())
    console.print(metrics_table(metrics, cross_validation))
    for name, entry in metrics.items():
        if "error" in entry:
            err_console.print(Text.assemble((f"evaluation set '{name}' failed: ", "bold red"), entry["error"]))
    console.print(f"[green]done[/]: {escape(str(run_dir))}")


def _run_repeated(recipe, registry, output_dir: Path, count: int, vary_split: bool) -> None:
    from histofuse.cli.tables import summary_table
    from histofuse.repeats import repeated_recipes, summarize, write_summary
    from histofuse.run import run_recipe

    from histofuse.crossval import run_cross_validation

    run_dirs = []
    folds = recipe.data.split.folds if recipe.data.split.fold is None else None
    for i, each in enumerate(repeated_recipes(recipe, count, vary_split)):
        own = f", its own {folds} folds" if folds else ", its own patient split" if vary_split else ""
        console.rule(f"run {i + 1}/{count}: seed {each.seed}{own}")
        run = run_cross_validation if folds else run_recipe
        run_dirs.append(run(each, registry, output_dir, last=i == count - 1))
    if silenced():
        return
    table, summary = summarize(run_dirs)
    console.print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"), markup=False, highlight=False)
    console.print(summary_table(summary, count))
    console.print(f"[green]done[/]: {escape(str(write_summary(output_dir, run_dirs[0].name, table, summary)))}")


def _resumable_recipe(run_dir: Path, recipe: Optional[Path], overrides: Optional[List[str]]) -> Path:
    """A resumed run keeps the recipe it was started with: the one saved in its directory."""
    if recipe is not None or overrides:
        raise typer.BadParameter(
            "--resume continues a run with the recipe saved in it; give no recipe file and no --set",
            param_hint="--resume",
        )
    saved = RunDir(run_dir).recipe_file
    if not saved.is_file():
        raise typer.BadParameter(f"'{run_dir}' is not a run directory (it has no recipe.toml)", param_hint="--resume")
    return saved

