"""BACH on generated trees in the real layout (2048 x 1536 TIFF), and evaluation on it after training."""

import json
import shutil

import cv2
import numpy as np
import pytest

from conftest import write_toml
from histofuse.errors import DataError

CLASSES = {"Benign": "b", "InSitu": "is", "Invasive": "iv", "Normal": "n"}


@pytest.fixture(scope="session")
def bach_root(tmp_path_factory):
    """ICIAR2018_BACH_Challenge/Photos/<class>/<prefix>NNN.tif plus microscopy_ground_truth.csv."""
    from histofuse_builtins.synthetic_tissue import patient_stain, render_tile

    rng = np.random.default_rng(0)
    base = {m: render_tile(rng, m, patient_stain(rng, "b"), 2048, 1536, 200) for m in (False, True)}
    root = tmp_path_factory.mktemp("bach") / "ICIAR2018_BACH_Challenge"
    photos = root / "Photos"
    truth = []
    for cls, prefix in CLASSES.items():
        (photos / cls).mkdir(parents=True)
        for i in range(1, 3):
            image = base[cls in ("InSitu", "Invasive")]
            image = image[:, ::-1] if i == 2 else image
            cv2.imwrite(str(photos / cls / f"{prefix}{i:03d}.tif"), cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR))
            truth.append(f"{prefix}{i:03d}.tif,{cls}")
    (photos / "microscopy_ground_truth.csv").write_text("\n".join(truth) + "\n")
    # Two images that quality control must remove: out of focus, and almost no tissue.
    cv2.imwrite(str(photos / "Normal" / "n003.tif"), cv2.GaussianBlur(base[False], (0, 0), 8)[:, :, ::-1])
    cv2.imwrite(str(photos / "Benign" / "b003.tif"), np.full((1536, 2048, 3), 245, np.uint8))
    with (photos / "microscopy_ground_truth.csv").open("a") as f:
        f.write("n003.tif,Normal\nb003.tif,Benign\n")
    return root


def test_bach_reads_the_release_layout_with_both_label_schemes(bach_root):
    from histofuse_builtins.data_bach import scan_bach

    binary = scan_bach(bach_root)
    assert len(binary) == 10
    assert binary.groupby("bach_class")["label"].first().to_dict() == {
        "Benign": "benign", "InSitu": "malignant", "Invasive": "malignant", "Normal": "benign",
    }
    assert binary["group"].is_unique  # no patient ids: every image its own group
    four = scan_bach(bach_root, label="4class")
    assert sorted(four["label"].unique()) == ["Benign", "InSitu", "Invasive", "Normal"]
    assert cv2.imread(four["path"][0]).shape == (1536, 2048, 3)


def test_bach_reads_repackaged_copies_with_other_names_and_formats(tmp_path):
    from histofuse_builtins.data_bach import scan_bach

    for folder in ("benign", "in situ", "invasive", "normal"):
        (tmp_path / "bach" / folder).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "bach" / folder / "x1.png"), np.zeros((8, 8, 3), np.uint8))
        cv2.imwrite(str(tmp_path / "bach" / folder / "x2.jpg"), np.zeros((8, 8, 3), np.uint8))
    table = scan_bach(tmp_path, label="4class")
    assert len(table) == 8 and sorted(table["label"].unique()) == ["Benign", "InSitu", "Invasive", "Normal"]


def test_bach_refuses_a_copy_that_disagrees_with_its_ground_truth(bach_root, tmp_path):
    from histofuse_builtins.data_bach import scan_bach

    copy = tmp_path / "copy"
    shutil.copytree(bach_root, copy)
    (copy / "Photos" / "Normal" / "n001.tif").rename(copy / "Photos" / "Invasive" / "n001.tif")
    with pytest.raises(DataError, match="n001.tif: folder Invasive, microscopy_ground_truth.csv Normal"):
        scan_bach(copy)


def test_bach_missing_or_wrong_root(tmp_path):
    from histofuse_builtins.data_bach import scan_bach

    with pytest.raises(FileNotFoundError):
        scan_bach(tmp_path / "nowhere")
    with pytest.raises(DataError, match="no BACH class folders"):
        scan_bach(tmp_path)


def test_train_on_breakhis_layout_then_evaluate_on_bach_with_qc_reinhard_and_tta(tmp_path, tiny_recipe_dict, bach_root):
    from test_run import cli, only_run_dir, run_cli

    tiny_recipe_dict["evaluate"] = [
        {"name": "bach", "dataset": "bach", "root": str(bach_root), "qc": {"enabled": True}, "normalize": True, "tta": "d4"},
        {"name": "bach_raw", "dataset": "bach", "root": str(bach_root)},
    ]
    recipe = write_toml(tmp_path / "tiny.toml", tiny_recipe_dict)
    result = run_cli(["run", str(recipe), "-o", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    run_dir = only_run_dir(tmp_path / "runs")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["bach"]["qc"] == {"checked": 10, "passed": 8, "removed": 2, "reasons": {"blurred": 2, "little tissue": 1}}
    assert metrics["bach"]["n"] == 8 and metrics["bach"]["tta"] == "d4" and metrics["bach"]["normalized"]
    assert metrics["bach_raw"]["n"] == 10 and metrics["bach_raw"]["qc"] is None
    saved = json.loads((run_dir / "evaluation.json").read_text())
    # Locked from the validation split, once per TTA mode: views change the score distribution.
    assert metrics["bach_raw"]["threshold"] == metrics["test"]["threshold"] == saved["calibration"]["none"]["threshold"]
    assert metrics["bach"]["threshold"] == saved["calibration"]["d4"]["threshold"]
    for name in ("predictions_bach.csv", "predictions_bach_raw.csv", "qc_bach.csv", "evaluation.json"):
        assert (run_dir / name).is_file(), name
    assert saved["normalizer"]["name"] == "reinhard" and len(saved["normalizer"]["state"]["mean"]) == 3
    assert "QC removed 2 of 10" in result.output

    # The same evaluation later, from the command line, reusing the run's fitted state.
    done = cli("evaluate", str(run_dir), "--dataset", "bach", "--root", str(bach_root), "--name", "bach_again", "--qc", "--normalize", "--tta", "d4")
    assert done.returncode == 0, done.stderr
    again = json.loads((run_dir / "metrics.json").read_text())["bach_again"]
    assert again["auc"] == pytest.approx(metrics["bach"]["auc"], abs=1e-6)
    assert again["qc"] == metrics["bach"]["qc"]


def test_qc_and_stain_stats_commands(tmp_path, bach_root):
    import pandas as pd

    from test_run import cli

    done = cli("qc", "bach", str(bach_root), "--out", str(tmp_path / "qc.csv"))
    assert done.returncode == 0, done.stderr
    assert "removed: blurred" in done.stdout and "removed: little tissue" in done.stdout
    scored = pd.read_csv(tmp_path / "qc.csv")
    assert len(scored) == 10 and scored["qc_pass"].sum() == 8 and {"blur", "tissue"} <= set(scored.columns)

    done = cli("qc", "bach", str(bach_root), "--out", str(tmp_path / "qc_scaled.csv"), "--mpp", "0.84")
    assert done.returncode == 0, done.stderr
    scaled = pd.read_csv(tmp_path / "qc_scaled.csv")  # BACH's 0.42 µm/px halved: other pixels, other sharpness
    assert len(scaled) == 10 and (scaled["blur"] != scored["blur"]).sum() >= 8  # blank ones score 0 at any scale
    done = cli("qc", "synthetic", str(tmp_path / "synthetic"), "--mpp", "0.5", "--option", "patients_per_class=3",
               "--option", "images_per_magnification=1", "--option", "width=48", "--option", "height=32")
    assert done.returncode != 0 and "--mpp = 0.5 rescales every image" in done.stderr and "leave out --mpp" in done.stderr

    done = cli("stain-stats", "bach", str(bach_root), "--out", str(tmp_path / "stats.json"), "--tissue-only")
    assert done.returncode == 0, done.stderr
    saved = json.loads((tmp_path / "stats.json").read_text())
    assert saved["images"] == 10 and saved["options"] == {"tissue_only": True}
    assert len(saved["state"]["mean"]) == 3 and all(s > 0 for s in saved["state"]["std"])

    done = cli("qc", "bach", str(tmp_path / "nowhere"))
    assert done.returncode == 2 and "BACH part A" in done.stderr and "Traceback" not in done.stderr


def test_external_label_problems_are_found_before_training(tmp_path, tiny_recipe_dict, bach_root):
    from test_run import cli

    tiny_recipe_dict["evaluate"] = [{"name": "bach4", "dataset": "bach", "root": str(bach_root), "options": {"label": "4class"}}]
    recipe = write_toml(tmp_path / "tiny.toml", tiny_recipe_dict)
    done = cli("run", str(recipe), "-o", str(tmp_path / "runs"))
    assert done.returncode == 2
    text = " ".join(done.stderr.split())
    assert "evaluate[0]:" in text and "are not classes of this model" in text and "label_map" in text
    assert not (tmp_path / "runs").exists()


def test_a_magnification_aware_model_trains_on_breakhis_layout_and_evaluates_on_bach_without_magnifications(
    tmp_path, tiny_recipe_dict, bach_root
):
    from test_run import only_run_dir, run_cli

    tiny_recipe_dict["model"]["magnification"] = {"enabled": True, "dim": 4}
    tiny_recipe_dict["evaluate"] = [{"name": "bach", "dataset": "bach", "root": str(bach_root)}]
    recipe = write_toml(tmp_path / "mag.toml", tiny_recipe_dict)
    result = run_cli(["run", str(recipe), "-o", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    run_dir = only_run_dir(tmp_path / "runs")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["bach"]["n"] == 10 and "error" not in metrics["bach"]
    assert sorted(metrics["test"]["per_magnification"]) == ["100", "200", "40", "400"]
    from safetensors.torch import load_file

    weights = load_file(str(run_dir / "model.safetensors"))
    assert weights["magnification.embed.weight"].shape == (5, 4)  # 4 magnifications + unknown
