"""Your own data without code: one sub-folder per class, images at any depth below it.

The patient (group) of each image comes from, in order of preference, a regular
expression on its path relative to the class folder (``group_regex``, first
capture group or ``(?P<group>...)``), a parent folder (``group_by = "parent"``,
``group_level`` levels up), or the image itself (``group_by = "image"``: only
honest when every image is its own patient).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

import histofuse

DEFAULT_EXTENSIONS = [".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"]


class FolderOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    extensions: list[str] = Field(default_factory=lambda: list(DEFAULT_EXTENSIONS), min_length=1)
    group_by: Literal["image", "parent", "regex"] = "image"
    group_level: int = Field(1, ge=1, description="with group_by = parent: 1 = the folder holding the image")
    group_regex: str | None = Field(None, description="with group_by = regex: applied to the path below the class folder")
    label_map: dict[str, str] = Field(default_factory=dict, description="rename or merge class folders")
    mpp: float | None = Field(None, gt=0, le=20, description="µm per pixel of every image, when known (for data.mpp)")

    @field_validator("group_regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value


def scan_folder(root, **options):
    import pandas as pd

    opts = FolderOptions(**options)
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"folder dataset root {root} does not exist or is not a folder")
    classes = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if len(classes) < 2:
        raise histofuse.DataError(
            f"{root.resolve()} needs one sub-folder per class (at least two); found {[d.name for d in classes]}"
        )
    if opts.group_by == "regex" and not opts.group_regex:
        raise histofuse.DataError("folder dataset: group_by = \"regex\" needs group_regex, e.g. '^(?P<group>[^_]+)_'")
    pattern = re.compile(opts.group_regex) if opts.group_regex else None
    suffixes = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in opts.extensions}
    rows, unmatched, empty = [], [], []
    for folder in classes:
        files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
        if not files:
            empty.append(folder.name)
        for path in files:
            relative = path.relative_to(folder).as_posix()
            group = _group_of(path, folder, relative, opts, pattern)
            if group is None:
                unmatched.append(relative)
                continue
            rows.append({"path": str(path.resolve()), "label": opts.label_map.get(folder.name, folder.name), "group": group})
    if empty:
        raise histofuse.DataError(f"class folder(s) {empty} under {root} hold no images with extensions {sorted(suffixes)}")
    if unmatched:
        raise histofuse.DataError(
            f"group_regex {opts.group_regex!r} does not match {len(unmatched)} path(s) below their class folder "
            f"(e.g. {unmatched[:3]}); every image needs a patient"
        )
    histofuse.log.info("folder dataset: %d images, %d classes, group = %s", len(rows), len(classes), _describe(opts))
    table = pd.DataFrame(rows)
    if opts.mpp is not None:
        table["mpp"] = opts.mpp
    return table


def _group_of(path: Path, folder: Path, relative: str, opts: FolderOptions, pattern) -> str | None:
    if opts.group_by == "image":
        return f"{folder.name}/{relative}"
    if opts.group_by == "parent":
        parent = path
        for _ in range(opts.group_level):
            parent = parent.parent
        return parent.name if parent != folder.parent else folder.name
    match = pattern.search(relative)
    if match is None:
        return None
    return match.group("group") if "group" in match.re.groupindex else (match.group(1) if match.groups() else match.group(0))


def _describe(opts: FolderOptions) -> str:
    if opts.group_by == "regex":
        return f"regex {opts.group_regex!r} on the path below the class folder"
    if opts.group_by == "parent":
        return f"the folder {opts.group_level} level(s) above each image"
    return "one group per image (no patient information)"


@histofuse.hookimpl
def register_datasets():
    return [
        histofuse.DatasetSpec(
            name="folder",
            scan=scan_folder,
            description="your images, one sub-folder per class; patient from a regex, a parent folder, or per image",
            options=FolderOptions,
            source="your own folder: data.root/<class>/.../<image>",
        )
    ]
