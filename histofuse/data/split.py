"""Patient-level splits: a patient's images never sit in two splits."""

from __future__ import annotations

import numpy as np
import pandas as pd

from histofuse.errors import DataError, HistofuseError

SPLITS = ("train", "val", "test")


def split_by_group(table: pd.DataFrame, val: float, test: float, seed: int) -> pd.DataFrame:
    """Add a ``split`` column assigning whole groups to train/val/test.

    Groups are stratified by their label (a group's majority label) so that every
    split holds every class; each class needs at least three groups for that.
    """
    group_label = _group_labels(table)
    _need_groups(group_label, 3, "a patient-level train/val/test split",
                 "Add data for those classes, or merge them with --set data.options... / a label map.")
    assignment: dict[object, str] = {}
    for groups in _shuffled_by_class(group_label, np.random.default_rng(seed)):
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
    _every_class_in_every_split(table, out, SPLITS)
    return out


def assign_folds(table: pd.DataFrame, folds: int, seed: int) -> pd.DataFrame:
    """Add a ``fold`` column (1..folds): every patient in exactly one fold, the folds stratified by class.

    scikit-learn's StratifiedGroupKFold decides; its shuffling makes another
    ``seed`` another draw of folds (repeated cross-validation).
    """
    from sklearn.model_selection import StratifiedGroupKFold

    group_label = _group_labels(table)
    # Every fold must hold each class, and what the test fold leaves must still give a validation patient and a
    # training patient of each class: K patients per class, 4 when K = 2 (half of 3 would leave one).
    _need_groups(group_label, max(folds, 4 if folds == 2 else folds), f"{folds}-fold cross-validation by patient",
                 "Add patients, merge classes with a label map, or use fewer folds (data.split.folds).")
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    # One row per patient, so the stratification balances patients (the unit that is held out), not images.
    patients = group_label.sort_index(key=lambda index: index.map(str))
    fold_of: dict[object, int] = {}
    for number, (_, held_out) in enumerate(splitter.split(np.zeros(len(patients)), patients.to_numpy(), patients.index), 1):
        fold_of.update({g: number for g in patients.index[held_out]})
    out = table.copy()
    out["fold"] = out["group"].map(fold_of).astype(int)
    empty = sorted(set(range(1, folds + 1)) - set(fold_of.values()))
    if empty:
        raise DataError(f"cross-validation: fold(s) {empty} received no patient; use fewer folds (data.split.folds)")
    return out


def split_for_fold(table: pd.DataFrame, fold: int, val: float, seed: int) -> pd.DataFrame:
    """Fold ``fold`` of a table with a ``fold`` column: its patients are the test split, and validation
    patients are carved out of the other folds' patients (stratified), never out of the test fold."""
    held_out = table["fold"] == fold
    rest = table[~held_out]
    group_label = _group_labels(rest)
    _need_groups(group_label, 2, f"fold {fold}'s validation carve-out", "Use fewer folds (data.split.folds).")
    assignment: dict[object, str] = {}
    for groups in _shuffled_by_class(group_label, np.random.default_rng([seed, fold])):
        n_val = min(max(1, round(len(groups) * val)), len(groups) - 1)
        assignment.update({g: "val" for g in groups[:n_val]})
        assignment.update({g: "train" for g in groups[n_val:]})
    out = table.copy()
    out["split"] = np.where(held_out, "test", out["group"].map(assignment))
    check_no_leakage(out)
    _every_class_in_every_split(table, out, ("train", "val"))
    return out


def split_seed(split, seed: int) -> int:
    """The seed of the patient split (or fold draw): ``[data.split] seed``, else the recipe's ``seed``."""
    return seed if split.seed is None else split.seed


def split_table(table: pd.DataFrame, split, seed: int) -> pd.DataFrame:
    """The recipe's split of ``table`` (``split`` is its ``[data.split]``): one patient split, or the test
    fold ``split.fold`` of ``split.folds``-fold cross-validation. ``seed`` is the recipe's, used when the
    split sets none."""
    seed = split_seed(split, seed)
    if split.folds is None:
        return split_by_group(table, split.val, split.test, seed)
    if split.fold is None:
        raise HistofuseError("split_table splits one fold; give split.fold, or use assign_folds for all of them")
    return split_for_fold(assign_folds(table, split.folds, seed), split.fold, split.val, seed)


def _group_labels(table: pd.DataFrame) -> pd.Series:
    """Each group's majority label: what stratification balances."""
    return table.groupby("group")["label"].agg(lambda s: s.value_counts().index[0])


def _shuffled_by_class(group_label: pd.Series, rng: np.random.Generator):
    """Each class's groups, in a fixed class order, shuffled by ``rng``: what stratified assignment deals out."""
    for label in sorted(group_label.unique(), key=str):
        groups = np.array(sorted(group_label.index[group_label == label], key=str), dtype=object)
        rng.shuffle(groups)
        yield groups


def _need_groups(group_label: pd.Series, needed: int, purpose: str, advice: str) -> None:
    too_few = {label: int(n) for label, n in group_label.value_counts().items() if n < needed}
    if too_few:
        detail = ", ".join(f"'{label}': {n}" for label, n in sorted(too_few.items(), key=str))
        raise DataError(f"{purpose} needs at least {needed} patients (groups) per class, found {detail}. {advice}")


def _every_class_in_every_split(table: pd.DataFrame, out: pd.DataFrame, splits) -> None:
    missing = [
        f"{split} has no '{label}'"
        for split in splits
        for label in sorted(table["label"].unique(), key=str)
        if not ((out["split"] == split) & (out["label"] == label)).any()
    ]
    if missing:
        raise DataError(
            "the patient-level split leaves a class out of a split (" + "; ".join(missing) + "): that class is never "
            "the main label of enough patients. Give it more patients, or merge it into another class."
        )


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
