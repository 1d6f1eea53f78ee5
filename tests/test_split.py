import pandas as pd
import pytest

from histofuse.data.split import check_no_leakage, permute_training_labels, split_by_group
from histofuse.errors import DataError


def table(groups_per_class=10, images=5):
    rows = []
    for label in ("benign", "malignant"):
        for g in range(groups_per_class):
            rows += [{"path": f"{label}{g}-{i}.png", "label": label, "group": f"{label[0]}{g}"} for i in range(images)]
    return pd.DataFrame(rows)


def test_no_patient_is_in_two_splits_and_every_split_has_every_class():
    out = split_by_group(table(), val=0.15, test=0.15, seed=1)
    assert out.groupby("group")["split"].nunique().max() == 1
    for split in ("train", "val", "test"):
        assert set(out.loc[out["split"] == split, "label"]) == {"benign", "malignant"}
    counts = out.drop_duplicates("group").groupby("split").size()
    assert counts.to_dict() == {"test": 4, "train": 12, "val": 4}


def test_split_is_deterministic_for_a_seed_and_changes_with_it():
    a = split_by_group(table(), 0.2, 0.2, seed=3)
    b = split_by_group(table(), 0.2, 0.2, seed=3)
    c = split_by_group(table(), 0.2, 0.2, seed=4)
    assert a["split"].tolist() == b["split"].tolist()
    assert a["split"].tolist() != c["split"].tolist()


def test_too_few_patients_for_a_stratified_split_is_a_clear_error():
    small = table(groups_per_class=10)
    small = small[~small["group"].isin([f"m{i}" for i in range(8)])]
    with pytest.raises(DataError, match="at least 3 patients \\(groups\\) per class, found 'malignant': 2"):
        split_by_group(small, 0.15, 0.15, seed=0)


def test_leakage_check_catches_a_group_in_two_splits():
    out = split_by_group(table(), 0.15, 0.15, seed=0)
    victim = out.index[out["split"] == "train"][0]
    out.loc[victim, "group"] = out.loc[out["split"] == "test", "group"].iloc[0]
    with pytest.raises(DataError, match="patient leakage: 1 group"):
        check_no_leakage(out)


def test_a_class_that_is_never_a_patients_main_label_is_reported():
    rows = table(groups_per_class=6)
    rows = rows[rows["label"] == "benign"].copy()
    extra = rows.groupby("group").head(1).head(2).copy()  # "rare" lives in two patients only
    extra["label"] = "rare"
    with pytest.raises(DataError, match="leaves a class out of a split"):
        split_by_group(pd.concat([rows, extra]), 0.2, 0.2, seed=0)


def test_rows_without_a_group_are_rejected_not_merged():
    from histofuse.data.table import check_table

    rows = table(groups_per_class=3)
    rows.loc[0, "group"] = None
    with pytest.raises(DataError, match="1 row\\(s\\) without a path, label or group"):
        check_table(rows, "toy", None)


def test_the_permutation_control_shuffles_whole_training_patients_and_nothing_else():
    split = split_by_group(table(), 0.2, 0.2, seed=3)
    permuted = permute_training_labels(split, seed=3)
    train = split["split"] == "train"
    assert permuted.loc[~train].equals(split.loc[~train])
    assert permuted.loc[train].groupby("group")["label"].nunique().max() == 1  # a patient keeps one diagnosis
    per_patient = lambda t: t.loc[train].drop_duplicates("group")["label"].value_counts().to_dict()  # noqa: E731
    assert per_patient(permuted) == per_patient(split)  # the class balance stays
    changed = (permuted.loc[train, "label"] != split.loc[train, "label"]).groupby(split.loc[train, "group"]).all()
    assert changed.sum() >= 4
    assert permuted.equals(permute_training_labels(split, seed=3))
