"""Checking a dataset adapter's sample table before anything is decoded."""

from __future__ import annotations

import pandas as pd

from histofuse.errors import DataError

REQUIRED_COLUMNS = ("path", "label", "group")


def check_table(table: object, dataset: str, classes: list[str] | None) -> tuple[pd.DataFrame, list[str]]:
    """Validate the table an adapter returned and fix the class order.

    Returns the table (labels as strings, groups as strings) and the class names:
    ``classes`` if given, else the sorted labels found. With two classes the second
    one is the positive class for AUC, recall and specificity.
    """
    if not isinstance(table, pd.DataFrame):
        raise DataError(f"dataset '{dataset}' returned {type(table).__name__}; adapters must return a pandas.DataFrame")
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise DataError(
            f"dataset '{dataset}' returned a table without the column(s) {', '.join(missing)}; "
            f"found {', '.join(map(str, table.columns))}. Adapters must return path, label and group."
        )
    if table.empty:
        raise DataError(f"dataset '{dataset}' found no images")
    table = table.reset_index(drop=True).copy()
    empty = table[list(REQUIRED_COLUMNS)].isna().any(axis=1)
    if empty.any():
        first = table[empty].iloc[0].to_dict()
        raise DataError(
            f"dataset '{dataset}' returned {int(empty.sum())} row(s) without a path, label or group (first: {first}). "
            "Every image needs a label and a patient group; without groups a patient-level split is impossible."
        )
    table["label"] = table["label"].astype(str)
    table["group"] = table["group"].astype(str)
    table["path"] = table["path"].astype(str)
    if "mpp" in table:
        table["mpp"] = _checked_mpp(table, dataset)
    found = sorted(table["label"].unique())
    if classes is None:
        classes = found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DataError(
            f"dataset '{dataset}' has labels {unknown} that are not in data.classes {classes}; "
            "add them to data.classes or remove data.classes to use every label found"
        )
    if len(classes) < 2:
        raise DataError(f"dataset '{dataset}' has only the label(s) {found}; a classifier needs at least two classes")
    absent = [c for c in classes if c not in found]
    if absent:
        raise DataError(f"data.classes names {absent}, but dataset '{dataset}' has no images with those labels")
    return table, list(classes)


def _checked_mpp(table: pd.DataFrame, dataset: str) -> pd.Series:
    """The optional ``mpp`` column (µm per pixel of each image file) as numbers; what is not a positive number is
    unknown, said once. Only ``data.mpp`` needs the scale, and it refuses unknown ones there."""
    from histofuse.reporting import log

    mpp = pd.to_numeric(table["mpp"], errors="coerce")
    bad = table["mpp"].notna() & ~(mpp > 0)
    if bad.any():
        first = table[bad].iloc[0]
        log.warning(f"dataset '{dataset}': {int(bad.sum())} image(s) have an mpp that is not a positive number of µm per "
                    f"pixel (first: {first['path']}: {first['mpp']!r}); their scale counts as unknown")
    return mpp.where(mpp > 0).astype(float)
