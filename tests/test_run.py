"""End-to-end runs through the CLI on tiny models and tiny generated data."""

import json
import shutil
import subprocess
import sys

import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import write_toml
from histofuse.cli import app
from test_plugins import make_fake_distribution


def run_cli(args):
    result = CliRunner().invoke(app, args, terminal_width=200)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def only_run_dir(parent):
    [run_dir] = [p for p in parent.iterdir() if p.is_dir()]
    return run_dir


def test_a_run_writes_everything_a_user_needs(tmp_path, tiny_recipe_dict):
    recipe = write_toml(tmp_path / "tiny.toml", tiny_recipe_dict)
    result = run_cli(["run", str(recipe), "--output-dir", str(tmp_path / "runs"), "--set", "phases[2].epochs=2"])
    assert result.exit_code == 0, result.output
    run_dir = only_run_dir(tmp_path / "runs")
    assert run_dir.name.startswith("tiny-")
    for name in ("recipe.toml", "split.csv", "history.csv", "model.safetensors", "model.json", "metrics.json", "predictions.csv"):
        assert (run_dir / name).is_file(), name

    history = pd.read_csv(run_dir / "history.csv")
    assert history["phase"].tolist() == ["head", "partial", "full", "full"]
    assert history["lr_cnn"].tolist()[:2] == [0.0, 1e-4]
    assert history["lr_vit"].tolist()[:2] == [0.0, 1e-4]
    best_head = history.loc[history["phase"] == "head", "epoch"].max()  # one head epoch: it is the best so far
    assert history["start_weights"].tolist()[:2] == ["initial", f"best of epoch {best_head}"]
    assert "epochs = 2" in (run_dir / "recipe.toml").read_text()  # the override is part of the resolved recipe

    split = pd.read_csv(run_dir / "split.csv", dtype={"group": str})
    assert split.groupby("group")["split"].nunique().max() == 1
    predictions = pd.read_csv(run_dir / "predictions.csv", dtype={"group": str})
    test_groups = set(split.loc[split["split"] == "test", "group"])
    assert set(predictions["group"]) == test_groups
    assert len(predictions) == (split["split"] == "test").sum()
    assert predictions[["prob_benign", "prob_malignant"]].sum(axis=1).round(5).eq(1).all()

    metrics = json.loads((run_dir / "metrics.json").read_text())["test"]
    for key in ("accuracy", "auc", "precision", "recall", "specificity", "f1", "confusion_matrix", "auc_ci95", "ece",
                "threshold", "per_patient", "per_magnification", "color_baseline"):
        assert key in metrics, key
    assert sorted(metrics["per_magnification"]) == ["100", "200", "40", "400"]
    assert json.loads((run_dir / "evaluation.json").read_text())["calibration"]["none"]["threshold"] == metrics["threshold"]
    assert sum(map(sum, metrics["confusion_matrix"])) == len(predictions)
    meta = json.loads((run_dir / "model.json").read_text())
    assert meta["classes"] == ["benign", "malignant"] and meta["epoch"] == metrics["best_epoch"]
    assert "evaluation (threshold and temperature from the validation split)" in result.output


def test_one_corrupt_image_is_skipped_and_reported_not_fatal(tmp_path, tiny_recipe_dict, synthetic_root):
    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root)
    victim = sorted(root.rglob("*.png"))[0]
    victim.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    tiny_recipe_dict["data"]["root"] = str(root)
    tiny_recipe_dict["data"]["max_failed_fraction"] = 0.1
    recipe = write_toml(tmp_path / "tiny.toml", tiny_recipe_dict)
    result = run_cli(["run", str(recipe), "-o", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    assert "skipped unreadable image" in result.output and victim.name in result.output
    metrics = json.loads((only_run_dir(tmp_path / "runs") / "metrics.json").read_text())["test"]
    assert list(metrics["failed_images"]) == [str(victim.resolve())]
    assert "truncated" in metrics["failed_images"][str(victim.resolve())]


def test_too_many_unreadable_images_stop_the_run_with_a_clear_error(tmp_path, tiny_recipe_dict, synthetic_root):
    from histofuse.errors import DataError

    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root)
    for victim in sorted(root.rglob("*.png"))[::3]:
        victim.write_bytes(b"")
    tiny_recipe_dict["data"]["root"] = str(root)
    recipe = write_toml(tmp_path / "tiny.toml", tiny_recipe_dict)
    with pytest.raises(DataError, match="could not be decoded, more than data.max_failed_fraction = 0.05"):
        run_cli(["run", str(recipe), "-o", str(tmp_path / "runs")])


THIRD_PARTY = '''
    import histofuse
    from pathlib import Path

    CALLS = []

    def scan(root, suffix=".png"):
        import pandas as pd
        rows = []
        for path in sorted(Path(root).rglob("*" + suffix)):
            label = "tumour" if "/malignant/" in path.as_posix() else "normal"
            rows.append({"path": str(path), "label": label, "group": path.parent.parent.name.split("-")[-1]})
        return pd.DataFrame(rows)

    @histofuse.hookimpl
    def register_datasets():
        return [histofuse.DatasetSpec(name="toy_tiles", scan=scan, description="a third-party dataset")]

    @histofuse.hookimpl
    def on_fit_start(run_dir, recipe):
        CALLS.append("start")

    @histofuse.hookimpl
    def on_epoch_end(run_dir, record):
        CALLS.append("epoch")

    @histofuse.hookimpl
    def on_fit_end(run_dir, metrics):
        CALLS.append("end")
        (Path(run_dir) / "third_party.json").write_text(__import__("json").dumps(CALLS))
'''


def test_a_third_party_plugin_installed_through_entry_points_provides_a_dataset(tmp_path, monkeypatch, tiny_recipe_dict):
    make_fake_distribution(tmp_path / "site", "histofuse_toy_plugin", THIRD_PARTY, entry_name="toy")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    listing = run_cli(["plugins"])
    assert "toy_tiles" in listing.output and "histofuse-toy-plugin 0.1" in listing.output

    tiny_recipe_dict["data"]["dataset"] = "toy_tiles"
    tiny_recipe_dict["data"]["options"] = {}
    tiny_recipe_dict["phases"] = tiny_recipe_dict["phases"][:1]
    recipe = write_toml(tmp_path / "toy.toml", tiny_recipe_dict)
    result = run_cli(["run", str(recipe), "-o", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    run_dir = only_run_dir(tmp_path / "runs")
    assert json.loads((run_dir / "metrics.json").read_text())["test"]["classes"] == ["normal", "tumour"]
    assert json.loads((run_dir / "third_party.json").read_text()) == ["start", "epoch", "end"]


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "histofuse", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_recipe_errors_exit_2_with_the_key_path_and_no_traceback(tmp_path, tiny_recipe_dict):
    tiny_recipe_dict["phases"][1]["lr"]["backbone"] = "fast"
    tiny_recipe_dict["training"]["label_smothing"] = 0.1
    recipe = write_toml(tmp_path / "bad.toml", tiny_recipe_dict)
    for command in (["run", str(recipe)], ["recipe", "check", str(recipe)]):
        done = cli(*command)
        assert done.returncode == 2
        assert 'phases[1].lr.backbone: expected a number, got "fast"' in done.stderr
        assert "training.label_smothing: unknown key; did you mean 'label_smoothing'?" in done.stderr
        assert "Traceback" not in done.stderr + done.stdout


def test_missing_dataset_root_says_where_to_get_the_data(tmp_path, tiny_recipe_dict):
    tiny_recipe_dict["data"]["dataset"] = "breakhis"
    tiny_recipe_dict["data"]["options"] = {}
    tiny_recipe_dict["data"]["root"] = str(tmp_path / "BreaKHis_v1")
    recipe = write_toml(tmp_path / "bk.toml", tiny_recipe_dict)
    done = cli("run", str(recipe), "-o", str(tmp_path / "runs"))
    assert done.returncode == 2
    text = " ".join(done.stderr.split())
    assert "BreaKHis v1" in text and "--set data.root=" in text
    assert "Traceback" not in done.stderr


def test_recipe_check_resolves_the_papers_recipe(tmp_path):
    from conftest import REPO

    done = cli("recipe", "check", str(REPO / "recipes" / "breakhis_phased.toml"), "--show-toml")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "tf_efficientnetv2_s" in out and "vit_base_patch16_224" in out
    assert "109.7M parameters" in out
    assert "is valid" in out and 'label_smoothing = 0.2' in out


def test_the_same_recipe_and_seed_give_the_same_result(tmp_path, tiny_recipe_dict):
    """Sampling, augmentation (in a worker process too) and initialisation all follow the recipe's seed."""
    tiny_recipe_dict["data"]["num_workers"] = 1
    recipe = write_toml(tmp_path / "tiny.toml", tiny_recipe_dict)
    outputs = []
    for name in ("a", "b"):
        assert run_cli(["run", str(recipe), "-o", str(tmp_path / name)]).exit_code == 0
        run_dir = only_run_dir(tmp_path / name)
        outputs.append(((run_dir / "predictions.csv").read_text(), pd.read_csv(run_dir / "history.csv")["train_loss"].tolist()))
    assert outputs[0] == outputs[1]


def test_output_dir_that_is_a_file_is_a_clear_error(tmp_path, tiny_recipe_dict):
    recipe = write_toml(tmp_path / "tiny.toml", tiny_recipe_dict)
    (tmp_path / "afile").write_text("x")
    done = cli("run", str(recipe), "-o", str(tmp_path / "afile"))
    assert done.returncode == 1
    assert "cannot create a run directory under" in done.stderr and "--output-dir" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_bad_unfreeze_fails_before_any_training(tmp_path, tiny_recipe_dict):
    recipe = write_toml(tmp_path / "tiny.toml", tiny_recipe_dict)
    done = cli("run", str(recipe), "-o", str(tmp_path / "runs"), "--set", "phases[2].unfreeze={cnn=99}")
    assert done.returncode == 2
    assert "phases[2].unfreeze.cnn: asks for the last 99" in done.stderr
    assert not (tmp_path / "runs").exists()


def test_a_missing_external_set_fails_before_training(tmp_path, tiny_recipe_dict):
    tiny_recipe_dict["evaluate"] = [{"name": "bach", "dataset": "bach", "root": str(tmp_path / "no_bach")}]
    recipe = write_toml(tmp_path / "tiny.toml", tiny_recipe_dict)
    done = cli("run", str(recipe), "-o", str(tmp_path / "runs"))
    assert done.returncode == 2
    text = " ".join(done.stderr.split())
    assert "evaluate[0].root:" in text and "does not exist" in text and "[[evaluate]]" in text
    assert not (tmp_path / "runs").exists()


def test_a_subtype_run_reports_per_class_metrics(tmp_path, tiny_recipe_dict):
    tiny_recipe_dict["data"]["root"] = str(tmp_path / "subtypes")
    tiny_recipe_dict["data"]["options"] = {
        "patients_per_class": 12, "images_per_magnification": 1, "magnifications": [100, 200],
        "width": 96, "height": 64, "subtype_patterns": True, "label": "subtype",
    }
    tiny_recipe_dict["data"]["split"] = {"val": 0.34, "test": 0.34}
    tiny_recipe_dict["phases"] = tiny_recipe_dict["phases"][:1]
    recipe = write_toml(tmp_path / "subtype.toml", tiny_recipe_dict)
    result = run_cli(["run", str(recipe), "-o", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((only_run_dir(tmp_path / "runs") / "metrics.json").read_text())["test"]
    assert len(metrics["classes"]) == 8 and metrics["auc"] is not None
    assert set(metrics["per_class"]) == set(metrics["classes"])
    assert all(entry["support"] == 2 for entry in metrics["per_class"].values())  # one patient x 2 images each
