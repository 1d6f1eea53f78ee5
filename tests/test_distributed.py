"""The quick-start recipe under two CPU processes (gloo), and crash-resume of a run killed with SIGKILL.

Both tests run the real CLI in subprocesses and load tests/probe/histofuse_test_probe.py
through HISTOFUSE_PLUGINS, the way a plugin in development is used without installing it.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
PROBE = Path(__file__).resolve().parent / "probe"

# The quick-start recipe, shrunk to seconds: fewer patients, smaller images, fewer epochs, all three phases.
SMALL = [
    "--set", "evaluate=[]",
    "--set", "data.options.patients_per_class=6",
    "--set", "data.options.images_per_magnification=1",
    "--set", "data.image_size=64",
    "--set", "data.resize=72",
    "--set", "data.batch_size=8",
    "--set", "data.eval_batch_size=3",  # several uneven evaluation batches: Accelerate pads the last one
    "--set", "data.num_workers=0",
    "--set", "evaluation.bootstrap=0",
]


def histofuse_env(**extra) -> dict:
    env = {**os.environ, "HISTOFUSE_PLUGINS": "histofuse_test_probe", "PYTHONPATH": str(PROBE), "OMP_NUM_THREADS": "1"}
    env.update(extra)
    return env


def run_dirs(parent: Path) -> list[Path]:
    return sorted(p for p in parent.iterdir() if p.is_dir())


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("distributed") / "synthetic"


def test_two_processes_stay_identical_through_every_phase(tmp_path, data_root):
    pytest.importorskip("accelerate")
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "histofuse", "run",
        str(REPO / "recipes" / "quickstart.toml"), "--set", f"data.root={data_root}", *SMALL,
        "--set", "phases[0].epochs=1", "--set", "phases[1].epochs=2", "--set", "phases[2].epochs=1",
        "--output-dir", str(tmp_path / "runs"),
    ]
    env = histofuse_env(ACCELERATE_USE_CPU="1", HISTOFUSE_PROBE_DUMP="1")
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [run_dir] = run_dirs(tmp_path / "runs")
    probe = run_dir / "probe"

    for phase in range(3):
        trainable = json.loads((probe / f"phase{phase}-trainable.json").read_text())
        ranks = [load_file(str(probe / f"phase{phase}-rank{r}.safetensors")) for r in (0, 1)]
        assert trainable, phase
        for name in trainable:
            assert ranks[0][name].equal(ranks[1][name]), f"phase {phase}: {name} differs between processes"
    # Phase 1 trains the head only; its later phases must have moved the backbones (they were synchronised, not idle).
    first, last = (load_file(str(probe / f"phase{p}-rank0.safetensors")) for p in (0, 2))
    assert not first["backbones.cnn.net.conv_stem.weight"].equal(last["backbones.cnn.net.conv_stem.weight"])

    # The last epoch's validation metrics, computed on two shards, equal one process over the whole split.
    history = pd.read_csv(run_dir / "history.csv")
    auc, loss = single_process_validation(run_dir, last)
    assert history["val_auc"].iloc[-1] == pytest.approx(auc, abs=1e-6)
    assert history["val_loss"].iloc[-1] == pytest.approx(loss, rel=1e-5)
    assert result.stdout.count("phase 1/3") == 1  # only the main process prints


def single_process_validation(run_dir: Path, state: dict) -> tuple[float, float]:
    from accelerate import Accelerator

    from histofuse.data.loading import ImageTable, make_loader
    from histofuse.data.eval_loader import make_eval_transform
    from histofuse.metrics import classification_metrics
    from histofuse.model import build_model
    from histofuse.recipe import load_recipe
    from histofuse.registry import default_registry
    from histofuse.training.predict import predict

    recipe = load_recipe(run_dir / "recipe.toml")
    registry = default_registry()
    classes = json.loads((run_dir / "model.json").read_text())["classes"]
    model = build_model(recipe, registry, len(classes), pretrained=False)
    model.load_state_dict(state)
    split = pd.read_csv(run_dir / "split.csv", dtype={"group": str, "label": str})
    val = split[split["split"] == "val"].reset_index(drop=True)
    transform = make_eval_transform(registry.pm.hook, recipe.data)
    loader = make_loader(ImageTable(val, classes, transform), 64, train=False)
    predictions = predict(Accelerator(cpu=True), model, loader, len(classes))
    assert len(predictions.indices) == len(val)
    return classification_metrics(predictions.labels, predictions.probs, classes)["auc"], predictions.loss


# The shrunk quick start as shipped loads: two loader workers that persist across epochs, threads left to torch.
WITH_WORKERS = [*SMALL, "--set", "data.num_workers=2"]


def resume_env(**extra) -> dict:
    return {k: v for k, v in histofuse_env(**extra).items() if k != "OMP_NUM_THREADS"}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_root) -> tuple[list[str], Path]:
    args = [
        sys.executable, "-m", "histofuse", "run", str(REPO / "recipes" / "quickstart.toml"), "--set", f"data.root={data_root}",
        *WITH_WORKERS, "--set", "phases[0].epochs=1", "--set", "phases[1].epochs=4", "--set", "phases[2].epochs=1",
        # Balanced accuracy barely moves on this tiny split, so with patience 0 the plateau scheduler cuts the
        # learning rate inside phase 2 and its state has to survive the resume.
        "--set", "training.monitor=val_balanced_accuracy", "--set", "training.plateau.patience=0",
    ]
    out = tmp_path_factory.mktemp("uninterrupted")
    reference = subprocess.run([*args, "--output-dir", str(out)], env=resume_env(), capture_output=True, text=True,
                               timeout=600, cwd=out)
    assert reference.returncode == 0, reference.stdout[-3000:] + reference.stderr[-3000:]
    return args, run_dirs(out)[0]


def kill(args: list[str], out: Path, step: int) -> Path:
    """The run directory of ``args`` killed with SIGKILL at optimizer step ``step`` of phase 2."""
    killed = subprocess.run([*args, "--output-dir", str(out)], env=resume_env(HISTOFUSE_PROBE_KILL=f"1:{step}"),
                            capture_output=True, text=True, timeout=600, cwd=out)
    assert killed.returncode == -9, killed.stdout[-3000:] + killed.stderr[-3000:]
    [run_dir] = run_dirs(out)
    return run_dir


def resume(run_dir: Path) -> str:
    resumed = subprocess.run([sys.executable, "-m", "histofuse", "run", "--resume", str(run_dir)], env=resume_env(),
                             capture_output=True, text=True, timeout=600, cwd=run_dir.parent)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    return resumed.stdout


def assert_same_run(expected_dir: Path, run_dir: Path) -> None:
    expected, got = (load_file(str(d / "model.safetensors")) for d in (expected_dir, run_dir))
    assert expected.keys() == got.keys()
    for name in expected:
        np.testing.assert_allclose(got[name].numpy(), expected[name].numpy(), atol=1e-6, err_msg=name)
    columns = ["epoch", "phase", "train_loss", "val_loss", "val_auc", "lr_head", "lr_cnn", "lr_vit", "best"]
    history = [pd.read_csv(d / "history.csv")[columns] for d in (expected_dir, run_dir)]
    pd.testing.assert_frame_equal(history[1], history[0], atol=1e-6)
    assert history[0]["lr_head"].nunique() > 2  # the plateau scheduler did act
    test = [json.loads((d / "metrics.json").read_text())["test"] for d in (expected_dir, run_dir)]
    for key in ("auc", "accuracy", "threshold", "best_epoch"):
        assert test[1][key] == pytest.approx(test[0][key], abs=1e-6), key


def steps_per_epoch(run_dir: Path) -> int:
    return int((pd.read_csv(run_dir / "split.csv")["split"] == "train").sum() // 8)


@pytest.mark.xdist_group("resume")
def test_a_run_killed_mid_epoch_resumes_to_the_uninterrupted_result(tmp_path, uninterrupted):
    args, expected_dir = uninterrupted
    # The 2nd optimizer step of phase 2's third epoch: mid-epoch, mid-phase, loader workers busy.
    run_dir = kill(args, tmp_path, 2 * steps_per_epoch(expected_dir) + 2)
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert checkpoints == ["epoch-0002", "epoch-0003"], checkpoints  # keep = 2, and epoch 4 was never finished
    state = json.loads((run_dir / "checkpoints" / "epoch-0003" / "state.json").read_text())
    assert (state["phase_index"], state["phase_epoch"], state["phase_done"]) == (1, 2, False)
    # The latest checkpoint was damaged too (a disk error, a half-copied folder): resuming falls back to the one before.
    weights = run_dir / "checkpoints" / "epoch-0003" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    printed = resume(run_dir)
    assert "checkpoint epoch-0003 is incomplete or corrupt (model.safetensors does not match its recorded SHA-256)" in printed
    assert "resuming phase 'partial' at its epoch 2 (run epoch 3)" in printed
    assert_same_run(expected_dir, run_dir)
    assert not (run_dir / "checkpoints").exists()  # a finished run keeps model.safetensors, not the checkpoints

    again = subprocess.run(
        [sys.executable, "-m", "histofuse", "run", "--resume", str(run_dir)], env=resume_env(),
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert again.returncode != 0 and "nothing to resume" in again.stdout + again.stderr


@pytest.mark.xdist_group("resume")
def test_a_run_killed_at_an_epoch_boundary_resumes_to_the_uninterrupted_result(tmp_path, uninterrupted):
    args, expected_dir = uninterrupted
    # The first step of phase 2's second epoch: its first epoch and checkpoint complete, nothing after them.
    run_dir = kill(args, tmp_path, steps_per_epoch(expected_dir) + 1)
    printed = resume(run_dir)
    assert "resuming phase 'partial' at its epoch 2 (run epoch 3)" in printed
    assert_same_run(expected_dir, run_dir)


def test_two_processes_run_every_fold_of_a_cross_validation_together(tmp_path, data_root):
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "histofuse", "run",
        str(REPO / "recipes" / "quickstart.toml"), "--set", f"data.root={data_root}", *SMALL, "--folds", "2",
        "--set", "phases[0].epochs=1", "--set", "phases[1].epochs=1", "--set", "phases[2].epochs=1",
        "--output-dir", str(tmp_path / "runs"),
    ]
    result = subprocess.run(command, env=histofuse_env(ACCELERATE_USE_CPU="1", HISTOFUSE_PROBE_DUMP="1"),
                            capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [parent] = run_dirs(tmp_path / "runs")
    assert sorted(p.name for p in parent.iterdir() if p.is_dir() and p.name.startswith("fold-")) == ["fold-1", "fold-2"]
    for fold in ("fold-1", "fold-2"):
        probe = parent / fold / "probe"
        # Both processes trained this fold's model, step for step: neither ran another fold meanwhile.
        ranks = [load_file(str(probe / f"phase2-rank{r}.safetensors")) for r in (0, 1)]
        for name in ranks[0]:
            assert ranks[0][name].equal(ranks[1][name]), f"{fold}: {name} differs between processes"
    assert (parent / "cv_metrics.json").is_file()
    assert result.stdout.count("fold 2/2") == 1  # one process talks
