"""Plugins: list what is installed, start a new one, add the commands plugins register."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from histofuse.cli.app import app, console, err_console, plugin_app, registry


@plugin_app.command("new")
def plugin_new(
    name: str = typer.Argument(..., help="Component name, e.g. my_lab (lowercase, digits, underscores)."),
    kind: str = typer.Option("dataset", "--kind", help="dataset, normalizer, fusion or backbone."),
    out: Path = typer.Option(Path("."), "--out", help="Parent folder of the new package."),
) -> None:
    """Write an installable plugin package (pyproject entry point, module, test, README) that passes its test."""
    from histofuse.scaffold.new import write_plugin

    folder = write_plugin(name, kind, out)
    console.print(f"wrote {folder}; next: cd {folder} && pip install -e \".[dev]\" && python -m pytest -q", markup=False)


@app.command()
def plugins() -> None:
    """List installed plugins and the components they provide."""
    components = registry()
    table = Table(title="histofuse components")
    for column in ("kind", "name", "distribution", "plugin"):
        table.add_column(column, no_wrap=True)
    table.add_column("description")
    for entry in components.entries():
        table.add_row(entry.kind, entry.name, entry.distribution, entry.plugin, entry.spec.description)
    # Piped output (grep, logs) gets full rows instead of 80 columns with names cut short.
    out = console if console.is_terminal else Console(width=200)
    out.print(table)
    if components.failures:
        broken = Table(title="plugins that failed to load", title_style="bold red")
        for column in ("plugin", "distribution"):
            broken.add_column(column, no_wrap=True)
        broken.add_column("error")
        for failure in components.failures:
            broken.add_row(failure.name, failure.distribution, failure.error)
        out.print(broken)


def add_plugin_commands() -> None:
    try:
        from histofuse.plugins import create_plugin_manager

        create_plugin_manager().hook.register_commands(app=app)
    except Exception as exc:  # a broken plugin must not take the CLI down
        err_console.print(f"[yellow]warning:[/] plugin commands unavailable: {escape(str(exc))}")

