"""A rich progress bar for one epoch, silent on processes other than the main one."""

from __future__ import annotations

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class EpochProgress:
    def __init__(self, console, label: str, total: int, enabled: bool):
        self.enabled = enabled and console.is_terminal
        self.progress = Progress(
            TextColumn("  {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
            disable=not self.enabled,
        )
        self.task = self.progress.add_task(label, total=total, loss=0.0)

    def __enter__(self) -> "EpochProgress":
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def advance(self, loss: float) -> None:
        self.progress.update(self.task, advance=1, loss=loss)
