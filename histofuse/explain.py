"""Where the model looks: Grad-CAM on convolutional branches (captum), attention rollout on ViT branches.

Both are computed on the image the model sees (resized, centre-cropped) and
returned as heatmaps in [0, 1] with overlays ready to save or show.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import nn


@dataclass
class Explanation:
    backbone: str
    method: str  # "grad-cam" or "attention rollout"
    heatmap: np.ndarray  # (S, S) float in [0, 1]; for the "tiles" and "attention" maps, one value per tile
    overlay: np.ndarray  # (S, S, 3) uint8 RGB


def explain(
    run, rgb: np.ndarray, *, normalize: bool = False, target: int | None = None, mpp: float | None = None, grid=None
) -> tuple[np.ndarray, list[Explanation]]:
    """Class probabilities (no TTA) and one explanation per backbone; Grad-CAM explains ``target`` or the decided class.

    With ``normalize`` and a ``source = "dataset"`` normalizer, ``run.adapt`` must first have measured the set
    ``rgb`` belongs to: which set that is (one upload, the files given) is the caller's to say. ``rgb`` is at
    ``mpp`` µm per pixel (for a run trained at one scale; unset: at the run's). A run trained on tiles is
    explained on its image's grid: the first explanation maps each tile's probability of ``target`` (with attention
    pooling, the next each tile's attention weight), and the backbones' heatmaps show the tile that decided most
    (the heaviest in attention, else the one giving ``target`` the highest probability). ``grid``: that run's tile
    map of ``rgb``, when the caller has it already.
    """
    from histofuse.tile_map import at_run_scale, tile_map

    if grid is None and run.recipe.data.tiles is not None:
        grid = tile_map(run, rgb, normalize=normalize, mpp=mpp)
    if grid is None:
        x = run.preprocess(at_run_scale(run, rgb, mpp), normalize)[None]
        probs = run.probabilities(x, "none")
    else:
        probs = grid.pooled[None]
    target = int(run.decide(probs, "none")[0]) if target is None else target
    if grid is not None:  # the tile that decided most: the heaviest in attention, else the most probable
        decisive = grid.weights if grid.weights is not None else grid.probs[:, target]
        x = grid.inputs[[int(decisive.argmax())]]
    seen = (x[0].permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8)
    # A fold ensemble shows each branch's heatmap averaged over its fold models.
    per_model = [branch_heatmaps(m.model, x, target) for m in getattr(run, "members", [run])]
    explanations = []
    if grid is not None:
        method = f"p({run.classes[target]}) per tile"
        explanations.append(Explanation("tiles", method, grid.probs[:, target], grid.drawn(grid.probs[:, target])))
    if grid is not None and grid.weights is not None:
        # Against an even share, drawn mid-scale: weights all alike show so instead of all at the top.
        share = np.clip(grid.weights * len(grid.weights) / 2, 0, 1)
        method = "attention weight per tile (an even share mid-scale, twice that or more at the top)"
        explanations.append(Explanation("attention", method, share, grid.drawn(share)))
    for name, (method, _) in per_model[0].items():
        heat = _unit(np.mean([cv2.resize(heats[name][1], seen.shape[1::-1], interpolation=cv2.INTER_LINEAR) for heats in per_model], axis=0))
        explanations.append(Explanation(name, method, heat, overlay(seen, heat)))
    return probs[0], explanations


def branch_heatmaps(model: nn.Module, x: torch.Tensor, target: int) -> dict[str, tuple[str, np.ndarray]]:
    """{backbone: (method, heatmap)} of one model for the batch of one ``x``."""
    heatmaps = {}
    for name, backbone in model.backbones.items():
        net = getattr(backbone, "net", backbone)
        inputs = model.normalize[name](x).to(next(net.parameters()).dtype)  # a frozen backbone may hold bfloat16
        if hasattr(backbone, "attention_maps"):
            with torch.no_grad():
                attentions = [a.float() for a in backbone.attention_maps(inputs)]
            heatmaps[name] = ("attention rollout", rollout(attentions, getattr(backbone, "prefix_tokens", 1)))
        elif is_vision_transformer(net):
            heatmaps[name] = ("attention rollout", attention_rollout(net, inputs))
        else:
            heatmaps[name] = ("grad-cam", grad_cam(model, conv_layer(net), x, target))
    return heatmaps


def is_vision_transformer(net: nn.Module) -> bool:
    blocks = getattr(net, "blocks", None)
    return blocks is not None and len(blocks) > 0 and all(hasattr(getattr(b, "attn", None), "fused_attn") for b in blocks)


def conv_layer(net: nn.Module) -> nn.Module:
    """The deepest feature stage timm reports (its feature_info), else the last Conv2d."""
    info = getattr(net, "feature_info", None)
    if info:
        return net.get_submodule(info[-1]["module"])
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("no convolutional layer to explain with Grad-CAM")
    return convs[-1]


def grad_cam(model: nn.Module, layer: nn.Module, x: torch.Tensor, target: int) -> np.ndarray:
    from captum.attr import LayerGradCam

    with torch.enable_grad():
        attribution = LayerGradCam(model, layer).attribute(x, target=target, relu_attributions=True)
    return _unit(attribution[0].sum(0).detach().float().numpy())


def attention_rollout(vit: nn.Module, x: torch.Tensor) -> np.ndarray:
    """Abnar & Zuidema (2020): head-averaged attention plus identity, multiplied through the blocks; CLS → patches."""
    captured: list[torch.Tensor] = []
    hooks, fused = [], []
    for block in vit.blocks:
        fused.append(block.attn.fused_attn)
        block.attn.fused_attn = False  # the fused kernel never materialises the attention matrix
        hooks.append(block.attn.attn_drop.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0].detach().float())))
    try:
        with torch.no_grad():
            vit.forward_features(x)
    finally:
        for hook in hooks:
            hook.remove()
        for block, was in zip(vit.blocks, fused):
            block.attn.fused_attn = was
    return rollout(captured, getattr(vit, "num_prefix_tokens", 1))


def rollout(attentions: list[torch.Tensor], prefix: int) -> np.ndarray:
    """Class token → patches through every block; ``prefix`` tokens (class, registers) precede the patches."""
    total = None
    for attention in attentions:
        a = attention[0].mean(0)
        a = a + torch.eye(a.shape[-1])
        a = a / a.sum(-1, keepdim=True)
        total = a if total is None else a @ total
    patches = total[0, prefix:]
    side = int(round(patches.numel() ** 0.5))
    return _unit(patches[: side * side].reshape(side, side).numpy())


def overlay(rgb: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    colored = cv2.cvtColor(cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(rgb, 1 - alpha, colored, alpha, 0)


def _unit(a: np.ndarray) -> np.ndarray:
    a = np.nan_to_num(a.astype(np.float32))
    span = a.max() - a.min()
    return (a - a.min()) / span if span > 0 else np.zeros_like(a)
