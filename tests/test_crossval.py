"""Patient-grouped K-fold cross-validation: the folds, the fold runs, out-of-fold pooling, the fold ensemble, resume.

The end-to-end tests share one 3-fold run of the tiny recipe (with an external set), made by the real CLI in
a subprocess; the resume test kills a second one in fold 2 and checks that it ends where the first ended.
"""

import copy
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import TINY_RECIPE, write_toml

PROBE = Path(__file__).resolve().parent / "probe"
FOLDS = 3
# The end-to-end tests share one cross-validation: one xdist worker runs them all (--dist loadgroup).
end_to_end = pytest.mark.xdist_group("crossval")


def patients_table(benign: int, malignant: int, images: int = 3) -> pd.DataFrame:
    rows = []
    for label, count in (("benign", benign), ("malignant", malignant)):
        for p in range(count):
            rows += [{"path": f"{label}-{p}-{i}.png", "group": f"{label}-{p}", "label": label} for i in range(images + p % 3)]
    return pd.DataFrame(rows)


def test_folds_hold_every_patient_exactly_once_and_are_stratified():
    from histofuse.data.split import assign_folds

    table = patients_table(benign=12, malignant=18)
    folds = assign_folds(table, 5, seed=3)
    per_patient = folds.groupby("group")["fold"].nunique()
    assert (per_patient == 1).all()  # a patient's images never sit in two folds
    assert sorted(folds["fold"].unique()) == [1, 2, 3, 4, 5]
    patients = folds.drop_duplicates("group")
    counts = patients.groupby(["fold", "label"]).size().unstack()
    # 12 benign and 18 malignant patients over 5 folds: 2-3 and 3-4 in each, never a fold without a class.
    assert counts["benign"].between(2, 3).all() and counts["malignant"].between(3, 4).all(), counts
    assert assign_folds(table, 5, seed=3)["fold"].equals(folds["fold"])
    assert not assign_folds(table, 5, seed=4)["fold"].equals(folds["fold"])  # another seed, another draw


def test_each_folds_validation_comes_from_its_training_patients_never_its_test_fold():
    from histofuse.data.split import assign_folds, split_for_fold

    table = assign_folds(patients_table(benign=9, malignant=12), 3, seed=0)
    tested = set()
    for fold in (1, 2, 3):
        split = split_for_fold(table, fold, val=0.25, seed=0)
        groups = {s: set(split.loc[split["split"] == s, "group"]) for s in ("train", "val", "test")}
        assert groups["test"] == set(table.loc[table["fold"] == fold, "group"])
        assert not groups["val"] & groups["test"] and not groups["train"] & groups["test"] and not groups["train"] & groups["val"]
        assert set(split.loc[split["split"] == "val", "label"]) == {"benign", "malignant"}
        tested |= groups["test"]
    assert tested == set(table["group"])


def test_too_few_patients_for_the_folds_is_a_clear_error():
    from histofuse.data.split import assign_folds
    from histofuse.errors import DataError

    with pytest.raises(DataError, match="5-fold cross-validation by patient needs at least 5 patients .* 'benign': 4"):
        assign_folds(patients_table(benign=4, malignant=9), 5, seed=0)


def test_two_folds_need_four_patients_per_class_for_a_validation_patient_in_each():
    from histofuse.data.split import assign_folds
    from histofuse.errors import DataError

    with pytest.raises(DataError, match="2-fold cross-validation by patient needs at least 4 patients .* 'benign': 3"):
        assign_folds(patients_table(benign=3, malignant=9), 2, seed=0)


@pytest.mark.parametrize(
    ("split", "message"),
    [
        ({"folds": 3, "fold": 4}, "fold = 4 but there are only 3 folds"),
        ({"fold": 2}, "fold needs folds"),
        ({"folds": 1}, "greater than or equal to 2"),
    ],
)
def test_recipe_refuses_split_keys_that_do_not_fit_together(tiny_recipe_dict, split, message):
    from histofuse.errors import RecipeError
    from histofuse.recipe import parse_recipe

    tiny_recipe_dict["data"]["split"] = {"val": 0.25, **split}
    with pytest.raises(RecipeError, match=message):
        parse_recipe(tiny_recipe_dict)


def test_folds_replace_a_recipes_test_fraction(tiny_recipe_dict):
    from histofuse.recipe import parse_recipe

    tiny_recipe_dict["data"]["split"] = {"val": 0.2, "test": 0.2, "folds": 5}  # what --folds 5 makes of the quick start
    split = parse_recipe(tiny_recipe_dict).data.split
    assert (split.test, split._ignored_test) == (None, 0.2)


def test_a_fold_runs_saved_recipe_reloads_as_that_fold(tiny_recipe_dict, tmp_path):
    from histofuse.crossval.runner import fold_recipe
    from histofuse.recipe import load_recipe, parse_recipe, recipe_to_toml

    tiny_recipe_dict["data"]["split"] = {"val": 0.25, "folds": 4}
    recipe = parse_recipe(tiny_recipe_dict)
    assert recipe.data.split.test is None
    saved = tmp_path / "recipe.toml"
    saved.write_text(recipe_to_toml(fold_recipe(recipe, 2)))
    split = load_recipe(saved).data.split
    assert (split.folds, split.fold, split.test) == (4, 2, None)


# ---------------------------------------------------------------- end to end


def cv_recipe(root: Path, site_b: Path) -> dict:
    raw = copy.deepcopy(TINY_RECIPE)
    raw["data"]["root"] = str(root)
    raw["data"]["options"]["patients_per_class"] = 6
    raw["data"]["split"] = {"val": 0.25, "folds": FOLDS}
    raw["phases"][1]["epochs"] = 2
    raw["evaluation"] = {"bootstrap": 50}
    options = {"site": "b", "seed": 1, "patients_per_class": 3, "images_per_magnification": 1, "width": 96, "height": 64}
    raw["evaluate"] = [{"name": "site_b", "dataset": "synthetic", "root": str(site_b), "options": options, "tta": "d4"}]
    return raw


def histofuse_env(**extra) -> dict:
    # One thread and the probe's optimizer (the built-in AdamW that can SIGKILL itself) for every run compared here.
    env = {**os.environ, "HISTOFUSE_PLUGINS": "histofuse_test_probe", "PYTHONPATH": str(PROBE), "OMP_NUM_THREADS": "1"}
    return {**env, **extra}


def histofuse(*args, cwd: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "histofuse", *args], env=histofuse_env(**env), capture_output=True,
                          text=True, timeout=600, cwd=cwd)


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory):
    """(recipe file, parent directory) of one finished 3-fold cross-validation."""
    base = tmp_path_factory.mktemp("crossval")
    recipe = write_toml(base / "cv.toml", cv_recipe(base / "data", base / "site_b"))
    done = histofuse("run", str(recipe), "--output-dir", str(base / "reference"), cwd=base)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [parent] = [p for p in (base / "reference").iterdir() if p.is_dir()]
    return recipe, parent


@end_to_end
def test_every_fold_is_a_complete_run_that_tested_exactly_its_own_patients(cv_run):
    _, parent = cv_run
    folds = pd.read_csv(parent / "folds.csv")
    for k in range(1, FOLDS + 1):
        run = parent / f"fold-{k}"
        for name in ("recipe.toml", "split.csv", "history.csv", "model.safetensors", "metrics.json", "MODEL_CARD.md", "finished.json",
                     "predictions.csv", "predictions_val_none.csv", "predictions_val_d4.csv"):
            assert (run / name).is_file(), f"{run.name}/{name}"
        split = pd.read_csv(run / "split.csv")
        test = set(split.loc[split["split"] == "test", "group"])
        assert test == set(folds.loc[folds["fold"] == k, "group"])
        assert not test & set(split.loc[split["split"] == "val", "group"])
        val = pd.read_csv(run / "predictions_val_none.csv")
        assert set(val["group"]) == set(split.loc[split["split"] == "val", "group"])


@end_to_end
def test_out_of_fold_predictions_cover_every_image_once_and_pool_to_cv_metrics(cv_run):
    from histofuse.metrics import classification_metrics

    _, parent = cv_run
    oof = pd.read_csv(parent / "oof_predictions.csv")
    folds = pd.read_csv(parent / "folds.csv")
    assert sorted(oof["path"]) == sorted(folds["path"])  # every image predicted, none twice
    assert dict(zip(oof["path"], oof["fold"])) == dict(zip(folds["path"], folds["fold"]))  # by the fold that held it out
    for k in range(1, FOLDS + 1):
        own = pd.read_csv(parent / f"fold-{k}" / "predictions.csv")
        mine = oof[oof["fold"] == k].drop(columns="fold").reset_index(drop=True)
        pd.testing.assert_frame_equal(mine, own)

    cv = json.loads((parent / "cv_metrics.json").read_text())
    fold_aucs = [json.loads((parent / f"fold-{k}" / "metrics.json").read_text())["test"]["auc"] for k in range(1, FOLDS + 1)]
    assert cv["test"]["summary"]["auc"]["values"] == pytest.approx(fold_aucs)
    assert cv["test"]["summary"]["auc"]["mean"] == pytest.approx(np.mean(fold_aucs))
    assert cv["test"]["summary"]["auc"]["sd"] == pytest.approx(np.std(fold_aucs, ddof=1))
    labels = (oof["label"] == "malignant").astype(int).to_numpy()
    pooled = classification_metrics(labels, oof[["prob_benign", "prob_malignant"]].to_numpy(), ["benign", "malignant"])
    assert cv["test"]["pooled"]["auc"] == pytest.approx(pooled["auc"])
    colour = classification_metrics(labels, oof[["colour_prob_benign", "colour_prob_malignant"]].to_numpy(), ["benign", "malignant"])
    assert cv["test"]["pooled"]["colour_only_auc"] == pytest.approx(colour["auc"])
    low, high = cv["test"]["pooled"]["auc_ci95"]
    assert low <= pooled["auc"] <= high
    # Each row was decided at its own fold's threshold: the pooled accuracy is that of the folds' own decisions.
    assert cv["test"]["pooled"]["accuracy"] == pytest.approx((oof["predicted"] == oof["label"]).mean())


@end_to_end
def test_the_ensemble_is_the_mean_of_the_folds_at_a_threshold_from_their_validation_predictions(cv_run):
    from histofuse.calibration import youden_threshold

    _, parent = cv_run
    ensemble = pd.read_csv(parent / "predictions_site_b.csv").set_index("path")
    folds = [pd.read_csv(parent / f"fold-{k}" / "predictions_site_b.csv").set_index("path") for k in range(1, FOLDS + 1)]
    for column in ("prob_malignant", "colour_prob_malignant"):
        mean = sum(f[column] for f in folds) / FOLDS
        np.testing.assert_allclose(ensemble[column].to_numpy(), mean.loc[ensemble.index].to_numpy(), atol=1e-12)
    val = pd.concat(pd.read_csv(parent / f"fold-{k}" / "predictions_val_d4.csv") for k in range(1, FOLDS + 1))
    expected = youden_threshold((val["label"] == "malignant").astype(int).to_numpy(), val["prob_malignant"].to_numpy())
    metrics = json.loads((parent / "metrics.json").read_text())["site_b"]
    assert metrics["threshold"] == pytest.approx(expected)
    assert metrics["ensemble_of"] == FOLDS
    decided = np.where(ensemble["prob_malignant"] >= expected, "malignant", "benign")
    assert (ensemble["predicted"] == decided).all()


@end_to_end
def test_predict_on_the_parent_averages_the_folds_and_fold_n_picks_one(cv_run):
    from histofuse.errors import HistofuseError
    from histofuse.inference import open_run, predict_paths

    _, parent = cv_run
    images = parent.parent.parent / "site_b"

    def predicted(fold=None):
        run = open_run(parent, fold)
        out = predict_paths(run, [images], tta="d4", normalize=False, batch_size=16, num_workers=0)
        return out.set_index("path")["prob_malignant"]

    ensemble = predicted()
    mean = sum(predicted(k) for k in range(1, FOLDS + 1)) / FOLDS
    np.testing.assert_allclose(ensemble, mean, atol=1e-6)
    settled = []  # what a progress display hears: images per batch, of how many
    predict_paths(open_run(parent, 1), [images], tta="none", normalize=False, batch_size=16, num_workers=0,
                  progress=lambda done, total: settled.append((done, total)))
    assert sum(done for done, _ in settled) == len(ensemble) and {total for _, total in settled} == {len(ensemble)}
    # The same images as the cross-validation's own ensemble evaluation of site_b scored them.
    evaluated = pd.read_csv(parent / "predictions_site_b.csv").set_index("path")["prob_malignant"]
    np.testing.assert_allclose(ensemble.loc[evaluated.index], evaluated, atol=1e-5)
    with pytest.raises(HistofuseError, match="has no fold-7/"):
        open_run(parent, 7)


@end_to_end
def test_the_report_and_model_card_describe_the_protocol_and_the_folds(cv_run):
    _, parent = cv_run
    page = (parent / "report.html").read_text()
    assert "Cross-validation (3 folds)" in page and "StratifiedGroupKFold" in page
    assert (parent / "report" / "cv_roc.png").is_file() and (parent / "report" / "cv_spread.png").is_file()
    card = (parent / "MODEL_CARD.md").read_text()
    cv = json.loads((parent / "cv_metrics.json").read_text())
    assert "every patient is in exactly one test fold" in card
    assert f"{cv['test']['summary']['auc']['mean']:.3f} ± {cv['test']['summary']['auc']['sd']:.3f}" in card
    for row in cv["test"]["per_fold"]:
        assert f"| {row['fold']} | {row['n']} | {row['patients']} |" in card


@end_to_end
def test_a_cross_validation_killed_in_fold_2_resumes_to_identical_cv_metrics(cv_run, tmp_path):
    recipe, reference = cv_run
    # The probe counts phases across the process: phase index 4 is fold 2's second phase.
    killed = histofuse("run", str(recipe), "--output-dir", str(tmp_path / "runs"), cwd=recipe.parent,
                       HISTOFUSE_PROBE_KILL="4:3")
    assert killed.returncode == -9, killed.stdout[-3000:] + killed.stderr[-3000:]
    [parent] = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    from histofuse.crossval.runner import fold_status

    assert [fold_status(parent / f"fold-{k}") for k in (1, 2, 3)] == ["finished", "resumable", "new"]
    resumed = histofuse("run", "--resume", str(parent), cwd=recipe.parent)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "fold 1/3 (finished)" in resumed.stdout and "fold 2/3 (resumable)" in resumed.stdout
    assert json.loads((parent / "cv_metrics.json").read_text()) == json.loads((reference / "cv_metrics.json").read_text())
    pd.testing.assert_frame_equal(pd.read_csv(parent / "oof_predictions.csv"), pd.read_csv(reference / "oof_predictions.csv"))
    again = histofuse("run", "--resume", str(parent), cwd=recipe.parent)
    assert again.returncode != 0 and "nothing to resume" in again.stderr


@end_to_end
def test_export_and_the_web_app_use_the_fold_ensemble(cv_run, tmp_path):
    import torch

    from histofuse.data.decode import decode_image
    from histofuse.export import export
    from histofuse.inference import open_run
    from histofuse.serve import classify

    _, parent = cv_run
    ensemble = open_run(parent)
    image = sorted((parent.parent.parent / "site_b").rglob("*.png"))[0]
    rgb = decode_image(image)
    batch = ensemble.preprocess(rgb, False)[None]
    expected = ensemble.probabilities(batch, "none")
    members = np.mean([m.probabilities(batch, "none") for m in ensemble.members], axis=0)
    np.testing.assert_allclose(expected, members, atol=1e-6)

    result = export(ensemble, "torchscript", tmp_path / "model.pt")
    assert result["max_abs_diff"] <= 1e-4 and "test-split images" in result["checked_on"]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
        exported = torch.softmax(torch.jit.load(str(tmp_path / "model.pt"))(batch), dim=1).numpy()
    np.testing.assert_allclose(exported, expected, atol=1e-5)  # the exported logits are log mean probabilities

    probs, decision, heatmaps, _ = classify(ensemble, image.read_bytes(), "none", "none", 10**8)
    assert [probs[c] for c in ensemble.classes] == pytest.approx(expected[0].tolist(), abs=1e-6)
    threshold = ensemble.calibration("none")["threshold"]
    assert decision.startswith("malignant" if expected[0, 1] >= threshold else "benign") and f"{threshold:.3f}" in decision
    assert [caption for _, caption in heatmaps] == ["cnn: grad-cam", "vit: attention rollout"]
    with pytest.raises(ValueError, match="Unknown stain normalization"):
        classify(ensemble, image.read_bytes(), "reinhard", "none", 10**8)


@end_to_end
def test_resuming_refuses_data_whose_folds_no_longer_match(cv_run, tmp_path):
    import shutil

    from histofuse.crossval.runner import prepare_parent
    from histofuse.errors import DataError
    from histofuse.recipe import load_recipe
    from histofuse.registry import default_registry

    _, parent = cv_run
    copy = tmp_path / "parent"
    copy.mkdir()
    shutil.copy(parent / "recipe.toml", copy)
    folds = pd.read_csv(parent / "folds.csv")
    folds.to_csv(copy / "folds.csv", index=False)
    recipe, registry = load_recipe(parent / "recipe.toml"), default_registry()
    assert prepare_parent(recipe, registry, tmp_path, copy) == copy
    folds.loc[0, "fold"] = folds.loc[0, "fold"] % FOLDS + 1  # one image in another fold, as if the data had changed
    folds.to_csv(copy / "folds.csv", index=False)
    with pytest.raises(DataError, match="no longer matches .*folds.csv"):
        prepare_parent(recipe, registry, tmp_path, copy)


@end_to_end
def test_data_check_of_a_cross_validation_recipe_labels_images_by_fold(cv_run, tmp_path):
    from typer.testing import CliRunner

    from histofuse.cli import app

    recipe, _ = cv_run
    out = tmp_path / "findings.csv"
    result = CliRunner().invoke(app, ["data", "check", str(recipe), "--out", str(out)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "72 images checked" in result.output  # 48 of the folds and 24 of site_b, none skipped
    from histofuse.cli.data import images_to_check

    frame, _, _ = images_to_check(str(recipe), None, [], [])
    folds = pd.read_csv(recipe.parent / "reference" / next((recipe.parent / "reference").iterdir()).name / "folds.csv")
    in_folds = frame[frame["split"] != "evaluate:site_b"]
    assert dict(zip(in_folds["path"], in_folds["split"])) == {p: f"fold-{k}" for p, k in zip(folds["path"], folds["fold"])}
    assert len(frame) - len(in_folds) == 24


@end_to_end
def test_evaluate_on_the_parent_scores_every_fold_then_their_ensemble(cv_run, tmp_path):
    import shutil

    from typer.testing import CliRunner

    from histofuse.cli import app

    _, reference = cv_run
    parent = tmp_path / reference.name
    shutil.copytree(reference, parent)  # the shared run stays as it was for the other tests
    site_b = reference.parent.parent / "site_b"
    options = ["site=\"b\"", "seed=1", "patients_per_class=3", "images_per_magnification=1", "width=96", "height=64"]
    args = ["evaluate", str(parent), "--dataset", "synthetic", "--root", str(site_b), "--name", "site_b_paper7",
            "--tta", "paper7", *[a for o in options for a in ("--option", o)]]
    result = CliRunner().invoke(app, args, terminal_width=200)
    assert result.exit_code == 0, result.output
    for k in range(1, FOLDS + 1):
        fold = json.loads((parent / f"fold-{k}" / "metrics.json").read_text())["site_b_paper7"]
        assert fold["tta"] == "paper7" and fold["n"] == 24
    cv = json.loads((parent / "cv_metrics.json").read_text())
    assert len(cv["site_b_paper7"]["per_fold"]) == FOLDS
    ensemble = json.loads((parent / "metrics.json").read_text())["site_b_paper7"]
    assert ensemble["ensemble_of"] == FOLDS and ensemble["tta"] == "paper7"
    assert "paper7" in json.loads((parent / "ensemble.json").read_text())["calibration"]
    assert cv["test"] == json.loads((reference / "cv_metrics.json").read_text())["test"]  # the folds' own tests untouched


@end_to_end
def test_repeated_cross_validation_draws_new_folds_and_summarizes_the_pooled_results(cv_run):
    from histofuse.recipe import load_recipe
    from histofuse.repeats import repeated_recipes, summarize

    _, parent = cv_run
    recipe = load_recipe(parent / "recipe.toml")
    repeats = repeated_recipes(recipe, 3, vary_split=True)
    assert [(r.seed, r.data.split.seed, r.data.split.folds) for r in repeats] == [(7, None, 3), (8, None, 3), (9, None, 3)]
    table, summary = summarize([parent])
    pooled = json.loads((parent / "metrics.json").read_text())
    assert set(table["set"]) == {"test", "site_b"}
    assert summary["test"]["auc"]["values"] == [pooled["test"]["auc"]]
    assert summary["site_b"]["colour_only_auc"]["values"] == [pooled["site_b"]["color_baseline"]["auc"]]
