"""Real BreaKHis tissue through the adapter, QC, stain normalizers, data check and a run.

The 53 images lie beside the clone in ../shared/realdata/breakhis_small (research use only: they are read
from there and never copied into this repository). Where they are absent every test here skips, saying so.
"""

import json

import numpy as np
import pandas as pd
import pytest

from conftest import REPO, write_toml

REAL = REPO.parent / "shared" / "realdata" / "breakhis_small"
pytestmark = pytest.mark.skipif(not REAL.exists(), reason=f"the real BreaKHis sample is absent ({REAL})")


@pytest.fixture(scope="module")
def table():
    from histofuse_builtins.data_breakhis import scan_breakhis

    return scan_breakhis(REAL)


@pytest.fixture(scope="module")
def images(table):
    from histofuse.data.decode import decode_image

    return [decode_image(path) for path in table["path"]]


def test_the_breakhis_adapter_reads_the_real_layout(table):
    assert len(table) == 53
    assert table["label"].value_counts().to_dict() == {"malignant": 33, "benign": 20}
    assert table.groupby("group")["label"].nunique().max() == 1  # a patient has one diagnosis
    assert set(table["magnification"]) == {40, 100, 200, 400}
    from histofuse_builtins.breakhis_layout import SUBTYPES

    assert set(table["subtype"]) <= {subtype for _, subtype in SUBTYPES.values()}
    benign = table[table["label"] == "benign"]
    assert set(benign["subtype"]) <= {subtype for label, subtype in SUBTYPES.values() if label == "benign"}


def test_qc_keeps_real_tissue_and_scores_every_image(table):
    from histofuse.data.decode import decode_image
    from histofuse.qc import QCThresholds, qc_summary, run_qc

    scored = run_qc(table, QCThresholds(), decode_image)
    summary = qc_summary(scored)
    assert summary["checked"] == 53 and summary["passed"] >= 45  # the defaults are not tuned away from real H&E
    assert scored["blur"].notna().all() and scored["tissue"].between(0, 1).all()
    assert scored.loc[~scored["qc_pass"], "qc_reason"].str.len().gt(0).all()


def lab_means(images) -> np.ndarray:
    from histofuse.color_baseline import lab_stats

    return np.array([lab_stats(image)[:3] for image in images])


@pytest.mark.parametrize("name", ["reinhard", "macenko", "vahadane"])
def test_stain_normalizers_fit_and_transform_real_tissue(registry, images, name):
    normalizer = registry.get("normalizer", name).build()
    normalizer.fit(images[:20])
    out = [normalizer.transform(image) for image in images[20:32]]
    assert all(o.shape == i.shape and o.dtype == np.uint8 for o, i in zip(out, images[20:32]))
    assert sum(not np.array_equal(o, i) for o, i in zip(out, images[20:32])) >= 10
    spread_before, spread_after = lab_means(images[20:32]).std(0), lab_means(out).std(0)
    if name == "reinhard":  # every image ends at the training images' LAB statistics
        assert (spread_after < spread_before / 10).all()
    if name == "macenko":  # two distinct stains, eosin absorbing most in green; image colours drawn together
        hematoxylin, eosin = np.asarray(normalizer.state["stains"])
        assert np.degrees(np.arccos(np.clip(hematoxylin @ eosin, -1, 1))) > 30 and eosin.argmax() == 1
        assert spread_after.mean() < spread_before.mean()


def test_data_check_finds_nothing_wrong_with_the_real_set():
    from test_run import cli

    done = cli("data", "check", "breakhis", str(REAL))
    assert done.returncode == 0, done.stderr
    assert "53 images checked" in done.stdout


def test_a_one_epoch_run_on_real_tissue(tmp_path, tiny_recipe_dict):
    from test_run import cli, only_run_dir

    tiny_recipe_dict["data"] = {
        "dataset": "breakhis", "root": str(REAL), "image_size": 64, "resize": 72, "batch_size": 8, "num_workers": 0,
        "split": {"val": 0.25, "test": 0.25},
    }
    tiny_recipe_dict["phases"] = tiny_recipe_dict["phases"][:1]
    tiny_recipe_dict["evaluation"] = {"bootstrap": 0, "color_baseline": True}
    recipe = write_toml(tmp_path / "real.toml", tiny_recipe_dict)
    done = cli("run", str(recipe), "-o", str(tmp_path / "runs"))
    assert done.returncode == 0, done.stderr
    run_dir = only_run_dir(tmp_path / "runs")
    assert len(pd.read_csv(run_dir / "history.csv")) == 1
    split = pd.read_csv(run_dir / "split.csv", dtype={"group": str})
    predictions = pd.read_csv(run_dir / "predictions.csv", dtype={"group": str})
    assert set(predictions["group"]) == set(split.loc[split["split"] == "test", "group"])
    metrics = json.loads((run_dir / "metrics.json").read_text())["test"]
    assert metrics["failed_images"] == {} and 0 <= metrics["auc"] <= 1 and "auc" in metrics["color_baseline"]
