"""Classification metrics from scikit-learn, the same for validation, test and external sets."""

from __future__ import annotations

import math

import numpy as np
from sklearn import metrics as skm


def classification_metrics(
    labels: np.ndarray, probs: np.ndarray, classes: list[str], threshold: float | None = None,
    decided: np.ndarray | None = None,
) -> dict:
    """Metrics for predicted class probabilities ``probs`` (N, C) against integer ``labels``.

    With two classes, the second class is positive: ``auc``, ``precision``,
    ``recall`` (sensitivity), ``specificity`` and ``f1`` refer to it. With more,
    they are macro averages and ``auc`` is one-vs-rest. A metric that is undefined
    for this data (e.g. AUC with one class present) is None. ``threshold`` (two
    classes only) predicts positive when its probability reaches it; otherwise
    the most probable class wins. ``decided`` (class indices) gives decisions
    made elsewhere instead: out-of-fold rows, say, each cut at its own fold's threshold.
    """
    labels = np.asarray(labels, dtype=int)
    probs = np.asarray(probs, dtype=np.float64)
    preds = probs.argmax(1)
    if threshold is not None and probs.shape[1] == 2:
        preds = (probs[:, 1] >= threshold).astype(int)
    if decided is not None:
        preds = np.asarray(decided, dtype=int)
    k = len(classes)
    out: dict = {
        "n": int(len(labels)),
        "accuracy": float(skm.accuracy_score(labels, preds)) if len(labels) else None,
        "balanced_accuracy": None,
        "auc": None,
    }
    present = np.unique(labels)
    cm = skm.confusion_matrix(labels, preds, labels=list(range(k))) if len(labels) else np.zeros((k, k), int)
    if len(labels):
        # Mean recall over the classes present, as scikit-learn defines it, without its one-class warning.
        rows = cm.sum(1)
        out["balanced_accuracy"] = float(np.mean(np.diag(cm)[rows > 0] / rows[rows > 0]))
    if len(present) == k:
        if k == 2:
            out["auc"] = float(skm.roc_auc_score(labels, probs[:, 1]))
        else:
            out["auc"] = float(skm.roc_auc_score(labels, probs, multi_class="ovr", average="macro", labels=list(range(k))))
    out.update(_binary_rates(cm, classes) if k == 2 else _macro_rates(labels, preds, probs, cm, classes))
    out["confusion_matrix"] = cm.tolist()
    out["classes"] = list(classes)
    if k == 2:
        out["threshold"] = None if threshold is None else float(threshold)  # None: the most probable class
    return out


def patient_level(labels: np.ndarray, probs: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One row per patient: the majority label and the mean class probabilities of its images."""
    import pandas as pd

    frame = pd.DataFrame(probs).assign(group=groups, label=labels)
    grouped = frame.groupby("group", sort=True)
    patient_labels = grouped["label"].agg(lambda s: s.value_counts().index[0]).to_numpy()
    patient_probs = grouped[list(range(probs.shape[1]))].mean().to_numpy()
    return patient_labels, patient_probs


def bootstrap_auc_ci(
    labels: np.ndarray, probs: np.ndarray, groups: np.ndarray, n: int = 1000, seed: int = 0, level: float = 0.95
) -> list[float] | None:
    """Percentile interval of the image-level AUC, resampling patients (not images) with replacement.

    Images of one patient are correlated; resampling them independently would
    make the interval far too narrow.
    """
    if n <= 0:
        return None
    unique, inverse = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(len(unique))]
    rng = np.random.default_rng(seed)
    k = probs.shape[1]
    values = []
    for _ in range(n):
        take = np.concatenate([members[g] for g in rng.integers(0, len(unique), len(unique))])
        y = labels[take]
        if len(np.unique(y)) < k:
            continue
        p = probs[take]
        values.append(rank_auc(y == 1, p[:, 1]) if k == 2 else np.mean([rank_auc(y == c, p[:, c]) for c in range(k)]))
    if len(values) < n // 2:
        return None  # too few patients of some class for a meaningful interval
    tail = (1 - level) / 2 * 100
    return [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))]


def rank_auc(positive: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic (ties count half), equal to scikit-learn's roc_auc_score; without
    its input validation, a thousand bootstrap resamples take milliseconds instead of seconds."""
    from scipy.stats import rankdata

    ranks = rankdata(score)
    n_pos = int(positive.sum())
    n_neg = len(score) - n_pos
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _per_class(labels: np.ndarray, preds: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict:
    """Precision, recall, F1, support and one-vs-rest AUC of every class."""
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        labels, preds, labels=list(range(len(classes))), zero_division=0
    )
    report = {}
    for c, name in enumerate(classes):
        positive = labels == c
        auc = float(skm.roc_auc_score(positive, probs[:, c])) if 0 < positive.sum() < len(labels) else None
        report[name] = {
            "precision": float(precision[c]), "recall": float(recall[c]), "f1": float(f1[c]),
            "support": int(support[c]), "auc_ovr": auc,
        }
    return report


def _binary_rates(cm: np.ndarray, classes: list[str]) -> dict:
    """Precision, recall (sensitivity), specificity and F1 of the positive (second) class."""
    tn, fp, fn, tp = cm.ravel()
    p, r = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    f1 = None if p is None or r is None else (0.0 if p + r == 0 else 2 * p * r / (p + r))
    return {"precision": p, "recall": r, "specificity": _ratio(tn, tn + fp), "f1": f1, "positive_class": classes[1]}


def _macro_rates(labels: np.ndarray, preds: np.ndarray, probs: np.ndarray, cm: np.ndarray, classes: list[str]) -> dict:
    """Macro averages (and weighted ones) over the classes, and each class's own figures."""
    k = len(classes)
    scores = (("precision", skm.precision_score), ("recall", skm.recall_score), ("f1", skm.f1_score))
    out = {name: float(fn(labels, preds, average="macro", labels=list(range(k)), zero_division=0)) for name, fn in scores}
    out["specificity"] = _macro_specificity(cm)
    out["weighted"] = {
        name: float(fn(labels, preds, average="weighted", labels=list(range(k)), zero_division=0)) for name, fn in scores
    }
    out["per_class"] = _per_class(labels, preds, probs, classes)
    return out


def _ratio(num: float, den: float) -> float | None:
    return None if den == 0 else float(num) / float(den)


def _macro_specificity(cm: np.ndarray) -> float | None:
    values = []
    total = cm.sum()
    for c in range(len(cm)):
        tp = cm[c, c]
        fp = cm[:, c].sum() - tp
        fn = cm[c, :].sum() - tp
        tn = total - tp - fp - fn
        if tn + fp:
            values.append(tn / (tn + fp))
    return float(np.mean(values)) if values else None


def monitor_value(metrics: dict, loss: float, monitor: str) -> float:
    """The number the scheduler and early stopping follow; an undefined AUC counts as worst."""
    if monitor == "val_loss":
        return loss
    value = metrics["auc" if monitor == "val_auc" else "balanced_accuracy"]
    return -math.inf if value is None else value
