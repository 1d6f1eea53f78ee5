"""Writing a plugin package from the templates."""

from __future__ import annotations

import re
from pathlib import Path

from histofuse.errors import HistofuseError
from histofuse.scaffold.templates import KINDS, PYPROJECT, README


def write_plugin(name: str, kind: str, parent: Path) -> Path:
    """Write ``parent/histofuse-<name>/`` and return it; refuses to overwrite anything."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise HistofuseError(f"plugin name '{name}' must be lowercase letters, digits and underscores, starting with a letter")
    if kind not in KINDS:
        raise HistofuseError(f"unknown kind '{kind}'; choose one of {', '.join(KINDS)}")
    dist = name.replace("_", "-")
    folder = parent / f"histofuse-{dist}"
    if folder.exists():
        raise HistofuseError(f"{folder} already exists; choose another name or folder")
    module, test = KINDS[kind]
    fields = {"name": name, "dist": dist, "kind": kind}
    (folder / "tests").mkdir(parents=True)
    (folder / "pyproject.toml").write_text(PYPROJECT.format(**fields))
    (folder / "README.md").write_text(README.format(**fields))
    (folder / f"histofuse_{name}.py").write_text(module.format(**fields))
    (folder / "tests" / f"test_{name}.py").write_text(test.format(**fields))
    return folder
