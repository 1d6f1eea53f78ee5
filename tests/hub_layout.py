"""Models as their cards describe them, written in the Hugging Face Hub's layouts: a model folder
(config.json + model.safetensors) and the Hub cache (models--ORG--NAME/snapshots/...).

The numbers are typed from the model cards, independently of the presets in the plugin, so that the
tests check the presets against them; benchmarks/backbone_costs.py builds the same architectures.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
H_OPTIMUS = ((0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517))


def swiglu_silu() -> dict:
    from timm.layers import SwiGLUPacked

    return {"mlp_layer": SwiGLUPacked, "act_layer": torch.nn.SiLU}


@dataclass
class Card:
    """A model as its card describes it: Hub id, architecture, what config.json holds, what the card passes in code."""

    preset: str
    hub_id: str
    architecture: str
    config_args: dict
    card_args: dict = field(default_factory=dict)
    normalization: tuple = IMAGENET
    pooled: int = 0  # the embedding the authors use
    tokens: int = 0  # class + patch tokens at 224 px, registers left out
    registers: int = 0
    params: float = 0  # millions, at full size, as the card reports them (rounded)


TIMM_CARDS = [
    Card("uni", "MahmoodLab/UNI", "vit_large_patch16_224",
         {"img_size": 224, "patch_size": 16, "num_classes": 0, "dynamic_img_size": True},
         {"init_values": 1e-5}, pooled=1024, tokens=1 + 14 * 14, params=303),
    Card("uni2-h", "MahmoodLab/UNI2-h", "vit_giant_patch14_224", {"num_classes": 0},
         {"img_size": 224, "patch_size": 14, "depth": 24, "num_heads": 24, "init_values": 1e-5, "embed_dim": 1536,
          "mlp_ratio": 2.66667 * 2, "no_embed_class": True, "reg_tokens": 8, "dynamic_img_size": True, "swiglu": True},
         pooled=1536, tokens=1 + 16 * 16, registers=8, params=681),
    Card("virchow2", "paige-ai/Virchow2", "vit_huge_patch14_224",
         {"img_size": 224, "init_values": 1e-5, "num_classes": 0, "mlp_ratio": 5.3375, "reg_tokens": 4,
          "global_pool": "", "dynamic_img_size": True},
         {"swiglu": True}, pooled=2 * 1280, tokens=1 + 16 * 16, registers=4, params=632),
    Card("virchow", "paige-ai/Virchow", "vit_huge_patch14_224",
         {"img_size": 224, "init_values": 1e-5, "num_classes": 0, "mlp_ratio": 5.3375, "global_pool": "", "dynamic_img_size": True},
         {"swiglu": True}, pooled=2 * 1280, tokens=1 + 16 * 16, params=632),
    Card("h-optimus-0", "bioptimus/H-optimus-0", "vit_giant_patch14_reg4_dinov2",
         {"num_classes": 0, "img_size": 224, "global_pool": "token"},
         {"init_values": 1e-5, "dynamic_img_size": False}, normalization=H_OPTIMUS, pooled=1536, tokens=1 + 16 * 16,
         registers=4, params=1100),
    Card("h-optimus-1", "bioptimus/H-optimus-1", "vit_giant_patch14_reg4_dinov2",
         {"num_classes": 0, "img_size": 224, "global_pool": "token"},
         {"init_values": 1e-5, "dynamic_img_size": False}, normalization=H_OPTIMUS, pooled=1536, tokens=1 + 16 * 16,
         registers=4, params=1100),
    Card("prov-gigapath", "prov-gigapath/prov-gigapath", "vit_giant_patch14_dinov2",
         {"img_size": 224, "in_chans": 3, "patch_size": 16, "embed_dim": 1536, "depth": 40, "num_heads": 24,
          "init_values": 1e-5, "mlp_ratio": 5.33334, "num_classes": 0},
         pooled=1536, tokens=1 + 14 * 14, params=1130),
]

CARD = {card.preset: card for card in TIMM_CARDS}


def save_timm_folder(folder: Path, card: Card, shrink: dict) -> dict:
    """The model built as its card builds it (random weights), saved in the Hub's layout; returns its weights."""
    import timm
    from safetensors.torch import save_file

    code = {k: v for k, v in card.card_args.items() if k != "swiglu"}
    if card.card_args.get("swiglu"):
        code.update(swiglu_silu())
    args = {**card.config_args, **shrink}
    torch.manual_seed(0)
    net = timm.create_model(card.architecture, pretrained=False, **{**code, **args})
    folder.mkdir(parents=True, exist_ok=True)
    state = net.state_dict()
    save_file(state, folder / "model.safetensors")
    mean, std = card.normalization
    config = {
        "architecture": card.architecture, "num_classes": 0, "num_features": net.num_features, "model_args": args,
        "pretrained_cfg": {"input_size": [3, 224, 224], "mean": list(mean), "std": list(std), "num_classes": 0,
                           "classifier": "head", "interpolation": "bicubic", "crop_pct": 1.0},
    }
    (folder / "config.json").write_text(json.dumps(config))
    return state


TRANSFORMERS_CARDS = [
    # Phikon: ViT-B/16 (12 blocks) as transformers' ViTModel; Phikon-v2: ViT-L/16 (24 blocks) as DINOv2.
    ("phikon", "owkin/phikon", "ViTConfig", {"hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 3072}, 768),
    ("phikon-v2", "owkin/phikon-v2", "Dinov2Config", {"hidden_size": 1024, "num_attention_heads": 16, "layerscale_value": 1e-5}, 1024),
]
TRANSFORMERS_DEPTH = {"phikon": 12, "phikon-v2": 24}
TRANSFORMERS_PARAMS = {"phikon": 86, "phikon-v2": 300}  # millions, as the cards report them


def save_transformers_folder(folder: Path, config_class: str, args: dict, layers: int = 1, normalization=IMAGENET) -> dict:
    import transformers

    torch.manual_seed(0)
    config = getattr(transformers, config_class)(image_size=224, patch_size=16, num_hidden_layers=layers, **args)
    net = transformers.AutoModel.from_config(config)
    net.save_pretrained(folder)
    mean, std = normalization
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": mean, "image_std": std, "crop_size": 224}))
    return {k: v for k, v in net.state_dict().items() if not k.startswith("pooler.")}


def fill_hub_cache(cache: Path, repo_id: str, folder: Path, ref: str = "main") -> None:
    """The Hugging Face cache's layout: refs/<branch or tag> names a snapshot holding the files."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    root = cache / f"models--{repo_id.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / ref).write_text(commit)
    (root / "snapshots" / commit).mkdir(parents=True)
    for file in folder.iterdir():
        (root / "snapshots" / commit / file.name).symlink_to(file)
