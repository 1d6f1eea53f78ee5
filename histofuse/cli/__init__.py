"""The ``histofuse`` command line: one module per command group, each command a thin parse-then-call.

Heavy libraries load inside the commands that need them; every table and progress display lives in this package.
"""

from __future__ import annotations

import logging

from rich.logging import RichHandler
from rich.text import Text

# Each module registers its commands; this order is the order of --help.
from histofuse.cli import run, results, data, recipes, plugins, weights  # noqa: F401, I001
from histofuse.cli.app import app, console, err_console
from histofuse.cli.plugins import add_plugin_commands
from histofuse.errors import HistofuseError

__all__ = ["app", "console", "err_console", "main"]


def main() -> None:
    others = RichHandler(console=err_console, show_path=False)
    others.addFilter(lambda record: not record.name.startswith("histofuse"))  # the core's lines: cli/display.py
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[others])
    add_plugin_commands()
    try:
        app()
    except HistofuseError as exc:
        err_console.print(Text.assemble(("error: ", "bold red"), str(exc)), highlight=False)
        raise SystemExit(exc.exit_code) from None
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]; files already written in the run directory are kept")
        raise SystemExit(130) from None

