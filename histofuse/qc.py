"""Image quality control: blur (variance of the Laplacian) and tissue fraction."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import pandas as pd


@dataclass(frozen=True)
class QCThresholds:
    blur: float = 75.0  # minimum variance of the Laplacian of the grey image
    background: int = 220  # grey level at or above which a pixel counts as background
    min_tissue: float = 0.40  # minimum fraction of pixels darker than background


def assess(rgb: np.ndarray, thresholds: QCThresholds) -> dict:
    """Sharpness, tissue fraction and verdict for one RGB uint8 image."""
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    sharpness = float(cv2.Laplacian(grey, cv2.CV_64F).var())
    tissue = float((grey < thresholds.background).mean())
    reasons = []
    if sharpness < thresholds.blur:
        reasons.append("blurred")
    if tissue < thresholds.min_tissue:
        reasons.append("little tissue")
    return {"blur": sharpness, "tissue": tissue, "qc_pass": not reasons, "qc_reason": "; ".join(reasons)}


def run_qc(table: pd.DataFrame, thresholds: QCThresholds, decode, progress=None) -> pd.DataFrame:
    """Scores and verdict per image; unreadable images fail QC with the decoder's reason."""
    from histofuse.errors import ImageDecodeError

    rows = []
    for path in table["path"]:
        try:
            rows.append(assess(decode(path), thresholds))
        except ImageDecodeError as exc:
            rows.append({"blur": np.nan, "tissue": np.nan, "qc_pass": False, "qc_reason": f"unreadable: {exc.reason}"})
        if progress is not None:
            progress()
    return pd.concat([table.reset_index(drop=True), pd.DataFrame(rows)], axis=1)


def qc_summary(scored: pd.DataFrame) -> dict:
    """Counts; ``reasons`` counts each reason once per image it applies to (an image can have two)."""
    reasons = scored.loc[~scored["qc_pass"], "qc_reason"].str.split("; ").explode().value_counts().to_dict()
    return {"checked": int(len(scored)), "passed": int(scored["qc_pass"].sum()), "removed": int((~scored["qc_pass"]).sum()), "reasons": reasons}
