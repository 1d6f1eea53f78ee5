"""Errors a user can act on. The CLI prints them without a traceback."""

from __future__ import annotations


class HistofuseError(Exception):
    """Base class: the message says what was wrong, where, and what to do."""

    exit_code = 1


class RecipeError(HistofuseError):
    """A recipe (or a command-line override of it) is invalid; holds every problem found."""

    exit_code = 2

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = list(problems)
        noun = "problem" if len(self.problems) == 1 else "problems"
        lines = [f"{source}: {len(self.problems)} {noun}"]
        lines += [f"  - {p}" for p in self.problems]
        super().__init__("\n".join(lines))


class PluginError(HistofuseError):
    """A plugin is broken, a name is claimed twice, or a name is unknown."""

    exit_code = 2


class DataError(HistofuseError):
    """The data cannot support the requested run (missing root, too few patients, ...)."""

    exit_code = 2


class ImageDecodeError(HistofuseError):
    """One image file could not be turned into RGB pixels."""

    def __init__(self, path: str, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class WeightsError(HistofuseError):
    """Pretrained weights could not be fetched or do not fit the backbone."""

    exit_code = 2
