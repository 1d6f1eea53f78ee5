"""How the core talks: lines through the ``histofuse`` logger, progress through a display a front end installs.

The core draws nothing. From Python a run is quiet but for warnings (logging's defaults); the command line
installs a handler that prints every line and a display that draws bars (``histofuse/cli/display.py``).
A line logged with ``extra=HEADING`` starts a section (a fold, a repetition); a front end may draw it as a rule.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Callable, ContextManager, Iterator

log = logging.getLogger("histofuse")

HEADING = {"heading": True}

# label, total -> a context whose value is advance(status="") called once per item done.
ProgressDisplay = Callable[[str, int], ContextManager[Callable[..., None]]]
_display: ProgressDisplay | None = None


def show_progress_with(display: ProgressDisplay | None) -> None:
    """Install the front end's progress display (None: no bars, the default)."""
    global _display
    _display = display


@contextmanager
def progress(label: str, total: int) -> Iterator[Callable[..., None]]:
    """``with progress("decode cache", n) as advance: ... advance()`` (``advance(status="loss 0.5")`` for a note)."""
    if _display is None or log.disabled:
        yield lambda status="": None
        return
    with _display(label, total) as advance:
        yield advance


def speak_on_main_process_only(is_main_process: bool) -> None:
    """One process of a multi-process launch talks; the others stay silent, bars included."""
    log.disabled = not is_main_process


def silenced() -> bool:
    return log.disabled
