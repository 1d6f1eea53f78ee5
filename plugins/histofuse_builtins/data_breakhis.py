"""BreaKHis v1 (Spanhol et al., 2016): 7,909 breast tumour images of 82 patients at 40X-400X.

Reads the release as downloaded (``BreaKHis_v1/histology_slides/breast/...``) or
any folder holding its PNGs, nested or flat: the file name carries every field.

Grouping: in the release several slide folders share one numeric id (22549AB,
22549CD and 22549G; 21998AB/CD/EF; 29960AB/CD) and id 13412 appears under both
ductal and lobular carcinoma. By default ``group`` is that numeric id, so such
folders always land in the same split (the conservative reading: they are likely
one patient). ``group_by = "slide"`` groups by slide folder instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

import histofuse
from histofuse_builtins.breakhis_layout import MAGNIFICATIONS, Magnifications

SOURCE = (
    "BreaKHis v1 from the Laboratorio Visao Robotica e Imagem, UFPR "
    "(https://web.inf.ufpr.br/vri/databases/breast-cancer-histopathological-database-breakhis/, "
    "research use only); extract BreaKHis_v1.tar.gz and point data.root at the BreaKHis_v1 folder"
)


class BreakhisOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    magnifications: Magnifications = Field(default_factory=lambda: list(MAGNIFICATIONS))
    label: Literal["binary", "subtype"] = "binary"
    group_by: Literal["patient", "slide"] = "patient"
    width: int = Field(
        700, ge=32, le=7000, description="pixel width of the files: a copy resized from the release's 700 (whole, not "
        "cropped) shows more tissue per pixel, and its scale follows"
    )


def scan_breakhis(root, magnifications=(40, 100, 200, 400), label="binary", group_by="patient", width=700):
    from histofuse_builtins.breakhis_layout import MPP, scan_tree

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"BreaKHis root {root} does not exist or is not a folder")
    table, unparsed = scan_tree(root)
    if unparsed:
        examples = ", ".join(p.name for p in unparsed[:3])
        histofuse.log.warning(
            "breakhis: left out %d PNG file(s) whose names do not follow the BreaKHis scheme (e.g. %s)", len(unparsed), examples
        )
    if table.empty:
        raise histofuse.DataError(
            f"no BreaKHis images found under {root.resolve()} (searched for SOB_*.png at any depth). "
            f"Is data.root the BreaKHis_v1 folder? Source: {SOURCE}"
        )
    table = table[table["magnification"].isin(magnifications)].reset_index(drop=True)
    if table.empty:
        raise histofuse.DataError(f"BreaKHis under {root}: no images at magnifications {list(magnifications)}")
    table["group"] = table["patient_id"] if group_by == "patient" else table["slide"]
    table["mpp"] = table["magnification"].map(MPP) * (700 / width)
    if label == "subtype":
        table["label"] = table["subtype"]
    return table


@histofuse.hookimpl
def register_datasets():
    return [
        histofuse.DatasetSpec(
            name="breakhis",
            scan=scan_breakhis,
            description="BreaKHis v1 breast histology (benign/malignant or 8 subtypes), grouped by patient",
            options=BreakhisOptions,
            source=SOURCE,
        )
    ]
