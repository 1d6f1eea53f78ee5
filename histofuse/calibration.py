"""Decision threshold, temperature scaling and calibration error, fitted on validation data only."""

from __future__ import annotations

import numpy as np


def youden_threshold(labels: np.ndarray, p_positive: np.ndarray) -> float | None:
    """The probability cut that maximises sensitivity + specificity - 1 on these (validation) data.

    None when no cut beats chance (one class only, or J <= 0): the caller then
    falls back to the most probable class instead of locking in a useless cut.
    """
    from sklearn.metrics import roc_curve

    if len(np.unique(labels)) < 2:
        return None
    fpr, tpr, thresholds = roc_curve(labels, p_positive)
    # roc_curve's first threshold is +inf (predict nothing positive); it is never a candidate.
    j = (tpr - fpr)[1:]
    best = int(np.argmax(j)) + 1
    if j[best - 1] <= 0:
        return None
    return float(min(thresholds[best], 1.0))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T minimising the negative log-likelihood of softmax(logits / T)."""
    from scipy.optimize import minimize_scalar

    def nll(log_t: float) -> float:
        z = logits / np.exp(log_t)
        z = z - z.max(1, keepdims=True)
        log_probs = z - np.log(np.exp(z).sum(1, keepdims=True))
        return float(-log_probs[np.arange(len(labels)), labels].mean())

    result = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(result.x))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits / temperature
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int = 15) -> float:
    """ECE of the top-class confidence over equal-width bins."""
    confidence = probs.max(1)
    correct = probs.argmax(1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (confidence > lo) & (confidence <= hi)
        if inside.any():
            ece += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(ece)
