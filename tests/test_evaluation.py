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


def _as_tensor(rgb):
    return torch.from_numpy(np.ascontiguousarray(rgb[:32, :32])).permute(2, 0, 1)


def test_tiles_left_unchanged_in_loader_workers_are_counted_in_the_main_process(tmp_path):
    from types import SimpleNamespace

    import cv2
    import pandas as pd
    from histofuse_builtins.stain_macenko import Macenko
    from histofuse_builtins.stain_matrix import FLAT, TOO_LITTLE_TISSUE
    from histofuse_builtins.synthetic_tissue import patient_stain, render_tile

    from histofuse.data.loading import make_loader
    from histofuse.data.eval_loader import NormalizingTable, collate_unchanged, collect_unchanged
    from histofuse.evaluation.sets import normalization_summary

    rng = np.random.default_rng(0)
    tissue = [render_tile(rng, i % 2 == 1, patient_stain(rng, "a"), 96, 64, 200) for i in range(4)]
    normalizer = Macenko()
    normalizer.fit(tissue)
    images = {"white": np.full((64, 96, 3), 255, np.uint8), "flat": np.full((64, 96, 3), (190, 110, 170), np.uint8)}
    paths = []
    for i, rgb in enumerate([*tissue, images["white"], images["white"], images["flat"]]):
        paths.append(str(tmp_path / f"{i}.png"))
        cv2.imwrite(paths[-1], cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    (tmp_path / "bad.png").write_bytes(b"not an image")
    frame = pd.DataFrame({"path": [*paths, str(tmp_path / "bad.png")]})
    loader = make_loader(NormalizingTable(frame, ["benign", "malignant"], _as_tensor, normalizer), 2, train=False, num_workers=2)
    loader.collate_fn = collate_unchanged
    reasons: dict = {}
    batches = list(collect_unchanged(loader, reasons))
    assert sum(len(b["failed"]) for b in batches) == 1 and all("unchanged" not in b for b in batches)
    assert reasons == {4: TOO_LITTLE_TISSUE, 5: TOO_LITTLE_TISSUE, 6: FLAT}
    assert not normalizer.unchanged  # the workers counted on their own copies: this one saw nothing
    summary = normalization_summary("macenko", normalizer, reasons, SimpleNamespace(num_processes=1, is_main_process=True))
    assert summary == {"method": "macenko", "source": "image", "unchanged": {TOO_LITTLE_TISSUE: 2, FLAT: 1}, "adapted": None}


def test_the_report_shows_each_sets_normalization_and_the_comparisons_unchanged_tiles(tmp_path):
    import json

    from histofuse.report import write_report

    normalization = {"method": "macenko", "source": "dataset", "unchanged": {"flat (its colour varies no more than sensor noise)": 3},
                     "adapted": {"stains": [[0.65, 0.7, 0.29], [0.07, 0.99, 0.11]], "max_concentrations": [1.2, 0.8]}}
    metrics = {"site_b": {"n": 10, "auc": 0.9, "accuracy": 0.8, "balanced_accuracy": 0.8, "normalized": True,
                          "qc": {"checked": 12, "passed": 10, "removed": 2, "reasons": {"blurred": 2}}, "normalization": normalization}}
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    comparison = {"site_b": {"none": {"auc": 0.9, "accuracy": 0.8, "balanced_accuracy": 0.8, "images": 10},
                             "vahadane": {"auc": 0.85, "accuracy": 0.75, "balanced_accuracy": 0.75, "images": 10,
                                          "unchanged": {"too little tissue (background, or a tiny tile)": 2}}}}
    (tmp_path / "stain_comparison.json").write_text(json.dumps(comparison))
    page = write_report(tmp_path).read_text()
    section = page[page.index("<h3>Quality control</h3>"):]
    assert "<h3>Stain normalization</h3>" in section  # next to QC
    assert "flat (its colour varies no more than sensor noise): 3" in section and "max_concentrations [1.2, 0.8]" in section
    assert "0.850 / 0.75, 2 unchanged" in page and "too little tissue (background, or a tiny tile)</td><td>2" in page
