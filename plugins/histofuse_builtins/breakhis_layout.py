"""The BreaKHis v1 folder and file-name scheme, written by the synthetic dataset and read back by scanning.

Files are named ``SOB_<B|M>_<subtype code>-<year>-<slide>-<magnification>-<seq>.png``
and sit in ``histology_slides/breast/<benign|malignant>/SOB/<subtype>/SOB_<B|M>_<code>_<year>-<slide>/<mag>X/``.
The slide field is a numeric id plus optional letters (``22549AB``); in the real
release several slide folders share one numeric id, so the id is the patient group.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, Field

# code -> (label, subtype folder name)
SUBTYPES: dict[str, tuple[str, str]] = {
    "A": ("benign", "adenosis"),
    "F": ("benign", "fibroadenoma"),
    "PT": ("benign", "phyllodes_tumor"),
    "TA": ("benign", "tubular_adenoma"),
    "DC": ("malignant", "ductal_carcinoma"),
    "LC": ("malignant", "lobular_carcinoma"),
    "MC": ("malignant", "mucinous_carcinoma"),
    "PC": ("malignant", "papillary_carcinoma"),
}
MAGNIFICATIONS = (40, 100, 200, 400)

# µm per pixel at each magnification. Spanhol et al. (IEEE TBME 2016) acquired the images with an
# Olympus BX-50 microscope, a 3.3x relay lens and a Samsung SCC-131AN camera whose pixels are 6.5 µm wide, with
# 4x, 10x, 20x and 40x objectives for the 40X, 100X, 200X and 400X sets: a camera pixel covers
# 6.5 / (objective x 3.3) µm of tissue. The paper gives the optics, not these quotients, nor how the 700 x 460
# files were made from the camera's frames: estimates within about 10 % (docs/datasets/breakhis.md).
CAMERA_PIXEL_UM = 6.5
RELAY_LENS = 3.3
MPP = {m: round(CAMERA_PIXEL_UM / (m / 10 * RELAY_LENS), 4) for m in MAGNIFICATIONS}


def _check_magnifications(value: list[int]) -> list[int]:
    bad = [m for m in value if m not in MAGNIFICATIONS]
    if bad:
        raise ValueError(f"{bad} are not BreaKHis magnifications; use some of {list(MAGNIFICATIONS)}")
    return sorted(set(value))


# An option type shared by the datasets that use this layout.
Magnifications = Annotated[list[int], Field(min_length=1), AfterValidator(_check_magnifications)]

FILE_NAME = re.compile(
    r"^SOB_(?P<cls>[BM])_(?P<code>[A-Z]{1,2})-(?P<year>\d{2})-(?P<slide>(?P<id>\d+)[A-Z]*)-(?P<mag>\d{2,3})-(?P<seq>\d{3})\.png$",
    re.IGNORECASE,
)


def image_path(root: Path, code: str, year: int, slide: str, magnification: int, seq: int) -> Path:
    label, subtype = SUBTYPES[code]
    letter = "B" if label == "benign" else "M"
    folder = root / "histology_slides" / "breast" / label / "SOB" / subtype / f"SOB_{letter}_{code}_{year}-{slide}"
    name = f"SOB_{letter}_{code}-{year}-{slide}-{magnification}-{seq:03d}.png"
    return folder / f"{magnification}X" / name


def parse_name(name: str) -> dict | None:
    """The fields a BreaKHis file name carries, or None when it does not follow the scheme."""
    match = FILE_NAME.match(name)
    if not match:
        return None
    code = match["code"].upper()
    if code not in SUBTYPES or int(match["mag"]) not in MAGNIFICATIONS:
        return None
    label, subtype = SUBTYPES[code]
    if (match["cls"].upper() == "B") != (label == "benign"):
        return None
    return {
        "label": label,
        "subtype": subtype,
        "magnification": int(match["mag"]),
        "slide": match["slide"].upper(),
        "patient_id": match["id"],
        "year": int(match["year"]),
    }


def scan_tree(root: Path):
    """Every parseable BreaKHis image under ``root`` (nested or flat) as a DataFrame, and the PNGs whose names did not parse."""
    import pandas as pd

    rows, unparsed = [], []
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() != ".png" or not path.is_file():
            continue
        fields = parse_name(path.name)
        if fields is None:
            unparsed.append(path)
            continue
        rows.append({"path": str(path.resolve()), **fields})
    return pd.DataFrame(rows), unparsed
