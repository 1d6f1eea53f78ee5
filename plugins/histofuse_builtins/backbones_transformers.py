"""Vision models published as transformers ``AutoModel``s (Phikon, Phikon-v2, Hibou) as backbones.

Same contract as the timm family. The model is named by its Hub id
(``owkin/phikon-v2``, or ``hf-hub:owkin/phikon-v2``) or a folder
(``local-dir:PATH``); transformers itself reads the Hub, its cache
(``HF_HUB_OFFLINE=1``) or the folder. transformers is an optional extra:
``pip install 'histofuse[transformers]'``.
"""

from __future__ import annotations

import functools
import inspect
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

import histofuse
from histofuse_builtins.foundation_models import IMAGENET_MEAN, IMAGENET_STD, find_preset, finish, pool_tokens, without_registers
from histofuse_builtins.hub_sources import check_source, name_problems, split_source, unreachable

INSTALL = "pip install 'histofuse[transformers]'"


class TransformersOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    preset: str | None = Field(None, description="a foundation model's preset (e.g. 'phikon-v2') for a local-dir: copy")
    pool: Literal["cls", "mean", "cls+mean"] | None = Field(None, description="default: the preset's, else 'cls'")
    grad_checkpointing: bool = False
    revision: str | None = Field(None, description="a Hub branch, tag or commit")
    trust_remote_code: bool = Field(
        False, description="run the model's own Python code from the Hub (Hibou needs it): read that code first"
    )


def _location(model: str, revision: str | None) -> tuple[str, dict]:
    """(what transformers loads from, the Hub keywords: a revision, from options or an @ suffix)."""
    scheme, ident = split_source(model)
    if scheme == "local-dir":
        return str(Path(ident).expanduser()), {}
    repo, _, suffix = ident.partition("@")
    return repo, {"revision": revision or suffix or None}


def check_model_name(model: str, pretrained: bool | str) -> str | None:
    try:
        import transformers  # noqa: F401
    except ImportError:
        return f"the transformers backbone family needs the transformers package: {INSTALL}"
    scheme, _ = split_source(model)
    if scheme is None:
        if "/" not in model:
            return f"'{model}' is not a Hub model id; write ORG/NAME (e.g. owkin/phikon-v2) or local-dir:PATH"
        return check_source(f"hf-hub:{model}", pretrained, sharded=True)
    return check_source(model, pretrained, sharded=True)


def build_transformers_backbone(
    *, model: str, pretrained: bool | str = False, image_size: int = 224, preset: str | None = None,
    pool: str | None = None, grad_checkpointing: bool = False, revision: str | None = None,
    trust_remote_code: bool = False,
):
    problem = check_model_name(model, pretrained)
    if problem:
        raise histofuse.WeightsError(problem)
    source, hub = _location(model, revision)
    card = find_preset(source if hub else model, "transformers", preset)
    net = _load(source, hub, pretrained is True, trust_remote_code, card)
    if not isinstance(getattr(net.config, "hidden_size", None), int):
        raise ValueError(f"'{model}' is a {type(net).__name__}: the transformers family takes ViT/DINOv2-style encoders, "
                         "whose output is a sequence of tokens of width config.hidden_size")
    report = None
    if isinstance(pretrained, str):
        report = histofuse.load_weights_file(net, Path(pretrained))
        histofuse.log.info("%s: %s", model, report.summary())
    if getattr(net, "pooler", None) is not None:
        net.pooler = None  # its output is not used; left in, its weights would never get a gradient
    if grad_checkpointing:
        # Re-entrant checkpointing passes no gradient to trained blocks above a frozen embedding.
        if hasattr(net, "activation_checkpointing_enable"):  # transformers 5 renamed it
            net.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            net.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    mean, std = (card.mean, card.std) if card else _normalization(source, hub)
    backbone = _backbone_class()(net, mean, std, pool or (card.pool if card else "cls"))
    native = getattr(net.config, "image_size", image_size)
    return finish(backbone, model, card, native, image_size, report, pretrained)


def _load(source: str, hub: dict, weights: bool, trust_remote_code: bool, card):
    from transformers import AutoConfig, AutoModel

    try:
        if weights:
            return AutoModel.from_pretrained(source, trust_remote_code=trust_remote_code, **hub)
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code, **hub)
        return AutoModel.from_config(config, trust_remote_code=trust_remote_code)
    except OSError as exc:  # transformers says "couldn't connect", "not in the cache" or "gated" as OSErrors
        raise histofuse.WeightsError(unreachable(source, exc, card)) from exc


def _normalization(source: str, hub: dict) -> tuple[tuple, tuple]:
    """The image processor's mean/std, ImageNet's when the model ships no preprocessor_config.json."""
    from transformers.utils import cached_file

    path = cached_file(source, "preprocessor_config.json", _raise_exceptions_for_missing_entries=False, **hub)
    if path is None:
        histofuse.log.info("%s: no preprocessor_config.json; normalizing with ImageNet's mean/std", source)
        return IMAGENET_MEAN, IMAGENET_STD
    config = json.loads(Path(path).read_text())
    return tuple(config.get("image_mean", IMAGENET_MEAN)), tuple(config.get("image_std", IMAGENET_STD))


def block_groups(net) -> list[list]:
    """Ordered parameter groups: what comes before the blocks, each block, what comes after.

    The blocks are the longest ``ModuleList`` (``encoder.layer`` in DINOv2, ``layers`` in ViT).
    """
    from torch import nn

    lists = [(name, module) for name, module in net.named_modules() if isinstance(module, nn.ModuleList)]
    if not lists:
        return [list(net.parameters())]
    prefix, blocks = max(lists, key=lambda item: len(item[1]))
    groups: list[list] = [[] for _ in range(len(blocks) + 2)]
    seen_block = False
    for name, parameter in net.named_parameters():
        if name.startswith(prefix + "."):
            seen_block = True
            groups[1 + int(name[len(prefix) + 1:].split(".", 1)[0])].append(parameter)
        else:
            groups[-1 if seen_block else 0].append(parameter)
    return [group for group in groups if group]


@functools.cache
def _backbone_class():
    from torch import nn

    class TransformersBackbone(nn.Module):
        """A transformers vision encoder; its sequence is [class token, register tokens, patch tokens]."""

        def __init__(self, net, mean, std, pool: str):
            super().__init__()
            self.net = net
            self.mean = tuple(mean)
            self.std = tuple(std)
            self.pool = pool
            width = int(net.config.hidden_size)
            self.prefix_tokens = 1 + int(getattr(net.config, "num_register_tokens", 0) or 0)
            self.num_features = 2 * width if pool == "cls+mean" else width
            self.token_features = width
            # ViT needs to be told to resample its position embedding for other sizes; DINOv2 always does.
            accepts = inspect.signature(net.forward).parameters
            self.call = {"interpolate_pos_encoding": True} if "interpolate_pos_encoding" in accepts else {}

        def _sequence(self, x):
            return self.net(pixel_values=x, **self.call).last_hidden_state

        def forward(self, x):
            return pool_tokens(self._sequence(x), self.prefix_tokens, self.pool)

        def forward_tokens(self, x):
            return without_registers(self._sequence(x), 1, self.prefix_tokens)

        def attention_maps(self, x):
            """Each block's attention, (B, heads, N, N), for attention rollout; the fused kernel keeps none."""
            implementation = self.net.config._attn_implementation
            self.net.set_attn_implementation("eager")
            try:
                return list(self.net(pixel_values=x, output_attentions=True, **self.call).attentions)
            finally:
                self.net.set_attn_implementation(implementation)

        def export_state_dict(self):
            return self.net.state_dict()

        def parameter_groups(self):
            return block_groups(self.net)

    return TransformersBackbone


@histofuse.hookimpl
def register_backbones():
    return [
        histofuse.BackboneSpec(
            name="transformers",
            build=build_transformers_backbone,
            description=f"a transformers AutoModel vision encoder: ORG/NAME or local-dir:PATH (needs {INSTALL})",
            options=TransformersOptions,
        )
    ]


@histofuse.hookimpl
def validate_recipe(recipe):
    return name_problems(recipe, "transformers", check_model_name)
