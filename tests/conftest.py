"""Shared fixtures: tiny recipes, tiny synthetic data, a plugin manager with only the built-ins."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest

# Nothing in the suite may touch the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# pytest-xdist runs one worker process per core: one intra-op thread each (and in the runs they start)
# keeps them from fighting over the cores. Set before anything imports torch.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]

TINY_RECIPE = {
    "name": "tiny",
    "seed": 7,
    "data": {
        "dataset": "synthetic",
        "root": "SET-BY-FIXTURE",
        "options": {"patients_per_class": 4, "images_per_magnification": 1, "width": 96, "height": 64},
        "image_size": 32,
        "resize": 36,
        "batch_size": 8,
        "num_workers": 0,
        "split": {"val": 0.25, "test": 0.25},
    },
    "model": {
        "fusion": "concat",
        "fusion_options": {"dim": 32, "dropout": 0.1},
        "head": {"hidden": 16, "dropout": 0.1},
        "backbones": [
            {"name": "cnn", "source": "timm", "model": "test_efficientnet", "pretrained": False},
            {"name": "vit", "source": "timm", "model": "test_vit", "pretrained": False},
        ],
    },
    "training": {"early_stopping": {"enabled": False}},
    "phases": [
        {"name": "head", "epochs": 1, "unfreeze": "none", "lr": {"head": 1e-3}, "augment": "strong"},
        {"name": "partial", "epochs": 1, "unfreeze": {"cnn": 2, "vit": 2}, "lr": {"head": 1e-3, "backbone": 1e-4}, "augment": "medium"},
        {"name": "full", "epochs": 1, "unfreeze": "all", "lr": {"head": 1e-4, "backbone": 1e-5}, "augment": "light"},
    ],
}


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A small synthetic BreaKHis-layout tree, written once per session."""
    from histofuse_builtins.data_synthetic import SyntheticOptions, ensure_synthetic

    root = tmp_path_factory.mktemp("synthetic")
    ensure_synthetic(root, SyntheticOptions(**TINY_RECIPE["data"]["options"]))
    return root


@pytest.fixture
def tiny_recipe_dict(synthetic_root) -> dict:
    raw = copy.deepcopy(TINY_RECIPE)
    raw["data"]["root"] = str(synthetic_root)
    return raw


@pytest.fixture
def tiny_recipe(tiny_recipe_dict):
    from histofuse.recipe import parse_recipe

    return parse_recipe(tiny_recipe_dict)


@pytest.fixture
def builtin_pm():
    """A plugin manager holding only the built-in plugins, registered by hand (no entry points)."""
    from histofuse_builtins import (
        backbones_timm,
        backbones_transformers,
        data_bach,
        data_breakhis,
        data_folder,
        data_synthetic,
        data_table,
        defaults,
        fusion_concat,
        fusion_cross_attention,
        fusion_gated,
        stain_macenko,
        stain_reinhard,
        stain_vahadane,
    )

    from histofuse.plugins import create_plugin_manager

    return create_plugin_manager(
        entry_points=False,
        plugins=(backbones_timm, backbones_transformers, fusion_concat, fusion_gated, fusion_cross_attention, data_synthetic, data_breakhis, data_bach, data_folder, data_table,
                 stain_reinhard, stain_macenko, stain_vahadane, defaults),
    )


@pytest.fixture
def registry(builtin_pm):
    from histofuse.registry import Registry

    return Registry(builtin_pm)


@pytest.fixture
def fresh_accelerator_state():
    """Accelerate keeps one state per process and refuses another precision later in it: a run in the test
    process with a precision other than the suite's default starts and ends on a clean state."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


def write_toml(path: Path, data: dict) -> Path:
    import tomli_w

    path.write_text(tomli_w.dumps(data))
    return path
