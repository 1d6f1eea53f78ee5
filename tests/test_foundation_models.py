"""Pathology foundation models, offline: each preset's real architecture, saved as the Hub lays it out, loaded
through a recipe, and checked against its model card's numbers (input normalization, pooled width, tokens).

Depth is shrunk to one block (and width too in the end-to-end runs): the code path is the same at any depth.
The card numbers (tests/hub_layout.py) are typed from the model cards, independently of the plugin's presets.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import tomllib

from conftest import write_toml
from hub_layout import (
    CARD,
    IMAGENET,
    TIMM_CARDS,
    TRANSFORMERS_CARDS,
    TRANSFORMERS_DEPTH,
    TRANSFORMERS_PARAMS,
    Card,
    fill_hub_cache,
    save_timm_folder,
    save_transformers_folder,
)
from test_run import only_run_dir, run_cli

import histofuse
from histofuse.model import build_model
from histofuse.recipe import check_recipe, parse_recipe


def recipe_with(tiny_recipe_dict: dict, backbone: dict, **data) -> dict:
    raw = copy.deepcopy(tiny_recipe_dict)
    raw["model"]["backbones"] = [{"name": "fm", "source": "timm"} | backbone]
    raw["data"].update(image_size=224, resize=224, **data)
    raw["phases"] = [{"name": "head", "epochs": 1, "lr": {"head": 1e-3}, "augment": "none"}]
    return raw


def assert_matches_card(model, card: Card, saved: dict) -> None:
    fm = model.backbones["fm"]
    assert fm.mean == pytest.approx(card.normalization[0]) and fm.std == pytest.approx(card.normalization[1])
    assert fm.num_features == card.pooled
    own = fm.export_state_dict()
    assert set(own) == set(saved)
    assert all(torch.equal(own[k], saved[k]) for k in saved)  # every tensor of the folder, none left at random
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        pooled, tokens, sequence = fm(x), fm.forward_tokens(x), fm.net.forward_features(x)
    assert pooled.shape == (1, card.pooled)
    assert tokens.shape == (1, card.tokens, fm.token_features)
    assert sequence.shape[1] == card.tokens + card.registers
    if card.pooled == 2 * fm.token_features:  # Virchow's embedding: class token beside the mean of patch tokens
        expected = torch.cat([sequence[:, 0], sequence[:, 1 + card.registers:].mean(1)], dim=1)
    else:
        expected = sequence[:, 0]
    assert torch.allclose(pooled, expected, atol=1e-5)


@pytest.mark.parametrize("card", TIMM_CARDS, ids=lambda c: c.preset)
def test_each_timm_preset_loads_from_a_hub_folder_as_its_card_says(card, tmp_path, tiny_recipe_dict, registry):
    saved = save_timm_folder(tmp_path / card.preset, card, {"depth": 1})
    raw = recipe_with(tiny_recipe_dict, {"model": f"local-dir:{tmp_path / card.preset}", "pretrained": True,
                                         "options": {"depth": 1, "preset": card.preset}})
    recipe = parse_recipe(raw)
    assert check_recipe(recipe, registry) == []
    model = build_model(recipe, registry, 2)
    assert_matches_card(model, card, saved)
    if card.card_args.get("swiglu"):
        block = model.backbones["fm"].net.blocks[0]
        assert type(block.mlp).__name__ == "GluMlp" and isinstance(block.mlp.act, torch.nn.SiLU)


@pytest.mark.parametrize("card", TIMM_CARDS, ids=lambda c: c.preset)
def test_each_timm_preset_at_full_size_has_the_cards_parameter_count(card, tmp_path, tiny_recipe_dict, registry):
    """Built on the meta device (no memory, no weights) from the Hub config as it is, at full depth."""
    from histofuse.summary import check_model

    folder = tmp_path / card.preset
    save_timm_folder(folder, card, {"depth": 1})
    config = json.loads((folder / "config.json").read_text())
    config["model_args"] = card.config_args
    (folder / "config.json").write_text(json.dumps(config))
    raw = recipe_with(tiny_recipe_dict, {"model": f"local-dir:{folder}", "options": {"preset": card.preset}})
    raw["phases"].append({"name": "top", "epochs": 1, "unfreeze": {"fm": 4}, "lr": {"head": 1e-4, "backbone": 1e-5}})
    problems, model = check_model(parse_recipe(raw), registry)
    assert problems == []
    fm = model.backbones["fm"]
    assert sum(p.numel() for p in fm.parameters()) / 1e6 == pytest.approx(card.params, rel=0.035)
    assert len(fm.parameter_groups()) == 1 + len(fm.net.blocks)


def test_a_local_dir_copy_without_its_preset_is_told_to_name_it(tmp_path, tiny_recipe_dict, registry):
    card = CARD['virchow2']
    save_timm_folder(tmp_path / "v2", card, {"depth": 1})
    base = {"model": f"local-dir:{tmp_path / 'v2'}", "pretrained": True}
    # Without the preset the card's SwiGLU layers are missing, and the weights say so.
    with pytest.raises(histofuse.WeightsError, match=r"do not fit the model its config.json describes .*size mismatch for blocks.0.mlp.*options.preset = one of uni, uni2-h, virchow, virchow2"):
        build_model(parse_recipe(recipe_with(tiny_recipe_dict, {**base, "options": {"depth": 1}})), registry, 2)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def test_hf_hub_names_load_from_the_local_cache_when_offline(tmp_path, hub_cache, tiny_recipe_dict, registry):
    card = CARD['h-optimus-1']
    saved = save_timm_folder(tmp_path / "files", card, {"depth": 1})
    fill_hub_cache(hub_cache, card.hub_id, tmp_path / "files")
    raw = recipe_with(tiny_recipe_dict, {"model": f"hf-hub:{card.hub_id}", "pretrained": True, "options": {"depth": 1}})
    assert_matches_card(build_model(parse_recipe(raw), registry, 2), card, saved)


def test_offline_without_a_cached_copy_says_which_files_to_put_where(tmp_path, tiny_recipe_dict):
    raw = recipe_with(tiny_recipe_dict, {"model": "hf-hub:MahmoodLab/UNI2-h", "pretrained": True})
    recipe = write_toml(tmp_path / "uni2.toml", raw)
    cache = tmp_path / "hf-cache"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    done = subprocess.run([sys.executable, "-m", "histofuse", "run", str(recipe), "--output-dir", str(tmp_path / "runs")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2
    message = " ".join(done.stderr.split())
    for words in ("model: the model could not be built", "MahmoodLab/UNI2-h", "HF_HUB_OFFLINE is set",
                  "hf download MahmoodLab/UNI2-h", str(cache / "models--MahmoodLab--UNI2-h"),
                  "config.json and model.safetensors or pytorch_model.bin",
                  'model = "local-dir:/that/folder" with options.preset = "uni2-h"',
                  "accept its terms at https://huggingface.co/MahmoodLab/UNI2-h"):
        assert words in message, words
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "runs").exists()


def test_names_and_folders_are_checked_before_anything_is_built(tmp_path, tiny_recipe_dict, registry):
    (tmp_path / "empty").mkdir()
    (tmp_path / "no-weights").mkdir()
    (tmp_path / "no-weights" / "config.json").write_text("{}")
    cases = {
        "hf-hub:uni": "is not a Hugging Face Hub model id",
        f"local-dir:{tmp_path / 'missing'}": "does not exist",
        f"local-dir:{tmp_path / 'empty'}": "has no config.json",
        f"local-dir:{tmp_path / 'no-weights'}": "has config.json but no weights",
        "MahmoodLab/UNI": "A Hugging Face Hub model is named hf-hub:ORG/NAME",
    }
    for name, words in cases.items():
        problems = check_recipe(parse_recipe(recipe_with(tiny_recipe_dict, {"model": name, "pretrained": True})), registry)
        assert any("model.backbones[0].model: " in p and words in p for p in problems), (name, problems)


def test_a_local_dir_under_home_is_found(tmp_path, monkeypatch, tiny_recipe_dict, registry):
    monkeypatch.setenv("HOME", str(tmp_path))
    saved = save_timm_folder(tmp_path / "models" / "uni", CARD["uni"], {"depth": 1})
    raw = recipe_with(tiny_recipe_dict, {"model": "local-dir:~/models/uni", "pretrained": True, "options": {"depth": 1, "preset": "uni"}})
    assert check_recipe(parse_recipe(raw), registry) == []
    assert_matches_card(build_model(parse_recipe(raw), registry, 2), CARD["uni"], saved)


def test_weights_check_takes_hub_names_and_options(tmp_path, hub_cache):
    from safetensors.torch import save_file

    card = CARD["virchow2"]
    saved = save_timm_folder(tmp_path / "files", card, {"depth": 1})
    fill_hub_cache(hub_cache, card.hub_id, tmp_path / "files")
    save_file(saved, tmp_path / "trained.safetensors")
    result = run_cli(["weights", "check", f"hf-hub:{card.hub_id}", str(tmp_path / "trained.safetensors"), "--option", "depth=1"])
    assert result.exit_code == 0, result.output
    assert f"fits timm:hf-hub:{card.hub_id}: loaded {len(saved)} tensors" in " ".join(result.output.split())


# ---- the transformers family ----

@pytest.mark.parametrize("preset, hub_id, config_class, args, width", TRANSFORMERS_CARDS, ids=lambda v: str(v)[:12])
def test_each_transformers_preset_loads_from_a_hub_folder(preset, hub_id, config_class, args, width, tmp_path, tiny_recipe_dict, registry):
    pytest.importorskip("transformers")
    saved = save_transformers_folder(tmp_path / preset, config_class, args)
    raw = recipe_with(tiny_recipe_dict, {"model": f"local-dir:{tmp_path / preset}", "pretrained": True, "source": "transformers",
                                         "options": {"preset": preset}})
    recipe = parse_recipe(raw)
    assert check_recipe(recipe, registry) == []
    model = build_model(recipe, registry, 2)
    card = Card(preset, hub_id, config_class, {}, pooled=width, tokens=1 + 14 * 14)
    assert_matches_card_transformers(model.backbones["fm"], card, saved)
    # At full depth, on the meta device: the card's parameter count and one group per block.
    config = json.loads((tmp_path / preset / "config.json").read_text())
    (tmp_path / preset / "config.json").write_text(json.dumps({**config, "num_hidden_layers": TRANSFORMERS_DEPTH[preset]}))
    with torch.device("meta"):
        full = build_model(recipe, registry, 2, pretrained=False).backbones["fm"]
    assert sum(p.numel() for p in full.parameters()) / 1e6 == pytest.approx(TRANSFORMERS_PARAMS[preset], rel=0.035)
    assert len(full.parameter_groups()) == TRANSFORMERS_DEPTH[preset] + 2


def assert_matches_card_transformers(fm, card: Card, saved: dict) -> None:
    assert fm.mean == pytest.approx(IMAGENET[0]) and fm.std == pytest.approx(IMAGENET[1])
    own = fm.export_state_dict()
    assert set(own) == set(saved) and all(torch.equal(own[k], saved[k]) for k in saved)
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        pooled, tokens = fm(x), fm.forward_tokens(x)
        cls = fm.net(pixel_values=x).last_hidden_state[:, 0]  # the cards' embedding
    assert pooled.shape == (2, card.pooled) and tokens.shape == (2, card.tokens, card.pooled)
    assert torch.allclose(pooled, cls, atol=1e-5)
    groups = fm.parameter_groups()
    assert sum(len(g) for g in groups) == len(list(fm.parameters()))
    assert len(groups) == 3  # embeddings, the one block, the final norm


def test_without_a_preset_the_image_processor_gives_mean_and_std(tmp_path):
    pytest.importorskip("transformers")
    from histofuse_builtins.backbones_transformers import build_transformers_backbone

    folder = tmp_path / "own"
    save_transformers_folder(folder, "ViTConfig", {"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64},
                             normalization=((0.7, 0.6, 0.7), (0.2, 0.25, 0.15)))
    fm = build_transformers_backbone(model=f"local-dir:{folder}", pretrained=True)
    assert (fm.mean, fm.std) == ((0.7, 0.6, 0.7), (0.2, 0.25, 0.15)) and not fm.foundation_model


def test_transformers_hub_revisions_and_offline_cache(tmp_path, hub_cache):
    pytest.importorskip("transformers")
    from histofuse_builtins.backbones_transformers import build_transformers_backbone

    saved = save_transformers_folder(tmp_path / "files", *TRANSFORMERS_CARDS[0][2:4])
    fill_hub_cache(hub_cache, "owkin/phikon", tmp_path / "files", ref="v1")
    for name, options in (("owkin/phikon@v1", {}), ("hf-hub:owkin/phikon", {"revision": "v1"})):
        fm = build_transformers_backbone(model=name, pretrained=True, **options)
        assert fm.foundation_model and fm.num_features == 768
        assert all(torch.equal(fm.export_state_dict()[k], v) for k, v in saved.items())
    with pytest.raises(histofuse.WeightsError, match="could not get 'owkin/phikon-v2' .*HF_HUB_OFFLINE is set"):
        build_transformers_backbone(model="owkin/phikon-v2", pretrained=True)


def test_transformers_registers_are_left_out_of_tokens(registry, tmp_path):
    transformers = pytest.importorskip("transformers")
    from histofuse_builtins.backbones_transformers import build_transformers_backbone

    config = transformers.Dinov2WithRegistersConfig(
        image_size=56, patch_size=14, hidden_size=32, num_attention_heads=2, num_hidden_layers=2, num_register_tokens=4
    )
    transformers.AutoModel.from_config(config).save_pretrained(tmp_path / "reg")
    fm = build_transformers_backbone(model=f"local-dir:{tmp_path / 'reg'}", pretrained=True, image_size=56, pool="cls+mean")
    x = torch.rand(1, 3, 56, 56)
    with torch.no_grad():
        sequence = fm.net(pixel_values=x).last_hidden_state
        assert sequence.shape[1] == 1 + 4 + 16
        assert torch.equal(fm.forward_tokens(x), torch.cat([sequence[:, :1], sequence[:, 5:]], 1))
        assert torch.allclose(fm(x), torch.cat([sequence[:, 0], sequence[:, 5:].mean(1)], 1), atol=1e-6)
    assert [len(g) for g in fm.parameter_groups()][1:3] == [len(list(fm.net.encoder.layer[i].parameters())) for i in (0, 1)]


# ---- big backbones on small machines ----

def build_small(family: str, tmp_path: Path, checkpointing: bool):
    from histofuse_builtins.backbones_timm import build_timm_backbone
    from histofuse_builtins.backbones_transformers import build_transformers_backbone

    torch.manual_seed(0)
    if family == "timm":
        return build_timm_backbone(model="vit_small_patch16_224", image_size=32, depth=2, embed_dim=48, num_heads=2,
                                   grad_checkpointing=checkpointing)
    folder = tmp_path / "phikon-small"
    if not folder.exists():
        save_transformers_folder(folder, "ViTConfig", {"hidden_size": 48, "num_attention_heads": 2, "intermediate_size": 96}, layers=2)
    return build_transformers_backbone(model=f"local-dir:{folder}", pretrained=True, image_size=32, grad_checkpointing=checkpointing)


@pytest.mark.parametrize("family", ["timm", "transformers"])
def test_grad_checkpointing_gives_the_same_gradients_above_frozen_layers(family, tmp_path):
    """The input-side group frozen, as in a partial phase: the blocks above it get the same gradients either way."""
    if family == "transformers":
        pytest.importorskip("transformers")
    grads = []
    for checkpointing in (False, True):
        backbone = build_small(family, tmp_path, checkpointing)
        frozen, *trained = backbone.parameter_groups()
        for parameter in frozen:
            parameter.requires_grad_(False)
        backbone.train()
        torch.manual_seed(1)
        backbone(torch.rand(2, 3, 32, 32)).square().sum().backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for group in trained[:-1] for p in group if p.ndim > 1)
        grads.append(torch.cat([p.grad.flatten() for group in trained for p in group if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_bfloat16_weights_halve_a_frozen_backbone_and_hand_on_float32(tiny_recipe_dict, registry):
    raw = copy.deepcopy(tiny_recipe_dict)
    raw["phases"] = [{"name": "head", "epochs": 1, "lr": {"head": 1e-3}, "augment": "none"}]
    full = build_model(parse_recipe(raw), registry, 2)
    raw["model"]["backbones"][1]["dtype"] = "bfloat16"
    half = build_model(parse_recipe(raw), registry, 2)
    half.load_state_dict({k: v.to(half.state_dict()[k].dtype) for k, v in full.state_dict().items()})
    assert {p.dtype for p in half.backbones["vit"].parameters()} == {torch.bfloat16}
    assert {p.dtype for p in half.backbones["cnn"].parameters()} == {torch.float32}
    size = lambda m: sum(p.numel() * p.element_size() for p in m.parameters())  # noqa: E731
    assert size(half.backbones["vit"]) * 2 == size(full.backbones["vit"])
    x = torch.rand(4, 3, 32, 32)
    full.eval(), half.eval()
    with torch.no_grad():
        features, reference = half.features(x), full.features(x)
    assert features[1].dtype == torch.float32
    assert torch.allclose(features[1], reference[1], atol=0.05, rtol=0.02)
    assert not torch.equal(features[1], reference[1])  # it did run in bfloat16
    # Under another precision's autocast (fp16) the bfloat16 backbone keeps its own dtype.
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
        assert torch.equal(half.features(x)[1], features[1])

    raw["phases"].append({"name": "full", "epochs": 1, "unfreeze": "all", "lr": {"head": 1e-3, "backbone": 1e-4}})
    problems = check_recipe(parse_recipe(raw), registry)
    assert any("model.backbones[1].dtype: bfloat16 weights are for a backbone no phase trains" in p and "phases[1]" in p for p in problems)


def small_fm_folder(tmp_path: Path) -> tuple[Path, dict]:
    """Virchow2's architecture and card arguments at the width and depth of a test model, and its weights."""
    saved = save_timm_folder(tmp_path / "fm", CARD["virchow2"], {"depth": 2, "embed_dim": 96, "num_heads": 2})
    return tmp_path / "fm", saved


def test_a_foundation_model_and_a_cnn_train_end_to_end(tmp_path, tiny_recipe_dict):
    """Head phase on cached features (the default for a frozen foundation model), then the last block of each
    backbone unfrozen, with gradient checkpointing through the foundation model."""
    from safetensors.torch import load_file

    raw = copy.deepcopy(tiny_recipe_dict)
    raw["data"].update(image_size=56, resize=64)
    raw["training"]["checkpoints"] = {"keep_after_run": True}
    folder, saved = small_fm_folder(tmp_path)
    options = {"preset": "virchow2", "depth": 2, "embed_dim": 96, "num_heads": 2, "grad_checkpointing": True}
    raw["model"]["backbones"] = [
        {"name": "fm", "source": "timm", "model": f"local-dir:{folder}", "pretrained": True, "options": options},
        {"name": "cnn", "source": "timm", "model": "test_efficientnet", "pretrained": False},
    ]
    raw["phases"] = [
        {"name": "head", "epochs": 2, "lr": {"head": 1e-3}, "augment": "none"},
        {"name": "partial", "epochs": 1, "unfreeze": {"fm": 1, "cnn": 1}, "lr": {"head": 1e-3, "backbone": 1e-3}, "augment": "light"},
    ]
    result = run_cli(["run", str(write_toml(tmp_path / "fm.toml", raw)), "--output-dir", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    assert result.output.count("cached features of") == 1  # the head phase only
    run_dir = only_run_dir(tmp_path / "runs")
    assert [line.split(",")[0] for line in (run_dir / "history.csv").read_text().splitlines()[1:]] == ["head", "head", "partial"]
    last = load_file(run_dir / "checkpoints" / "epoch-0003" / "model.safetensors")
    fm = {k.removeprefix("backbones.fm.net."): v for k, v in last.items() if k.startswith("backbones.fm.net.")}
    assert set(fm) == set(saved)
    # One group unfrozen: the last block (with the final norm) trained, the layers below it did not.
    for frozen in ("patch_embed.proj.weight", "blocks.0.mlp.fc1.weight"):
        assert torch.equal(fm[frozen], saved[frozen]), frozen
    for trained in ("blocks.1.mlp.fc1.weight", "norm.weight"):
        assert not torch.equal(fm[trained], saved[trained]), trained


def test_a_probe_keeps_its_foundation_model_in_bfloat16(tmp_path, tiny_recipe_dict):
    from safetensors import safe_open

    raw = copy.deepcopy(tiny_recipe_dict)
    raw["data"].update(image_size=56, resize=64)
    raw["model"]["backbones"] = [{
        "name": "fm", "source": "timm", "model": f"local-dir:{small_fm_folder(tmp_path)[0]}", "pretrained": True,
        "dtype": "bfloat16", "options": {"depth": 2, "embed_dim": 96, "num_heads": 2, "preset": "virchow2"},
    }]
    raw["phases"] = [{"name": "probe", "epochs": 2, "lr": {"head": 1e-3}, "augment": "none"}]
    result = run_cli(["run", str(write_toml(tmp_path / "probe.toml", raw)), "--output-dir", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    assert "cached features of" in result.output
    run_dir = only_run_dir(tmp_path / "runs")
    with safe_open(run_dir / "model.safetensors", "pt") as weights:
        dtypes = {weights.get_tensor(k).dtype for k in weights.keys() if k.startswith("backbones.fm.")}
    assert dtypes == {torch.bfloat16}
    # The finished run explains itself: attention rollout through the bfloat16 blocks, registers left out.
    image = sorted(Path(raw["data"]["root"]).rglob("*.png"))[0]
    result = run_cli(["explain", str(run_dir), str(image), "--out", str(tmp_path / "explained")])
    assert result.exit_code == 0, result.output
    assert "fm (attention rollout)" in result.output
    assert (tmp_path / "explained" / f"{image.stem}_fm.png").is_file()
    # ONNX Runtime runs no bfloat16 convolution on the CPU: the file holds the same weights as float32.
    pytest.importorskip("onnxruntime")
    result = run_cli(["export", str(run_dir), "--format", "onnx", "--out", str(tmp_path / "m.onnx")])
    assert result.exit_code == 0, result.output
    sidecar = json.loads((tmp_path / "m.onnx.json").read_text())
    assert sidecar["weights"] == "bfloat16 weights of fm stored as float32 (same values)" and sidecar["max_abs_diff"] <= 1e-4


def test_every_preset_in_the_plugin_has_a_card_test():
    from histofuse_builtins.foundation_models import PRESETS

    tested = {c.preset for c in TIMM_CARDS} | {c[0] for c in TRANSFORMERS_CARDS}
    assert tested == set(PRESETS)


@pytest.mark.parametrize("name, repo, preset", [("fm_probe", "bioptimus/H-optimus-0", "h-optimus-0"),
                                                 ("fm_fusion", "MahmoodLab/UNI2-h", "uni2-h")])
def test_the_foundation_model_recipes_build_at_full_size(name, repo, preset, tmp_path, hub_cache, registry):
    """The shipped recipes, their Hub names resolved through an offline cache holding the model's config.json."""
    from conftest import REPO

    from histofuse.recipe import load_recipe
    from histofuse.summary import check_model

    card = CARD[preset]
    save_timm_folder(tmp_path / "files", card, {"depth": 1})
    config = json.loads((tmp_path / "files" / "config.json").read_text())
    (tmp_path / "files" / "config.json").write_text(json.dumps({**config, "model_args": card.config_args}))
    (tmp_path / "files" / "model.safetensors").unlink()
    fill_hub_cache(hub_cache, repo, tmp_path / "files")
    recipe = load_recipe(REPO / "recipes" / f"{name}.toml", ["model.backbones[0].pretrained=false", "model.backbones[1].pretrained=false"])
    problems, model = check_model(recipe, registry)
    assert problems == []
    fm = model.backbones["fm"]
    assert sum(p.numel() for p in fm.parameters()) / 1e6 == pytest.approx(card.params, rel=0.035)
    assert fm.num_features == card.pooled and fm.foundation_model


def test_the_backbones_page_snippets_name_presets_and_its_cost_table_is_the_benchmarks():
    import re

    from conftest import REPO
    from histofuse_builtins.foundation_models import find_preset

    page = (REPO / "docs" / "backbones.md").read_text()
    snippets = re.findall(r"```toml\n(.*?)```", page, flags=re.S)
    assert len(snippets) == 6
    for snippet in snippets:
        [backbone] = tomllib.loads(snippet)["model"]["backbones"]
        assert find_preset(backbone["model"], backbone.get("source", "timm")) is not None, backbone
    sys.path.insert(0, str(REPO / "benchmarks"))
    import backbone_costs

    # The page shows the benchmark's printed table (tests/test_doc_figures.py checks it is what results.json holds);
    # parameters and FLOPs are counted on the meta device, so they are recomputed here, on any machine.
    [block] = re.findall(r"<!-- output: backbone_costs -->\n```text\n(.*?)```", page, flags=re.S)
    table = re.findall(r"^\s*(\S+(?: \(paper\))?)\s+([\d.]+)\s+([\d.]+)\s", block, flags=re.M)
    assert len(table) == 12
    specs = backbone_costs.specs()
    for name, params, gflops in table:
        counted = backbone_costs.counts(specs[name])
        assert (f"{counted[0]:.1f}", f"{counted[1]:.1f}") == (params, gflops), name


def test_explain_covers_a_bfloat16_cnn_and_a_transformers_encoder(tmp_path, tiny_recipe_dict, registry):
    pytest.importorskip("transformers")
    from histofuse.explain import branch_heatmaps

    folder = tmp_path / "vit"
    save_transformers_folder(folder, "ViTConfig", {"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64}, layers=2)
    raw = copy.deepcopy(tiny_recipe_dict)
    raw["data"].update(image_size=64, resize=64)
    raw["model"]["backbones"] = [
        {"name": "cnn", "source": "timm", "model": "test_efficientnet", "dtype": "bfloat16"},
        {"name": "hf", "source": "transformers", "model": f"local-dir:{folder}", "pretrained": True},
    ]
    raw["phases"] = [{"name": "head", "epochs": 1, "lr": {"head": 1e-3}, "augment": "none"}]
    model = build_model(parse_recipe(raw), registry, 2).eval()
    heatmaps = branch_heatmaps(model, torch.rand(1, 3, 64, 64), 1)
    assert heatmaps["cnn"][0] == "grad-cam" and heatmaps["cnn"][1].dtype == "float32"
    method, heat = heatmaps["hf"]
    assert method == "attention rollout" and heat.shape == (4, 4)  # 64 px / 16 px patches, the class token left out
    assert model.backbones["hf"].net.config._attn_implementation != "eager"  # put back after the rollout
