"""Evaluation pieces: TTA views, threshold and temperature, bootstrap by patient, QC, colour baseline."""

import numpy as np
import pytest
import torch

from histofuse.calibration import expected_calibration_error, fit_temperature, softmax, youden_threshold
from histofuse.color_baseline import ColorBaseline, lab_stats
from histofuse.metrics import bootstrap_auc_ci, classification_metrics, patient_level
from histofuse.qc import QCThresholds, assess, run_qc
from histofuse.tta import D4, PAPER7, predict_logits, view


def test_d4_views_are_eight_distinct_symmetries_and_paper7_repeats_one():
    x = torch.arange(9.0).view(1, 1, 3, 3)
    d4 = {tuple(view(x, n).flatten().tolist()) for n in D4}
    assert len(d4) == 8
    paper = [tuple(view(x, n).flatten().tolist()) for n in PAPER7]
    assert len(paper) == 7 and len(set(paper)) == 6
    assert torch.equal(view(x, "hvflip"), view(x, "rot180"))


def test_tta_is_one_batched_forward_averaging_probabilities():
    calls = []

    class Model(torch.nn.Module):
        def forward(self, x):
            calls.append(x.shape[0])
            return torch.stack([x[:, 0, 0, 0], x[:, 0, 0, -1]], 1) * 5  # depends on orientation

    x = torch.rand(4, 3, 8, 8)
    logits = predict_logits(Model(), x, "d4")
    assert calls == [32]
    expected = torch.stack([Model()(view(x, n)).softmax(1) for n in D4]).mean(0)
    assert torch.allclose(logits.softmax(1), expected, atol=1e-6)


def test_youden_threshold_separates_and_is_a_probability():
    labels = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.35, 0.4, 0.8, 0.9])
    t = youden_threshold(labels, p)
    assert 0.35 < t <= 0.4
    m = classification_metrics(labels, np.stack([1 - p, p], 1), ["b", "m"], threshold=t)
    assert m["accuracy"] == 1.0 and m["threshold"] == t


def test_youden_never_locks_in_a_useless_cut():
    assert youden_threshold(np.array([0, 0, 0]), np.array([0.1, 0.5, 0.9])) is None  # one class
    assert youden_threshold(np.array([0, 0, 1, 1]), np.array([0.9, 0.8, 0.2, 0.1])) is None  # worse than chance


def test_temperature_fit_recovers_the_true_temperature():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 2, (4000, 3))
    labels = np.array([rng.choice(3, p=p) for p in softmax(true_logits)])
    assert fit_temperature(true_logits * 2.0, labels) == pytest.approx(2.0, rel=0.1)


def test_calibration_error_of_a_calibrated_and_an_overconfident_model():
    rng = np.random.default_rng(1)
    confidence = rng.uniform(0.5, 1.0, 20000)
    labels = (rng.uniform(size=20000) > confidence).astype(int)  # class 0 right with prob = confidence
    probs = np.stack([confidence, 1 - confidence], 1)
    assert expected_calibration_error(labels, probs) < 0.02
    overconfident = np.stack([np.full(20000, 0.99), np.full(20000, 0.01)], 1)
    assert expected_calibration_error(labels, overconfident) > 0.2


def test_bootstrap_resamples_patients_not_images():
    rng = np.random.default_rng(2)
    groups = np.repeat(np.arange(10), 50)  # 10 patients, 50 images each
    labels = (groups % 2).astype(int)
    patient_score = rng.normal(0, 1, 10) + labels[::50] * 1.0
    p = 1 / (1 + np.exp(-(patient_score[groups] + rng.normal(0, 0.1, 500))))
    probs = np.stack([1 - p, p], 1)
    by_patient = bootstrap_auc_ci(labels, probs, groups, n=400, seed=0)
    by_image = bootstrap_auc_ci(labels, probs, np.arange(500), n=400, seed=0)
    assert by_patient[1] - by_patient[0] > 2 * (by_image[1] - by_image[0])
    assert bootstrap_auc_ci(labels, probs, groups, n=0) is None


def test_patient_level_averages_each_patients_images():
    labels, probs = patient_level(np.array([1, 1, 0]), np.array([[0.2, 0.8], [0.4, 0.6], [0.9, 0.1]]), np.array(["p1", "p1", "p2"]))
    assert labels.tolist() == [1, 0]
    assert np.allclose(probs, [[0.3, 0.7], [0.9, 0.1]])


def test_qc_flags_blur_and_missing_tissue():
    import cv2

    rng = np.random.default_rng(0)
    sharp = rng.integers(0, 200, (128, 128, 3), dtype=np.uint8)
    assert assess(sharp, QCThresholds())["qc_pass"]
    blurred = cv2.GaussianBlur(sharp, (0, 0), 6)
    assert assess(blurred, QCThresholds())["qc_reason"] == "blurred"
    empty = np.full((128, 128, 3), 240, np.uint8)
    empty[::7] = 0  # some edges, still mostly background
    verdict = assess(empty, QCThresholds())
    assert verdict["qc_reason"] == "little tissue" and verdict["tissue"] < 0.4


def test_run_qc_marks_unreadable_files(tmp_path):
    import pandas as pd

    from histofuse.data.decode import decode_image

    (tmp_path / "bad.png").write_bytes(b"nope")
    scored = run_qc(pd.DataFrame({"path": [str(tmp_path / "bad.png")]}), QCThresholds(), decode_image)
    assert not scored["qc_pass"][0] and scored["qc_reason"][0].startswith("unreadable")


def test_colour_baseline_round_trips_through_json():
    rng = np.random.default_rng(0)
    images = [np.clip(rng.normal(120 + 60 * (i % 2), 20, (16, 16, 3)), 0, 255).astype(np.uint8) for i in range(20)]
    stats = np.stack([lab_stats(im) for im in images])
    labels = np.arange(20) % 2
    baseline = ColorBaseline().fit(stats, labels)
    again = ColorBaseline.from_json(baseline.to_json())
    probs = again.predict_proba(stats, 2)
    assert np.allclose(probs, baseline.predict_proba(stats, 2))
    assert (probs.argmax(1) == labels).all()


def test_multi_crop_views_are_the_corners_and_centre_in_one_forward():
    import torch

    from histofuse.tta import crop, predict_logits

    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).reshape(2, 3, 6, 6)
    assert torch.equal(crop(x, "top_left", 4), x[..., :4, :4]) and torch.equal(crop(x, "bottom_right", 4), x[..., 2:, 2:])
    assert torch.equal(crop(x, "center", 4), x[..., 1:5, 1:5])
    calls = []

    class Spy(torch.nn.Module):
        def forward(self, batch):
            calls.append(batch.shape)
            return batch.mean((1, 2, 3))[:, None].repeat(1, 2) * torch.tensor([1.0, -1.0])

    logits = predict_logits(Spy(), x, "crops5", crop_size=4)
    assert calls == [torch.Size([10, 3, 4, 4])]  # five views of two images, one forward
    expected = torch.stack([Spy()(crop(x, n, 4)).softmax(1) for n in ("top_left", "top_right", "bottom_left", "bottom_right", "center")]).mean(0)
    torch.testing.assert_close(logits.softmax(1), expected)


def test_a_run_evaluates_and_predicts_with_multi_crop(tmp_path, tiny_recipe_dict, synthetic_root):
    import json

    from conftest import write_toml
    from test_run import only_run_dir, run_cli

    tiny_recipe_dict["evaluation"] = {"tta": "crops5", "bootstrap": 0}
    result = run_cli(["run", str(write_toml(tmp_path / "tiny.toml", tiny_recipe_dict)), "-o", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    run_dir = only_run_dir(tmp_path / "runs")
    assert json.loads((run_dir / "metrics.json").read_text())["test"]["tta"] == "crops5"
    assert "crops5" in json.loads((run_dir / "evaluation.json").read_text())["calibration"]
    import shutil

    import pandas as pd

    folder = tmp_path / "new"
    folder.mkdir()
    for source in sorted(synthetic_root.rglob("*.png"))[:2]:
        shutil.copy(source, folder)
    predicted = run_cli(["predict", str(run_dir), str(folder), "--tta", "crops5", "--out", str(tmp_path / "p.csv"), "--num-workers", "0"])
    assert predicted.exit_code == 0, predicted.output
    rows = pd.read_csv(tmp_path / "p.csv")
    assert len(rows) == 2 and rows[["prob_benign", "prob_malignant"]].sum(axis=1).round(5).eq(1).all()
