"""A third party's contract mistake is stopped before training, naming the plugin, its distribution and what
it returned: every component the recipe names is run once on a tiny input (the model on the meta device)."""

from __future__ import annotations

import subprocess
import sys

from conftest import write_toml
from test_plugins import make_fake_distribution

# A fusion written from the docs' older wording ("forward takes one tensor per backbone"): it installs, is
# listed and passes every schema check, and used to die in the first training step.
STAR_FUSION = """
import histofuse
import torch
from torch import nn


class Star(nn.Module):
    def __init__(self, in_features, dim=8):
        super().__init__()
        self.out_features = dim
        self.layer = nn.Linear(sum(in_features), dim)

    def forward(self, *features):
        return self.layer(torch.cat(features, dim=1))


@histofuse.hookimpl
def register_fusions():
    return [histofuse.FusionSpec(name="star", build=Star, description="star-args fusion")]
"""

LYING_BACKBONE = """
import histofuse
import torch
from torch import nn


class Lying(nn.Module):
    num_features = 16  # what it says
    mean = (0.5, 0.5, 0.5)
    std = (0.5, 0.5, 0.5)

    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(3, 12)  # what it gives

    def forward(self, x):
        return self.layer(x.mean((2, 3)))

    def parameter_groups(self):
        return [list(self.parameters())]


@histofuse.hookimpl
def register_backbones():
    return [histofuse.BackboneSpec(name="lying", build=lambda **_: Lying(), description="wrong width")]
"""

FLOAT_NORMALIZER = """
import histofuse
import numpy as np


class Floaty:
    state = {}

    def fit(self, images):
        return self.state

    def load_state(self, state):
        pass

    def transform(self, rgb):
        return rgb / 255.0


@histofuse.hookimpl
def register_normalizers():
    return [histofuse.NormalizerSpec(name="floaty", build=Floaty, description="returns floats")]
"""


def recipe_check(tmp_path, monkeypatch, module, source, raw):
    folder = make_fake_distribution(tmp_path / "dist", module, source)
    monkeypatch.syspath_prepend(str(folder))
    recipe = write_toml(tmp_path / "recipe.toml", raw)
    env = {"PYTHONPATH": str(folder)}
    import os

    return subprocess.run([sys.executable, "-m", "histofuse", "recipe", "check", str(recipe)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, **env})


def test_a_fusion_whose_forward_takes_star_args_is_stopped_with_its_plugin_named(tmp_path, monkeypatch, tiny_recipe_dict):
    tiny_recipe_dict["model"]["fusion"] = "star"
    tiny_recipe_dict["model"]["fusion_options"] = {}
    done = recipe_check(tmp_path, monkeypatch, "star_fusion_plugin", STAR_FUSION, tiny_recipe_dict)
    assert done.returncode == 2, done.stdout + done.stderr
    message = " ".join(done.stderr.split())
    assert "model.fusion: fusion 'star' from plugin star_fusion_plugin (star-fusion-plugin 0.1)" in message
    assert "forward(features) raised TypeError" in message
    assert "a fusion's forward takes one list holding one tensor per backbone" in message
    assert "Traceback" not in done.stderr


def test_a_backbone_narrower_than_it_says_is_stopped(tmp_path, monkeypatch, tiny_recipe_dict):
    tiny_recipe_dict["model"]["backbones"][1] = {"name": "odd", "source": "lying", "model": "any"}
    for phase in tiny_recipe_dict["phases"]:
        if isinstance(phase["unfreeze"], dict):
            phase["unfreeze"] = {"cnn": 1}
    done = recipe_check(tmp_path, monkeypatch, "lying_backbone_plugin", LYING_BACKBONE, tiny_recipe_dict)
    assert done.returncode == 2, done.stdout + done.stderr
    message = " ".join(done.stderr.split())
    assert ("model.backbones[1]: backbone 'lying' from plugin lying_backbone_plugin (lying-backbone-plugin 0.1): "
            "forward returned (2, 12) for a batch of 2; its declared width says (2, 16)") in message


def test_a_normalizer_that_returns_floats_is_stopped(tmp_path, monkeypatch, tiny_recipe_dict):
    tiny_recipe_dict["evaluation"] = {"compare_normalizers": ["floaty"]}
    done = recipe_check(tmp_path, monkeypatch, "floaty_normalizer_plugin", FLOAT_NORMALIZER, tiny_recipe_dict)
    assert done.returncode == 2, done.stdout + done.stderr
    message = " ".join(done.stderr.split())
    assert ("evaluation.compare_normalizers[0]: normalizer 'floaty' from plugin floaty_normalizer_plugin "
            "(floaty-normalizer-plugin 0.1): on three generated H&E tiles, transform returned float64 (64, 64, 3); "
            "expected uint8 RGB of the input's shape (64, 64, 3)") in message


def test_the_builtins_pass_their_own_contracts(tiny_recipe_dict, registry):
    from histofuse.contracts import check_contracts
    from histofuse.recipe import parse_recipe
    from histofuse.summary import check_model

    tiny_recipe_dict["evaluation"] = {"compare_normalizers": ["reinhard", "macenko", "vahadane"]}
    for fusion in ("concat", "gated", "cross_attention"):
        tiny_recipe_dict["model"]["fusion"] = fusion
        recipe = parse_recipe(tiny_recipe_dict)
        problems, model = check_model(recipe, registry)
        assert problems == [] and check_contracts(recipe, registry, model) == [], fusion


def test_a_timm_head_that_pools_into_a_wider_layer_declares_that_width(tiny_recipe_dict, registry):
    """EfficientViT's pre-logits are its head's hidden layer (1280), not its last stage (128): the contract check
    found the timm backbone declaring the latter."""
    from histofuse.contracts import check_contracts
    from histofuse.recipe import parse_recipe
    from histofuse.summary import check_model

    tiny_recipe_dict["model"]["backbones"][1] = {"name": "vit", "source": "timm", "model": "efficientvit_b0"}
    recipe = parse_recipe(tiny_recipe_dict)
    problems, model = check_model(recipe, registry)
    assert problems == [] and check_contracts(recipe, registry, model) == []
    assert model.backbones["vit"].num_features == 1280
