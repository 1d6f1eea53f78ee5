"""The colour-only baseline: six LAB numbers per image and a logistic regression.

On small histology sets stain colour alone can separate patients. Reporting what
colour alone achieves, fitted on the same training split, shows whether a model
learned more than stain.
"""

from __future__ import annotations

import cv2
import numpy as np


def lab_stats(rgb: np.ndarray) -> np.ndarray:
    """Mean and standard deviation of L, a, b (OpenCV 8-bit scale) of one RGB uint8 image."""
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).reshape(-1, 3).astype(np.float32)
    return np.concatenate([lab.mean(0), lab.std(0)])


class ColorBaseline:
    def __init__(self, mean=None, scale=None, coef=None, intercept=None, classes=None):
        self.mean, self.scale, self.coef, self.intercept, self.classes = mean, scale, coef, intercept, classes

    def fit(self, stats: np.ndarray, labels: np.ndarray) -> "ColorBaseline":
        from sklearn.linear_model import LogisticRegression

        self.mean = stats.mean(0)
        self.scale = stats.std(0) + 1e-6
        model = LogisticRegression(max_iter=1000).fit((stats - self.mean) / self.scale, labels)
        self.coef, self.intercept, self.classes = model.coef_, model.intercept_, model.classes_
        return self

    def predict_proba(self, stats: np.ndarray, num_classes: int) -> np.ndarray:
        z = ((stats - self.mean) / self.scale) @ np.asarray(self.coef).T + np.asarray(self.intercept)
        if z.shape[1] == 1:  # binary logistic regression: one column of log-odds
            p = 1 / (1 + np.exp(-z[:, 0]))
            fitted = np.stack([1 - p, p], 1)
        else:
            e = np.exp(z - z.max(1, keepdims=True))
            fitted = e / e.sum(1, keepdims=True)
        out = np.zeros((len(stats), num_classes))
        out[:, np.asarray(self.classes, dtype=int)] = fitted
        return out

    def to_json(self) -> dict:
        return {k: np.asarray(v).tolist() for k, v in vars(self).items()}

    @classmethod
    def from_json(cls, data: dict) -> "ColorBaseline":
        return cls(**{k: np.asarray(v) for k, v in data.items()})
