import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from histofuse.metrics import classification_metrics, monitor_value


def test_binary_metrics_match_a_hand_computed_confusion_matrix():
    labels = np.array([0, 0, 0, 1, 1, 1, 1])
    p_malignant = np.array([0.1, 0.6, 0.2, 0.9, 0.8, 0.3, 0.7])
    m = classification_metrics(labels, np.stack([1 - p_malignant, p_malignant], 1), ["benign", "malignant"])
    # predictions: 0 1 0 | 1 1 0 1 -> tn 2, fp 1, fn 1, tp 3
    assert m["confusion_matrix"] == [[2, 1], [1, 3]]
    assert m["accuracy"] == pytest.approx(5 / 7)
    assert m["precision"] == pytest.approx(3 / 4)
    assert m["recall"] == pytest.approx(3 / 4)
    assert m["specificity"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(0.75)
    assert m["balanced_accuracy"] == pytest.approx((3 / 4 + 2 / 3) / 2)
    assert m["auc"] == pytest.approx(11 / 12)  # 11 of 12 (benign, malignant) pairs ranked right
    assert m["positive_class"] == "malignant"


def test_auc_is_undefined_with_one_class_and_then_counts_as_worst():
    m = classification_metrics(np.array([1, 1]), np.array([[0.2, 0.8], [0.4, 0.6]]), ["b", "m"])
    assert m["auc"] is None and m["specificity"] is None
    assert monitor_value(m, 0.3, "val_auc") == -np.inf
    assert monitor_value(m, 0.3, "val_loss") == 0.3


def test_multiclass_metrics_are_macro_averages():
    labels = np.array([0, 1, 2, 2])
    probs = np.eye(3)[[0, 1, 2, 1]] * 0.8 + 0.2 / 3
    m = classification_metrics(labels, probs, ["a", "b", "c"])
    assert m["accuracy"] == 0.75
    assert m["recall"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert m["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    # One-vs-rest AUC per class, counting (positive, negative) pairs ranked right (ties half):
    # a: 1 positive scored highest of all -> 3/3; b: its positive ties image 3 (predicted b, labelled c) -> 2.5/3;
    # c: image 2 beats both negatives, image 3 ties both -> 3/4. Macro: their unweighted mean, 31/36.
    assert [m["per_class"][c]["auc_ovr"] for c in "abc"] == pytest.approx([1.0, 5 / 6, 3 / 4])
    assert m["auc"] == pytest.approx((1 + 5 / 6 + 3 / 4) / 3)  # not support-weighted (that would be 5/6)
    assert m["auc"] == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr", average="macro"))
    assert m["per_class"]["c"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2, "auc_ovr": 0.75}
    assert m["per_class"]["b"]["precision"] == 0.5
    assert m["weighted"]["recall"] == pytest.approx(0.75)  # support-weighted recall is accuracy
