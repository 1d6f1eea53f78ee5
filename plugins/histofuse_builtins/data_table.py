"""Your own data as a table: a CSV (or Parquet) with a path, a label and a patient column.

``data.root`` is the table file; relative paths are relative to its folder. Extra
columns (magnification, site, ...) are carried into split.csv and predictions.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

import histofuse


class TableOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    path_column: str = "path"
    label_column: str = "label"
    group_column: str = "group"
    label_map: dict[str, str] = Field(
        default_factory=dict, description="rename labels; when given, labels not in it are errors"
    )
    one_label_per_group: bool = Field(True, description="a patient has one diagnosis: a group with two labels is an error")
    mpp_column: str = Field("mpp", description="µm per pixel of each image, when the table has this column (empty: unknown)")
    mpp: float | None = Field(None, gt=0, le=20, description="µm per pixel of every image, for a table without mpp_column")


def scan_table(root, **options):
    import pandas as pd

    opts = TableOptions(**options)
    table_path = Path(root)
    if not table_path.is_file():
        raise FileNotFoundError(f"table {table_path} does not exist (data.root must be the CSV or Parquet file)")
    if table_path.suffix.lower() == ".parquet":
        try:
            table = pd.read_parquet(table_path)
        except ImportError:
            raise histofuse.DataError("reading Parquet needs pyarrow: pip install pyarrow, or save the table as CSV") from None
    else:
        table = pd.read_csv(table_path, dtype=str, keep_default_na=False)
    where = f"table {table_path}"
    wanted = {"path": opts.path_column, "label": opts.label_column, "group": opts.group_column}
    missing = [column for column in wanted.values() if column not in table.columns]
    if missing:
        raise histofuse.DataError(
            f"{where} has no column(s) {missing}; it has {list(table.columns)}. Set path_column, label_column and "
            "group_column in data.options"
        )
    table = table.rename(columns={v: k for k, v in wanted.items() if v != k})
    rows = table.index + 2  # spreadsheet row numbers: 1 is the header
    problems = []

    def report(kind, mask, detail=""):
        if mask.any():
            shown = ", ".join(str(r) for r in rows[mask][:8])
            problems.append(f"{int(mask.sum())} row(s) {kind}{detail} (rows {shown}{', ...' if mask.sum() > 8 else ''})")

    for column in ("path", "label", "group"):
        report(f"with an empty {wanted[column]}", table[column].astype(str).str.strip() == "")
    base = table_path.parent
    table["path"] = [str((base / p).resolve()) if p and not Path(p).is_absolute() else p for p in table["path"]]
    report("whose file does not exist", ~table["path"].map(lambda p: bool(p) and Path(p).is_file()))
    report("repeating a path listed earlier", table["path"].duplicated())
    if opts.label_map:
        known = set(opts.label_map) | set(opts.label_map.values())
        report("with a label outside label_map", ~table["label"].isin(known), f" ({sorted(set(table['label']) - known)[:5]})")
        table["label"] = table["label"].map(lambda v: opts.label_map.get(v, v))
    if opts.one_label_per_group:
        labels_per_group = table.groupby("group")["label"].nunique()
        mixed = labels_per_group[labels_per_group > 1].index
        report("in a group with two labels", table["group"].isin(mixed), f" (groups {list(mixed[:5])}; or set one_label_per_group = false)")
    if opts.mpp_column in table:
        column = table[opts.mpp_column]
        given = column.where(column.notna(), "").astype(str).str.strip()
        mpp = pd.to_numeric(given.where(given != ""), errors="coerce")
        unusable = (given != "") & ~(mpp > 0)
        if unusable.any():  # an error only where the scale is used (data.mpp): the run checks that
            shown = ", ".join(str(r) for r in rows[unusable][:8])
            histofuse.log.warning("%s: %d row(s) whose %s is not a positive number of µm per pixel (rows %s) count as "
                                  "of unknown scale", where, int(unusable.sum()), opts.mpp_column, shown)
        table["mpp"] = mpp.where(mpp > 0)
    elif opts.mpp is not None:
        table["mpp"] = opts.mpp
    if problems:
        raise histofuse.DataError(f"{where}: " + "; ".join(problems))
    return table


@histofuse.hookimpl
def register_datasets():
    return [
        histofuse.DatasetSpec(
            name="csv",
            scan=scan_table,
            description="your images listed in a CSV/Parquet table with path, label and patient columns",
            options=TableOptions,
            source="your own table: data.root = the CSV file",
        )
    ]
