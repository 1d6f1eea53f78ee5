"""Patient-level splits: a patient's images never sit in two splits."""

from __future__ import annotations

import numpy as np
import pandas as pd

from histofuse.errors import DataError

SPLITS = ("train", "val", "test")


def split_by_group(table: pd.DataFrame, val: float, test: float, seed: int) -> pd.DataFrame:
    """Add a ``split`` column assigning whole groups to train/val/test.

    Groups are stratified by their label (a group's majority label) so that every
    split holds every class; each class needs at least three groups for that.
    """
    group_label = table.groupby("group")["label"].agg(lambda s: s.value_counts().index[0])
    rng = np.random.default_rng(seed)
    assignment: dict[object, str] = {}
    too_few = {label: int(n) for label, n in group_label.value_counts().items() if n < 3}
    if too_few:
        detail = ", ".join(f"'{label}': {n}" for label, n in sorted(too_few.items(), key=str))
        raise DataError(
            f"a patient-level train/val/test split needs at least 3 patients (groups) per class, found {detail}. "
            "Add data for those classes, or merge them with --set data.options... / a label map."
        )
    for label in sorted(group_label.unique(), key=str):
        groups = np.array(sorted(group_label.index[group_label == label], key=str), dtype=object)
        rng.shuffle(groups)
        n = len(groups)
        n_test = min(max(1, round(n * test)), n - 2)
        n_val = min(max(1, round(n * val)), n - n_test - 1)
        for g in groups[:n_test]:
            assignment[g] = "test"
        for g in groups[n_test : n_test + n_val]:
            assignment[g] = "val"
        for g in groups[n_test + n_val :]:
            assignment[g] = "train"
    out = table.copy()
    out["split"] = out["group"].map(assignment)
    check_no_leakage(out)
    missing = [
        f"{split} has no '{label}'"
        for split in SPLITS
        for label in sorted(table["label"].unique(), key=str)
        if not ((out["split"] == split) & (out["label"] == label)).any()
    ]
    if missing:
        raise DataError(
            "the patient-level split leaves a class out of a split (" + "; ".join(missing) + "): that class is never "
            "the main label of enough patients. Give it more patients, or merge it into another class."
        )
    return out


def permute_training_labels(table: pd.DataFrame, seed: int) -> pd.DataFrame:
    """The permutation control: the training patients' diagnoses shuffled among them.

    Each training patient gets another training patient's label for all of its
    images, so the class balance stays; validation and test keep their true
    labels. A pipeline that learns from tissue then tests at chance; one that
    scores well has a leak (the split, a file name, a shortcut in the data).
    """
    train = table["split"] == "train"
    group_label = table[train].groupby("group")["label"].agg(lambda s: s.value_counts().index[0])
    groups = sorted(group_label.index, key=str)
    shuffled = np.random.default_rng([seed, 7919]).permutation([group_label[g] for g in groups])
    out = table.copy()
    out.loc[train, "label"] = out.loc[train, "group"].map(dict(zip(groups, shuffled)))
    return out


def check_no_leakage(table: pd.DataFrame) -> None:
    """Raise if any group appears in more than one split."""
    per_group = table.groupby("group")["split"].nunique()
    leaked = per_group[per_group > 1]
    if len(leaked):
        examples = ", ".join(map(str, leaked.index[:5]))
        raise DataError(
            f"patient leakage: {len(leaked)} group(s) appear in more than one split (e.g. {examples}). "
            "Each patient's images must stay in one split; check the split file or the dataset's group column."
        )
