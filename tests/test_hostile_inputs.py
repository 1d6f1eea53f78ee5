"""Hostile inputs: a corpus of bad and unusual files, `histofuse data check`, training through all of them,
and numerical faults (NaN loss) that stop a phase without losing the run."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from bad_corpus import seed_breakhis_tree, write_bad, write_unusual
from conftest import write_toml
from test_run import only_run_dir, run_cli


def test_every_corpus_file_is_refused_with_its_reason_or_decoded_to_known_pixels(tmp_path):
    from histofuse.data.decode import decode_image
    from histofuse.errors import ImageDecodeError

    for path, reason in write_bad(tmp_path, "bad").items():
        with pytest.raises(ImageDecodeError, match=reason.replace("(", r"\(")) as caught:
            decode_image(path)
        assert path in str(caught.value)
    for path, expected in write_unusual(tmp_path, "odd").items():
        np.testing.assert_array_equal(decode_image(path), expected, err_msg=path)


@pytest.fixture
def seeded_tree(tmp_path, synthetic_root):
    root = tmp_path / "données_é 测试"  # a unicode, space-containing root
    shutil.copytree(synthetic_root, root, symlinks=True)
    bad, unusual = seed_breakhis_tree(root)
    return root, bad, unusual


def test_data_check_names_every_problem_by_kind(seeded_tree, tmp_path):
    root, bad, unusual = seeded_tree
    out = tmp_path / "findings.csv"
    result = run_cli(["data", "check", "breakhis", str(root), "--out", str(out)])
    findings = pd.read_csv(out)
    kinds = dict(zip(findings["path"], findings["kind"]))
    assert kinds[next(p for p in bad if p.endswith("-901.png"))] == "empty"
    assert kinds[next(p for p in bad if p.endswith("-902.png"))] == "truncated or corrupt"
    assert kinds[next(p for p in bad if p.endswith("-904.png"))] == "not an image"
    assert kinds[next(p for p in bad if p.endswith("-905.png"))] == "too large"
    assert sum(kinds.get(p) == "unusual depth or channels" for p in unusual) == len(unusual)
    assert result.exit_code == 1  # 5 unreadable of 53 is above the default 5 % limit
    assert "NOT safe to train" in result.output


def test_data_check_finds_the_same_image_in_two_splits(tmp_path, tiny_recipe_dict, synthetic_root):
    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root)
    tiny_recipe_dict["data"]["root"] = str(root)
    recipe = write_toml(tmp_path / "tiny.toml", tiny_recipe_dict)
    assert run_cli(["data", "check", str(recipe)]).exit_code == 0
    from histofuse.data.split import split_by_group
    from histofuse.recipe import parse_recipe
    from histofuse.registry import default_registry
    from histofuse.data.scanning import load_table

    parsed = parse_recipe(tiny_recipe_dict)
    table, _ = load_table(parsed, default_registry())
    split = split_by_group(table, 0.25, 0.25, parsed.seed)
    train = split[split["split"] == "train"]["path"].iloc[0]
    test_image = split[split["split"] == "test"]["path"].iloc[0]
    shutil.copy(train, test_image)  # the same slide scanned into a test patient's folder
    result = run_cli(["data", "check", str(recipe)])
    assert result.exit_code == 1
    assert "duplicate across splits" in result.output and "leakage" in result.output


def test_training_on_a_tree_seeded_with_every_bad_file_finishes_and_names_each(seeded_tree, tmp_path, tiny_recipe_dict):
    root, bad, unusual = seeded_tree
    tiny_recipe_dict["data"].update(dataset="breakhis", root=str(root), options={}, max_failed_fraction=0.2)
    tiny_recipe_dict["evaluation"] = {"bootstrap": 0}
    recipe = write_toml(tmp_path / "tiny.toml", tiny_recipe_dict)
    result = run_cli(["run", str(recipe), "-o", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    run_dir = only_run_dir(tmp_path / "runs")
    failed = json.loads((run_dir / "metrics.json").read_text())["test"]["failed_images"]
    assert set(failed) == set(bad)  # each bad file, once, whatever split it fell in; nothing else
    for path, reason in bad.items():
        assert reason in failed[path]
    page = (run_dir / "report.html").read_text()
    for path in bad:
        assert os.path.basename(path) in page
    split = pd.read_csv(run_dir / "split.csv")
    assert set(unusual) <= set(split["path"])  # converted and used, not skipped
    assert not any("-999.png" in p or "/loop/" in p for p in split["path"])  # no folder, no looped copies
    assert not any("copie é 测试" in p for p in split["path"])  # not a BreaKHis name: reported by the scan, not used


def probe_env(**extra) -> dict:
    from test_distributed import histofuse_env

    return histofuse_env(**extra)


@pytest.mark.parametrize(
    ("broken_after", "where"),
    [("1:1", "step 2"), ("1:2", "validation")],  # mid-epoch; or the epoch's last step, seen by validation
)
def test_a_nan_loss_stops_the_phase_names_the_step_and_keeps_the_best_weights(tmp_path, tiny_recipe_dict, broken_after, where):
    tiny_recipe_dict["phases"][1]["epochs"] = 3
    recipe = write_toml(tmp_path / "tiny.toml", tiny_recipe_dict)
    result = subprocess.run(
        [sys.executable, "-m", "histofuse", "run", str(recipe), "-o", str(tmp_path / "runs")],
        env=probe_env(HISTOFUSE_PROBE_NAN=broken_after), capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    expected = f"the training loss became nan at phase 'partial' (phases[1]), its epoch 1, {where}: phase stopped"
    assert expected in result.stdout
    run_dir = only_run_dir(tmp_path / "runs")
    history = pd.read_csv(run_dir / "history.csv")
    assert history["phase"].tolist() == ["head", "full"]  # the broken phase left no epoch behind
    assert np.isfinite(history[["train_loss", "val_loss"]].to_numpy()).all()
    metrics = json.loads((run_dir / "metrics.json").read_text())["test"]
    assert any(expected in fault for fault in metrics["training_faults"])
    from safetensors.torch import load_file

    assert all(np.isfinite(t.numpy()).all() for t in load_file(str(run_dir / "model.safetensors")).values())


def test_a_nan_loss_before_any_usable_epoch_is_a_clear_error(tmp_path, tiny_recipe_dict):
    recipe = write_toml(tmp_path / "tiny.toml", tiny_recipe_dict)
    result = subprocess.run(
        [sys.executable, "-m", "histofuse", "run", str(recipe), "-o", str(tmp_path / "runs")],
        env=probe_env(HISTOFUSE_PROBE_NAN="0:1"), capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "the training loss became nan at phase 'head' (phases[0]), its epoch 1, step 2, before any epoch" in output
    assert "Traceback" not in output
