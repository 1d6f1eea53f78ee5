"""What a benchmark measured, kept as figures with units for ``benchmarks/results.json``.

Each benchmark prints its table for a reader and, through :class:`Figures`, the
same numbers for the collector. ``bash benchmarks/run_all.sh`` sets
``HISTOFUSE_FIGURES`` to a folder (and ``HISTOFUSE_FIGURES_AS`` to the step's
name); each script writes ``<name>.json`` there and
``collect_results.py`` merges them into ``results.json`` and renders
``RESULTS.md``. Run on its own, a benchmark only prints.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

FIGURES_DIR = "HISTOFUSE_FIGURES"


class Figures:
    """Figures of one benchmark, keyed by dotted names unique within it (``700x460.histofuse.images_per_s``)."""

    def __init__(self, benchmark: str):
        self.benchmark = benchmark
        self.figures: dict[str, dict] = {}

    def add(self, key: str, value: float | int, unit: str, note: str = "") -> float | int:
        """Keep ``value`` (in ``unit``: "images/s", "s", "x", "AUC", ...) under ``key``; returns it for printing."""
        if key in self.figures:
            raise ValueError(f"{self.benchmark}: figure {key!r} recorded twice")
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise TypeError(f"{self.benchmark}: figure {key!r} is {type(value).__name__}, not a number")
        entry = {"value": value if isinstance(value, int) else float(value), "unit": unit}
        if note:
            entry["note"] = note
        self.figures[key] = entry
        return value

    def save(self) -> None:
        """Write ``<HISTOFUSE_FIGURES>/<benchmark>.json`` when run by run_all.sh; otherwise nothing."""
        folder = os.environ.get(FIGURES_DIR)
        if not folder:
            return
        arguments = [_portable(a) for a in sys.argv[1:]]
        command = " ".join(["python", f"benchmarks/{Path(sys.argv[0]).name}", *arguments])
        # run_all.sh names each of its steps: one script may run as two steps with different arguments.
        name = os.environ.get("HISTOFUSE_FIGURES_AS") or self.benchmark
        path = Path(folder) / f"{name}.json"
        path.write_text(json.dumps({"command": command, "figures": self.figures}, indent=1))


def _portable(argument: str) -> str:
    """A rerun line a reader can type: an absolute path names the file, not this machine's folders."""
    if argument.startswith("/"):
        return f"<{Path(argument).name}>"
    return argument
