"""BACH (ICIAR 2018 Grand Challenge on Breast Cancer Histology), part A: 400 microscopy photos.

Layout as released: ``ICIAR2018_BACH_Challenge/Photos/<Benign|InSitu|Invasive|Normal>/*.tif``
(2048 x 1536 RGB TIFF, 100 per class), with ``microscopy_ground_truth.csv``
(``b001.tif,Benign`` rows, no header) beside the class folders. Re-packaged
copies with lower-case or spaced folder names (``in situ``) and PNG/JPG files
are read too. No patient ids are published for part A, so each image is its
own group: patient-level metrics equal image-level ones here.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

import histofuse

SOURCE = (
    "BACH part A (ICIAR 2018) from https://iciar2018-challenge.grand-challenge.org/Dataset/ "
    "(CC BY-NC-ND 4.0); point data.root (or an [[evaluate]] root) at the folder holding Photos/"
)
CLASSES = {"benign": "Benign", "insitu": "InSitu", "invasive": "Invasive", "normal": "Normal"}
BINARY = {"Normal": "benign", "Benign": "benign", "InSitu": "malignant", "Invasive": "malignant"}
SUFFIXES = {".tif", ".tiff", ".png", ".jpg", ".jpeg"}
GROUND_TRUTH = "microscopy_ground_truth.csv"
# Aresta et al. (Medical Image Analysis 2019): every microscopy image has a pixel scale of
# 0.42 µm x 0.42 µm (Leica DM 2000 LED microscope, Leica ICC50 HD camera).
MPP = 0.42


class BachOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    label: Literal["binary", "4class"] = "binary"


def _class_of(folder_name: str) -> str | None:
    return CLASSES.get(folder_name.lower().replace(" ", "").replace("_", "").replace("-", ""))


def _find_class_folders(root: Path) -> dict[str, Path]:
    """The class folders under root (directly, under Photos/, or one level deeper)."""
    for base in [root, *sorted(root.glob("*")), *sorted(root.glob("*/*"))]:
        if not base.is_dir():
            continue
        found = {_class_of(d.name): d for d in base.iterdir() if d.is_dir() and _class_of(d.name)}
        if len(found) >= 2:
            return found
    return {}


def _ground_truth(folders: dict[str, Path]) -> dict[str, str]:
    parent = next(iter(folders.values())).parent
    path = parent / GROUND_TRUTH
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        return {row[0].strip(): row[1].strip() for row in csv.reader(f) if len(row) >= 2}


def scan_bach(root, label: str = "binary"):
    import pandas as pd

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"BACH root {root} does not exist or is not a folder")
    folders = _find_class_folders(root)
    if not folders:
        raise histofuse.DataError(
            f"no BACH class folders (Benign, InSitu, Invasive, Normal) found under {root.resolve()}. "
            f"Source: {SOURCE}"
        )
    truth = _ground_truth(folders)
    rows, disagreements = [], []
    for cls, folder in sorted(folders.items()):
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() not in SUFFIXES or not path.is_file():
                continue
            listed = truth.get(path.name)
            if listed is not None and listed != cls:
                disagreements.append(f"{path.name}: folder {cls}, {GROUND_TRUTH} {listed}")
            rows.append({"path": str(path.resolve()), "bach_class": cls, "group": f"bach-{path.stem}"})
    if disagreements:
        raise histofuse.DataError(
            f"BACH under {root}: {len(disagreements)} image(s) sit in a folder that disagrees with "
            f"{GROUND_TRUTH} (e.g. {disagreements[0]}); fix the copy before evaluating on it"
        )
    if not rows:
        raise histofuse.DataError(f"BACH class folders under {root} hold no TIFF/PNG/JPG images")
    table = pd.DataFrame(rows)
    table["label"] = table["bach_class"].map(BINARY) if label == "binary" else table["bach_class"]
    table["mpp"] = MPP
    return table


@histofuse.hookimpl
def register_datasets():
    return [
        histofuse.DatasetSpec(
            name="bach",
            scan=scan_bach,
            description="BACH 2018 part A photos (4 classes, or benign/malignant), one group per image",
            options=BachOptions,
            source=SOURCE,
        )
    ]
