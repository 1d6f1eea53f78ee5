"""The report's figures (matplotlib, loaded on first use): training curves, ROC curves, confusion matrix, folds."""

from __future__ import annotations

import numpy as np
import pandas as pd


def curves(history: pd.DataFrame):
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(15, 4))
    epochs = history["epoch"]
    axes[0].plot(epochs, history["train_loss"], label="train loss")
    axes[0].plot(epochs, history["val_loss"], label="validation loss")
    axes[1].plot(epochs, history["val_auc"], label="validation AUC", color="tab:green")
    best = history[history["best"].astype(str) == "True"]
    axes[1].scatter(best["epoch"], best["val_auc"], marker="*", s=80, color="tab:red", label="new best", zorder=3)
    for column in [c for c in history.columns if c.startswith("lr_")]:
        axes[2].plot(epochs, history[column], label=column[3:])
    axes[2].set_yscale("symlog", linthresh=1e-7)
    titles = ("loss", "validation AUC", "learning rate per group")
    starts = history.groupby("phase_index", sort=True)["epoch"].min()
    names = history.groupby("phase_index", sort=True)["phase"].first()
    for axis, title in zip(axes, titles):
        for index, start in starts.items():
            axis.axvline(start - 0.5, color="grey", linestyle=":", linewidth=1)
            axis.text(start - 0.4, 1.0, names[index], transform=axis.get_xaxis_transform(), fontsize=8, va="top", color="grey")
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.legend(fontsize=8)
    return figure


def fold_rocs(oof: pd.DataFrame, positive: str, pooled: dict):
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    figure, axis = plt.subplots(figsize=(4.5, 4.5))
    for fold, part in oof.groupby("fold"):
        labels = (part["label"].astype(str) == positive).astype(int)
        if labels.nunique() == 2:
            fpr, tpr, _ = roc_curve(labels, part[f"prob_{positive}"])
            axis.plot(fpr, tpr, linewidth=0.8, alpha=0.6, label=f"fold {fold}")
    labels = (oof["label"].astype(str) == positive).astype(int)
    fpr, tpr, _ = roc_curve(labels, oof[f"prob_{positive}"])
    ci = pooled.get("auc_ci95")
    auc = "n/a" if pooled["auc"] is None else f"{pooled['auc']:.3f}"
    axis.plot(fpr, tpr, color="black", linewidth=2,
              label=f"pooled AUC {auc}" + (f" (95% CI {ci[0]:.3f}–{ci[1]:.3f})" if ci else ""))
    axis.plot([0, 1], [0, 1], linestyle=":", color="grey")
    axis.set_xlabel("1 − specificity")
    axis.set_ylabel(f"sensitivity ({positive})")
    axis.set_title("ROC: out-of-fold predictions")
    axis.legend(loc="lower right", fontsize=7)
    return figure


def fold_spread(cv: dict):
    """Each fold's AUC beside its colour-only AUC: how much of the spread is the folds, and where the floor is."""
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(4.5, 4.5))
    rows = cv["test"]["per_fold"]
    for x, (key, label) in enumerate((("auc", "model"), ("colour_only_auc", "colour only"))):
        values = [r[key] for r in rows if r[key] is not None]
        axis.scatter([x] * len(values), values, s=30, zorder=3)
        if values:
            axis.hlines(float(np.mean(values)), x - 0.2, x + 0.2, color="black")
    axis.set_xticks([0, 1], ["model", "colour only"])
    axis.set_xlim(-0.6, 1.6)
    axis.set_ylabel("test-fold AUC")
    axis.set_title(f"spread over {cv['folds']} folds")
    return figure


def roc(predictions: pd.DataFrame, m: dict):
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    positive = m["positive_class"]
    labels = (predictions["label"].astype(str) == positive).astype(int)
    fpr, tpr, _ = roc_curve(labels, predictions[f"prob_{positive}"])
    figure, axis = plt.subplots(figsize=(4.5, 4.5))
    ci = m.get("auc_ci95")
    auc = "n/a" if m["auc"] is None else f"{m['auc']:.3f}"
    axis.plot(fpr, tpr, label=f"AUC {auc}" + (f" (95% CI {ci[0]:.3f}–{ci[1]:.3f})" if ci else ""))
    axis.plot([0, 1], [0, 1], linestyle=":", color="grey")
    axis.set_xlabel("1 − specificity")
    axis.set_ylabel(f"sensitivity ({positive})")
    axis.set_title(f"ROC: {m['name']}")
    axis.legend(loc="lower right", fontsize=8)
    return figure


def confusion(matrix: np.ndarray, classes: list[str]):
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(4.5, 4.5))
    axis.imshow(matrix, cmap="Blues")
    for (i, j), value in np.ndenumerate(matrix):
        axis.text(j, i, str(value), ha="center", va="center", color="white" if value > matrix.max() / 2 else "black")
    axis.set_xticks(range(len(classes)), classes)
    axis.set_yticks(range(len(classes)), classes)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title("confusion matrix")
    return figure
