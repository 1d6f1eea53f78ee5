"""Your own data: a folder per class, or a table, give the same images, labels, patients and split."""

import cv2
import numpy as np
import pandas as pd
import pytest

from histofuse.data.split import split_by_group
from histofuse.errors import DataError


@pytest.fixture
def hospital(tmp_path):
    """tiles/<class>/<patient>/<patient>_<n>.png, and the same images listed in a CSV with relative paths."""
    rows = []
    for label in ("normal", "tumour"):
        for p in range(4):
            patient = f"{label[0]}{p:02d}"
            for n in range(3):
                path = tmp_path / "tiles" / label / patient / f"{patient}_{n}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(path), np.full((8, 8, 3), 40 * p + n, np.uint8))
                rows.append({"file": f"tiles/{label}/{patient}/{patient}_{n}.png", "diagnosis": label, "patient": patient, "site": "x"})
    pd.DataFrame(rows).to_csv(tmp_path / "slides.csv", index=False)
    return tmp_path


def test_folder_and_csv_give_the_same_table_and_split(hospital):
    from histofuse_builtins.data_folder import scan_folder
    from histofuse_builtins.data_table import scan_table

    by_folder = scan_folder(hospital / "tiles", group_by="parent")
    by_regex = scan_folder(hospital / "tiles", group_by="regex", group_regex=r"(?P<group>[a-z]\d+)_\d+\.png$")
    by_table = scan_table(hospital / "slides.csv", path_column="file", label_column="diagnosis", group_column="patient")
    key = ["path", "label", "group"]
    a = by_folder[key].sort_values("path").reset_index(drop=True)
    for other in (by_regex, by_table):
        pd.testing.assert_frame_equal(a, other[key].sort_values("path").reset_index(drop=True))
    assert "site" in by_table  # extra columns are carried through
    split_a = split_by_group(a, 0.25, 0.25, seed=3)
    split_b = split_by_group(by_table[key].sort_values("path").reset_index(drop=True), 0.25, 0.25, seed=3)
    assert split_a["split"].tolist() == split_b["split"].tolist()


def test_folder_groups_and_label_map(hospital):
    from histofuse_builtins.data_folder import scan_folder

    per_image = scan_folder(hospital / "tiles")
    assert per_image["group"].is_unique
    merged = scan_folder(hospital / "tiles", group_by="parent", label_map={"tumour": "malignant", "normal": "benign"})
    assert set(merged["label"]) == {"benign", "malignant"}


def test_bad_trees_name_what_is_wrong(hospital, tmp_path):
    from histofuse_builtins.data_folder import scan_folder

    (hospital / "tiles" / "empty_class").mkdir()
    with pytest.raises(DataError, match=r"class folder\(s\) \['empty_class'\]"):
        scan_folder(hospital / "tiles")
    (hospital / "tiles" / "empty_class").rmdir()
    with pytest.raises(DataError, match="does not match 24 path"):
        scan_folder(hospital / "tiles", group_by="regex", group_regex=r"^patient-(\d+)")
    with pytest.raises(DataError, match="needs group_regex"):
        scan_folder(hospital / "tiles", group_by="regex")
    with pytest.raises(FileNotFoundError):
        scan_folder(tmp_path / "nowhere")


def test_bad_tables_name_the_rows(hospital):
    from histofuse_builtins.data_table import scan_table

    table = pd.read_csv(hospital / "slides.csv")
    table.loc[1, "file"] = "tiles/missing.png"
    table.loc[4, "file"] = table.loc[3, "file"]
    table.loc[6, "diagnosis"] = "tumour"  # patient n02 now has two diagnoses
    table.to_csv(hospital / "bad.csv", index=False)
    with pytest.raises(DataError) as info:
        scan_table(hospital / "bad.csv", path_column="file", label_column="diagnosis", group_column="patient")
    message = str(info.value)
    assert "1 row(s) whose file does not exist (rows 3)" in message
    assert "1 row(s) repeating a path listed earlier (rows 6)" in message
    assert "in a group with two labels" in message and "n02" in message
    with pytest.raises(DataError, match=r"has no column\(s\) \['path', 'label', 'group'\]"):
        scan_table(hospital / "slides.csv")
    with pytest.raises(DataError, match=r"label outside label_map \(\['tumour'\]\)"):
        scan_table(hospital / "slides.csv", path_column="file", label_column="diagnosis", group_column="patient",
                   label_map={"normal": "benign"})


def test_a_recipe_trains_on_a_folder_of_your_own(tmp_path, tiny_recipe_dict, synthetic_root):
    import shutil

    from conftest import write_toml
    from test_run import only_run_dir, run_cli

    # The synthetic tiles re-arranged as a hospital would: <class>/<patient>/<image>.
    for path in synthetic_root.rglob("*.png"):
        label = "tumour" if "/malignant/" in path.as_posix() else "normal"
        patient = path.name.split("-")[2]
        target = tmp_path / "mine" / label / patient / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    tiny_recipe_dict["data"].update(dataset="folder", root=str(tmp_path / "mine"), options={"group_by": "parent"})
    tiny_recipe_dict["phases"] = tiny_recipe_dict["phases"][:1]
    recipe = write_toml(tmp_path / "mine.toml", tiny_recipe_dict)
    result = run_cli(["run", str(recipe), "-o", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    split = pd.read_csv(only_run_dir(tmp_path / "runs") / "split.csv", dtype=str)
    assert split.groupby("group")["split"].nunique().max() == 1 and split["group"].nunique() == 8


def test_extra_table_columns_give_metrics_per_value(tmp_path, tiny_recipe_dict, synthetic_root):
    import json

    from conftest import write_toml
    from test_run import only_run_dir, run_cli

    rows = []
    for path in sorted(synthetic_root.rglob("*.png")):
        patient = path.name.split("-")[2]
        rows.append({"path": str(path), "label": "malignant" if "/malignant/" in path.as_posix() else "benign",
                     "group": patient, "site": "north" if int(patient[:5]) % 2 else "south"})
    pd.DataFrame(rows).to_csv(tmp_path / "table.csv", index=False)
    tiny_recipe_dict["data"].update(dataset="csv", root=str(tmp_path / "table.csv"), options={})
    tiny_recipe_dict["phases"] = tiny_recipe_dict["phases"][:1]
    tiny_recipe_dict["evaluation"] = {"by": ["site"]}
    recipe = write_toml(tmp_path / "t.toml", tiny_recipe_dict)
    assert run_cli(["run", str(recipe), "-o", str(tmp_path / "runs")]).exit_code == 0
    run_dir = only_run_dir(tmp_path / "runs")
    metrics = json.loads((run_dir / "metrics.json").read_text())["test"]
    assert set(metrics["per_site"]) <= {"north", "south"} and sum(m["n"] for m in metrics["per_site"].values()) == metrics["n"]
    assert "site" in pd.read_csv(run_dir / "predictions.csv").columns
