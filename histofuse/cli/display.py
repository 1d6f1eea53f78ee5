"""What the core reports, on screen: its log lines printed as plain lines, its progress drawn as rich bars."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Callable, Iterator

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from histofuse.cli.app import console
from histofuse.reporting import log, show_progress_with


class ConsoleLines(logging.Handler):
    """One line per record, as the run's story: 'warning: ' and 'error: ' lead the ones that need a look,
    and a heading (a fold, a repetition) is drawn as a rule. Paths print as they are: no markup is read."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            if getattr(record, "heading", False):
                console.rule(message)
            elif record.levelno >= logging.ERROR:
                console.print(Text.assemble(("error: ", "bold red"), message), highlight=False)
            elif record.levelno >= logging.WARNING:
                console.print(Text.assemble(("warning: ", "yellow"), message), highlight=False)
            else:
                console.print(message, markup=False, highlight=False)
        except Exception:  # logging's own contract: a broken screen must not break the run
            self.handleError(record)


@contextmanager
def bar(label: str, total: int) -> Iterator[Callable[..., None]]:
    """A transient bar (drawn on a terminal only); ``advance(status)`` counts one item and shows a short note."""
    columns = (TextColumn(f"  {label}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
               TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task(label, total=total, status="")
        yield lambda status="": progress.update(task, advance=1, status=status)


def show_the_core_on_screen() -> None:
    """Print the core's lines at INFO and draw its bars; called once per command (again under a test runner)."""
    log.handlers = [h for h in log.handlers if not isinstance(h, ConsoleLines)]
    log.addHandler(ConsoleLines())
    log.setLevel(logging.INFO)
    log.disabled = False
    show_progress_with(bar)
